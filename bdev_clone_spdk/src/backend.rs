//! The engine's backend inside SPDK: the engine's device requests go to the
//! base bdevs on the clone thread's channels; immediate failures, notices
//! and requests to retry (SPDK out of bdev_ios) wait in queues that the
//! clone drains after each call into the engine.

use crate::dma::BufPool;
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

/// The engine's backend inside SPDK.
pub struct SpdkBackend {
    pub(crate) clone: *mut CloneBdev,
    pub(crate) descs: [*mut sys::spdk_bdev_desc; 3],
    pub(crate) claimed: [bool; 3],
    /// A flush does something on this device (it has a volatile write cache
    /// and takes flushes); otherwise a flush completes at once.
    pub(crate) flush_needed: [bool; 3],
    pub(crate) chans: [*mut sys::spdk_io_channel; 3],
    pub(crate) pool: BufPool,
    pub(crate) deferred: VecDeque<(ReqId, IoResult)>,
    pub(crate) retry: VecDeque<(ReqId, Dev, DevOp)>,
    pub(crate) notices: VecDeque<Notice>,
    pub(crate) ticks_hz: u64,
}

struct ReqCtx {
    clone: *mut CloneBdev,
    id: ReqId,
}

unsafe extern "C" fn engine_req_done(
    child: *mut sys::spdk_bdev_io,
    success: bool,
    ctx: *mut c_void,
) {
    ffi::guard("engine_req_done", (), || {
        // SAFETY: ctx is the ReqCtx boxed at submit; the child is ours to free.
        let ctx = unsafe { Box::from_raw(ctx as *mut ReqCtx) };
        unsafe { sys::spdk_bdev_free_io(child) };
        // SAFETY: the clone outlives its requests (teardown waits for idle).
        let clone = unsafe { &mut *ctx.clone };
        let result = if success { Ok(()) } else { Err(IoError::Io) };
        clone.engine_mut().complete(ctx.id, result);
        clone.after_engine();
    })
}

impl Backend for SpdkBackend {
    fn submit(&mut self, id: ReqId, dev: Dev, op: DevOp) {
        let desc = self.descs[dev_index(dev)];
        let ch = self.chans[dev_index(dev)];
        if desc.is_null() || ch.is_null() {
            self.deferred.push_back((id, Err(IoError::NoDevice)));
            return;
        }
        if op == DevOp::Flush && !self.flush_needed[dev_index(dev)] {
            // No volatile cache (writes are durable when they complete), or
            // none that takes flushes (refused at create unless the user
            // accepted it): nothing to send.
            self.deferred.push_back((id, Ok(())));
            return;
        }
        let ctx = Box::into_raw(Box::new(ReqCtx {
            clone: self.clone,
            id,
        })) as *mut c_void;
        let cb: sys::spdk_bdev_io_completion_cb = Some(engine_req_done);
        let buf_ptr = |pool: &mut BufPool, buf: BufId, offset: usize| {
            pool.slice(buf)[offset..].as_mut_ptr() as *mut c_void
        };
        // SAFETY: desc/ch are open on this (the clone's) thread; buffers are
        // live pool buffers or the user I/O's own iovecs; ctx is freed in the
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
                        let p = buf_ptr(&mut self.pool, buf, offset);
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
                        let p = buf_ptr(&mut self.pool, buf, offset);
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
        if rc != 0 {
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
        self.pool.alloc(len)
    }

    fn buf_mut(&mut self, buf: BufId) -> &mut [u8] {
        self.pool.slice(buf)
    }

    fn free_buf(&mut self, buf: BufId) {
        self.pool.free(buf)
    }

    fn copy_user_data(&mut self, io: UserIoId, len: usize, buf: BufId, offset: usize) {
        let dst = &mut self.pool.slice(buf)[offset..offset + len];
        let (iov, cnt) = user_iov(io);
        // SAFETY: dst is a live pool buffer of len bytes; iov/cnt are the
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

/// Puts the engine's channels and closes the descriptors (on the clone thread).
pub(crate) fn close_backend(backend: &mut SpdkBackend) {
    for (i, dev) in DEVS.iter().enumerate() {
        if !backend.chans[i].is_null() {
            // SAFETY: a channel we got on this thread.
            unsafe { sys::spdk_put_io_channel(backend.chans[i]) };
            backend.chans[i] = null_mut();
        }
        if !backend.descs[i].is_null() {
            // SAFETY: a desc we opened. An exclusive-write claim is SPDK's
            // v1 claim and must be released explicitly; the shared claim on
            // the source goes with its desc.
            unsafe {
                if backend.claimed[i] && *dev != Dev::Source {
                    sys::spdk_bdev_module_release_bdev(sys::spdk_bdev_desc_get_bdev(
                        backend.descs[i],
                    ));
                }
                sys::spdk_bdev_close(backend.descs[i]);
            }
            backend.claimed[i] = false;
            backend.descs[i] = null_mut();
        }
    }
}
