//! The engine's backend inside SPDK: the engine's device requests go to the
//! base bdevs on the clone thread's channels. Immediate failures, notices
//! and requests to retry (SPDK out of bdev_ios) wait in queues that the
//! clone drains after each call into the engine (`pop_deferred`,
//! `pop_notice`, `resubmit_retries`). Memory comes from [`DmaMemory`].

use crate::dma::DmaMemory;
use crate::ffi;
use crate::io::{complete_bdev_io, user_iov};
use crate::vbdev::CloneBdev;
use bdev_clone::{Backend, BufId, Data, Dev, DevOp, IoError, IoResult, Notice, ReqId, UserIoId};
use spdk_sys as sys;
use std::collections::VecDeque;
use std::ffi::c_void;
use std::ptr::null_mut;

pub(crate) const DEVS: [Dev; 3] = [Dev::Source, Dev::Dest, Dev::Meta];

pub(crate) fn dev_index(dev: Dev) -> usize {
    match dev {
        Dev::Source => 0,
        Dev::Dest => 1,
        Dev::Meta => 2,
    }
}

/// One base bdev as create opened it: its descriptor, its claim and the
/// clone thread's channel.
pub(crate) struct Base {
    pub(crate) desc: *mut sys::spdk_bdev_desc,
    /// Null until create got it.
    pub(crate) chan: *mut sys::spdk_io_channel,
    /// An exclusive-write claim is SPDK's v1 claim and must be released
    /// explicitly; the shared claim on the source goes with its desc.
    pub(crate) release_claim: bool,
    /// A flush does something on this device (it has a volatile write cache
    /// and takes flushes); otherwise a flush completes at once.
    pub(crate) flush_needed: bool,
}

impl Base {
    /// Puts the channel, releases the claim and closes the descriptor (on
    /// the clone thread).
    pub(crate) fn close(self) {
        // SAFETY: a channel got and a desc opened on this thread, each
        // closed once (`self` is consumed).
        unsafe {
            if !self.chan.is_null() {
                sys::spdk_put_io_channel(self.chan);
            }
            if self.release_claim {
                sys::spdk_bdev_module_release_bdev(sys::spdk_bdev_desc_get_bdev(self.desc));
            }
            sys::spdk_bdev_close(self.desc);
        }
    }
}

/// The engine's backend inside SPDK.
pub struct SpdkBackend {
    clone: *mut CloneBdev,
    /// By dev_index; None before create attached it or after it closed.
    bases: [Option<Base>; 3],
    dma: DmaMemory,
    deferred: VecDeque<(ReqId, IoResult)>,
    retry: VecDeque<(ReqId, Dev, DevOp)>,
    notices: VecDeque<Notice>,
    ticks_hz: u64,
    /// Requests submitted to SPDK whose callback has not run: the clone is
    /// freed only when none is left, whatever the engine believes.
    in_flight: u64,
    /// Of those, the ones on the source (it is closed only without any).
    source_in_flight: u64,
}

impl SpdkBackend {
    pub(crate) fn new(clone: *mut CloneBdev) -> SpdkBackend {
        SpdkBackend {
            clone,
            bases: [None, None, None],
            dma: DmaMemory::default(),
            deferred: VecDeque::new(),
            retry: VecDeque::new(),
            notices: VecDeque::new(),
            in_flight: 0,
            source_in_flight: 0,
            // SAFETY: a constant of the environment.
            ticks_hz: unsafe { sys::spdk_get_ticks_hz() }.max(1),
        }
    }

    /// Takes a base bdev that create opened; it closes with the backend.
    pub(crate) fn attach(&mut self, dev: Dev, base: Base) {
        debug_assert!(self.bases[dev_index(dev)].is_none());
        self.bases[dev_index(dev)] = Some(base);
    }

    /// The descriptor of `dev`; null when it is not open.
    pub(crate) fn desc(&self, dev: Dev) -> *mut sys::spdk_bdev_desc {
        self.bases[dev_index(dev)]
            .as_ref()
            .map_or(null_mut(), |b| b.desc)
    }

    /// A request that finished without reaching a device, if any.
    pub(crate) fn pop_deferred(&mut self) -> Option<(ReqId, IoResult)> {
        self.deferred.pop_front()
    }

    pub(crate) fn pop_notice(&mut self) -> Option<Notice> {
        self.notices.pop_front()
    }

    /// Submits again the requests SPDK had no bdev_io for.
    /// Submits again what SPDK had no bdev_io for; true when there was any.
    pub(crate) fn resubmit_retries(&mut self) -> bool {
        let retries: Vec<_> = self.retry.drain(..).collect();
        let any = !retries.is_empty();
        for (id, dev, op) in retries {
            self.submit(id, dev, op);
        }
        any
    }

    /// Requests submitted to SPDK and not yet called back.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight
    }

    pub(crate) fn source_in_flight(&self) -> u64 {
        self.source_in_flight
    }

    fn request_done(&mut self, dev: Dev) {
        self.in_flight -= 1;
        if dev == Dev::Source {
            self.source_in_flight -= 1;
        }
    }

    /// Requests wait for SPDK to have bdev_ios again (the poller retries).
    pub(crate) fn has_retries(&self) -> bool {
        !self.retry.is_empty()
    }

    /// Closes one base bdev (the source, once released).
    pub(crate) fn close_base(&mut self, dev: Dev) {
        if let Some(b) = self.bases[dev_index(dev)].take() {
            b.close();
        }
    }

    /// Closes every base bdev (on the clone thread).
    pub(crate) fn close(&mut self) {
        for dev in DEVS {
            self.close_base(dev);
        }
    }
}

struct ReqCtx {
    clone: *mut CloneBdev,
    id: ReqId,
    dev: Dev,
}

unsafe extern "C" fn engine_req_done(
    child: *mut sys::spdk_bdev_io,
    success: bool,
    ctx: *mut c_void,
) {
    ffi::guard("engine_req_done", (), || {
        // SAFETY: ctx is the ReqCtx boxed at submit, freed here once.
        let ctx = unsafe { Box::from_raw(ctx as *mut ReqCtx) };
        // SAFETY: the child bdev_io is ours to free, once.
        unsafe { sys::spdk_bdev_free_io(child) };
        let result = if success { Ok(()) } else { Err(IoError::Io) };
        // The clone outlives its requests: teardown waits for in_flight to
        // reach zero (after_engine starts it then). The clone may be gone
        // once this returns: touch nothing after it.
        CloneBdev::guarded(ctx.clone, "engine_req_done", |c| {
            c.engine_mut().backend_mut().request_done(ctx.dev);
            fail::fail_point!("engine_req_done");
            c.engine_mut().complete(ctx.id, result);
            c.after_engine();
        });
    })
}

impl Backend for SpdkBackend {
    fn submit(&mut self, id: ReqId, dev: Dev, op: DevOp) {
        let (desc, ch, flush_needed) = match &self.bases[dev_index(dev)] {
            Some(b) if !b.chan.is_null() => (b.desc, b.chan, b.flush_needed),
            _ => {
                self.deferred.push_back((id, Err(IoError::NoDevice)));
                return;
            }
        };
        if op == DevOp::Flush && !flush_needed {
            // No volatile cache (writes are durable when they complete), or
            // none that takes flushes (refused at create unless the user
            // accepted it): nothing to send.
            self.deferred.push_back((id, Ok(())));
            return;
        }
        let ctx = Box::into_raw(Box::new(ReqCtx {
            clone: self.clone,
            id,
            dev,
        })) as *mut c_void;
        let cb: sys::spdk_bdev_io_completion_cb = Some(engine_req_done);
        let buf_ptr = |dma: &mut DmaMemory, buf: BufId, offset: usize| {
            dma.buf_mut(buf)[offset..].as_mut_ptr() as *mut c_void
        };
        // SAFETY: desc/ch are open on this (the clone's) thread; buffers are
        // live DMA buffers or the user I/O's own iovecs; ctx is freed in the
        // callback, or below when the submit fails.
        let rc = unsafe {
            match op {
                DevOp::Read {
                    offset_blocks,
                    num_blocks,
                    data,
                } => match data {
                    Data::User(io) => {
                        let (iov, cnt) = user_iov(io);
                        sys::spdk_bdev_readv_blocks(
                            desc,
                            ch,
                            iov,
                            cnt,
                            offset_blocks,
                            num_blocks,
                            cb,
                            ctx,
                        )
                    }
                    Data::Buf { buf, offset } => {
                        let p = buf_ptr(&mut self.dma, buf, offset);
                        sys::spdk_bdev_read_blocks(desc, ch, p, offset_blocks, num_blocks, cb, ctx)
                    }
                },
                DevOp::Write {
                    offset_blocks,
                    num_blocks,
                    data,
                    ..
                } => match data {
                    Data::User(io) => {
                        let (iov, cnt) = user_iov(io);
                        sys::spdk_bdev_writev_blocks(
                            desc,
                            ch,
                            iov,
                            cnt,
                            offset_blocks,
                            num_blocks,
                            cb,
                            ctx,
                        )
                    }
                    Data::Buf { buf, offset } => {
                        let p = buf_ptr(&mut self.dma, buf, offset);
                        sys::spdk_bdev_write_blocks(desc, ch, p, offset_blocks, num_blocks, cb, ctx)
                    }
                },
                DevOp::Flush => {
                    let bdev = sys::spdk_bdev_desc_get_bdev(desc);
                    sys::spdk_bdev_flush_blocks(
                        desc,
                        ch,
                        0,
                        sys::spdk_bdev_get_num_blocks(bdev),
                        cb,
                        ctx,
                    )
                }
                DevOp::Unmap {
                    offset_blocks,
                    num_blocks,
                } => sys::spdk_bdev_unmap_blocks(desc, ch, offset_blocks, num_blocks, cb, ctx),
                DevOp::WriteZeroes {
                    offset_blocks,
                    num_blocks,
                } => {
                    sys::spdk_bdev_write_zeroes_blocks(desc, ch, offset_blocks, num_blocks, cb, ctx)
                }
                DevOp::Reset => sys::spdk_bdev_reset(desc, ch, cb, ctx),
            }
        };
        if rc == 0 {
            self.in_flight += 1;
            if dev == Dev::Source {
                self.source_in_flight += 1;
            }
        } else {
            // SAFETY: the submit failed, so the callback will never free ctx.
            drop(unsafe { Box::from_raw(ctx as *mut ReqCtx) });
            if rc == -libc::ENOMEM {
                self.retry.push_back((id, dev, op));
            } else {
                let e = if rc == -libc::ENODEV {
                    IoError::NoDevice
                } else {
                    IoError::Io
                };
                self.deferred.push_back((id, Err(e)));
            }
        }
    }

    fn complete_user(&mut self, io: UserIoId, result: IoResult) {
        complete_bdev_io(io.0 as *mut sys::spdk_bdev_io, result.is_ok());
    }

    fn alloc_buf(&mut self, len: usize) -> Option<BufId> {
        self.dma.alloc(len)
    }

    fn buf_mut(&mut self, buf: BufId) -> &mut [u8] {
        self.dma.buf_mut(buf)
    }

    fn free_buf(&mut self, buf: BufId) {
        self.dma.free(buf)
    }

    fn copy_user_data(&mut self, io: UserIoId, len: usize, buf: BufId, offset: usize) {
        let dst = &mut self.dma.buf_mut(buf)[offset..offset + len];
        let (iov, cnt) = user_iov(io);
        // SAFETY: dst is a live DMA buffer of len bytes; iov/cnt are the
        // iovecs of a live write bdev_io, which hold at least len bytes.
        unsafe { sys::spdk_copy_iovs_to_buf(dst.as_mut_ptr() as *mut c_void, len, iov, cnt) };
    }

    fn now_ns(&self) -> u64 {
        // SAFETY: plain reads of the TSC.
        let t = unsafe { sys::spdk_get_ticks() };
        (t as u128 * 1_000_000_000 / self.ticks_hz as u128) as u64
    }

    fn notify(&mut self, notice: Notice) {
        self.notices.push_back(notice);
    }
}
