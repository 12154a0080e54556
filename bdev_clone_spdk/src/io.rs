//! The I/O path: submit_request on any thread, io_type_supported, the
//! pass-through of reads and of writes to hydrated regions, and completing
//! user I/O on the thread that submitted it.

use crate::channel::Chan;
use crate::ffi;
use crate::vbdev::CloneBdev;
use bdev_clone::engine::Route;
use bdev_clone::{UserIo, UserIoId, UserOp};
use spdk_sys as sys;
use std::ffi::{c_int, c_void};

/// The data buffers of a user read or write (what spdk_bdev_io_get_iovec
/// returns, read in place: this is on every pass-through I/O).
#[inline]
pub(crate) fn user_iov(io: UserIoId) -> (*mut sys::iovec, c_int) {
    // SAFETY: a UserIoId is the address of a live read or write
    // spdk_bdev_io, whose `u.bdev` holds its iovecs.
    unsafe {
        let b = &(*(io.0 as *const sys::spdk_bdev_io)).u.bdev;
        (b.iovs, b.iovcnt)
    }
}

/// Our context in an SPDK channel (spdk_io_channel_get_ctx, inline in
/// SPDK's header: the context follows the channel struct).
#[inline]
pub(crate) fn chan_of(ch: *mut sys::spdk_io_channel) -> *mut Chan {
    // SAFETY: a channel of our io_device, whose context (a Chan) SPDK lays
    // out right after the struct, as spdk_io_channel_get_ctx computes.
    unsafe { (ch as *mut u8).add(sys::SPDK_IO_CHANNEL_STRUCT_SIZE as usize) as *mut Chan }
}

struct CompleteMsg {
    io: *mut sys::spdk_bdev_io,
    ok: bool,
}

unsafe extern "C" fn complete_msg(arg: *mut c_void) {
    ffi::guard("complete_msg", (), || {
        // SAFETY: boxed by complete_bdev_io for this message.
        let m = unsafe { Box::from_raw(arg as *mut CompleteMsg) };
        complete_bdev_io(m.io, m.ok);
    })
}

/// Completes a user I/O on the thread that submitted it, as SPDK requires.
pub(crate) fn complete_bdev_io(io: *mut sys::spdk_bdev_io, ok: bool) {
    // SAFETY: `io` is a live bdev_io submitted to the clone.
    unsafe {
        let thread = sys::spdk_bdev_io_get_thread(io);
        if thread == sys::spdk_get_thread() {
            let status = if ok {
                sys::SPDK_BDEV_IO_STATUS_SUCCESS
            } else {
                sys::SPDK_BDEV_IO_STATUS_FAILED
            };
            sys::spdk_bdev_io_complete(io, status);
        } else {
            let m = Box::into_raw(Box::new(CompleteMsg { io, ok })) as *mut c_void;
            sys::spdk_thread_send_msg(thread, Some(complete_msg), m);
        }
    }
}

pub(crate) unsafe extern "C" fn fn_io_type_supported(
    ctx: *mut c_void,
    t: sys::spdk_bdev_io_type,
) -> bool {
    let _ = ctx;
    matches!(
        t,
        sys::SPDK_BDEV_IO_TYPE_READ
            | sys::SPDK_BDEV_IO_TYPE_WRITE
            | sys::SPDK_BDEV_IO_TYPE_FLUSH
            | sys::SPDK_BDEV_IO_TYPE_RESET
            | sys::SPDK_BDEV_IO_TYPE_UNMAP
            | sys::SPDK_BDEV_IO_TYPE_WRITE_ZEROES
    )
}

fn user_io(bdev_io: *mut sys::spdk_bdev_io) -> Option<UserIo> {
    // SAFETY: a live bdev_io handed to submit_request.
    let (t, off, n) = unsafe {
        let b = &*bdev_io;
        (b.type_ as u32, b.u.bdev.offset_blocks, b.u.bdev.num_blocks)
    };
    let kind = match t {
        sys::SPDK_BDEV_IO_TYPE_READ => UserOp::Read,
        sys::SPDK_BDEV_IO_TYPE_WRITE => UserOp::Write { fua: false },
        sys::SPDK_BDEV_IO_TYPE_FLUSH => UserOp::Flush,
        sys::SPDK_BDEV_IO_TYPE_RESET => UserOp::Reset,
        sys::SPDK_BDEV_IO_TYPE_UNMAP => UserOp::Unmap,
        sys::SPDK_BDEV_IO_TYPE_WRITE_ZEROES => UserOp::WriteZeroes,
        _ => return None,
    };
    let (off, n) = match kind {
        UserOp::Flush | UserOp::Reset => (0, 0),
        _ => (off, n),
    };
    Some(UserIo {
        id: UserIoId(bdev_io as u64),
        kind,
        offset_blocks: off,
        num_blocks: n,
    })
}

pub(crate) unsafe extern "C" fn fn_submit(
    ch: *mut sys::spdk_io_channel,
    bdev_io: *mut sys::spdk_bdev_io,
) {
    ffi::guard("submit_request", (), || {
        // SAFETY: SPDK hands us a live io and our channel. A read that came
        // with its buffer (bdevperf's, an NVMe-oF target's) is routed at
        // once; spdk_bdev_io_get_buf would only call back.
        unsafe {
            let b = &(*bdev_io).u.bdev;
            if (*bdev_io).type_ as u32 == sys::SPDK_BDEV_IO_TYPE_READ
                && (b.iovcnt == 0 || (*b.iovs).iov_base.is_null())
            {
                let len = b.num_blocks * (*(*bdev_io).bdev).blocklen as u64;
                sys::spdk_bdev_io_get_buf(bdev_io, Some(read_buf_ready), len);
            } else {
                route(ch, bdev_io);
            }
        }
    })
}

unsafe extern "C" fn read_buf_ready(
    ch: *mut sys::spdk_io_channel,
    bdev_io: *mut sys::spdk_bdev_io,
    ok: bool,
) {
    ffi::guard("read_buf_ready", (), || {
        if !ok {
            complete_bdev_io(bdev_io, false);
            return;
        }
        route(ch, bdev_io)
    })
}

unsafe extern "C" fn passthrough_done(
    child: *mut sys::spdk_bdev_io,
    success: bool,
    parent: *mut c_void,
) {
    ffi::guard("passthrough_done", (), || {
        let parent = parent as *mut sys::spdk_bdev_io;
        // SAFETY: the child is ours to free; the parent is the user's live io,
        // on this (its submitting) thread.
        unsafe {
            if success {
                sys::spdk_bdev_io_complete(parent, sys::SPDK_BDEV_IO_STATUS_SUCCESS);
            } else {
                sys::spdk_bdev_io_complete_base_io_status(parent, child);
            }
            sys::spdk_bdev_free_io(child);
        }
    })
}

struct EngineMsg {
    clone: *mut CloneBdev,
    io: UserIo,
}

unsafe extern "C" fn engine_msg(arg: *mut c_void) {
    ffi::guard("engine_msg", (), || {
        // SAFETY: boxed by route for this message, freed here once.
        let m = unsafe { Box::from_raw(arg as *mut EngineMsg) };
        // The clone is alive while it has I/O, and this is its thread.
        CloneBdev::guarded(m.clone, "engine_msg", |c| {
            c.engine_mut().submit(m.io);
            c.after_engine();
        });
    })
}

/// The per-thread I/O path.
fn route(ch: *mut sys::spdk_io_channel, bdev_io: *mut sys::spdk_bdev_io) {
    // SAFETY: our channel's context is a Chan made by chan_create, whose
    // IoDevice it keeps alive.
    let chan = unsafe { &*chan_of(ch) };
    // SAFETY: the channel holds a reference on its IoDevice (chan_create).
    let dev = unsafe { &*chan.dev };
    let Some(io) = user_io(bdev_io) else {
        complete_bdev_io(bdev_io, false);
        return;
    };
    // SAFETY: chan_create set the counter; it lives as long as the channel.
    let counter = unsafe { &*chan.counter };
    let (desc, ch) = match dev.shared.route_counted(&io, counter) {
        Route::Dest => (chan.dst_desc, chan.dst),
        Route::Source if !chan.src.is_null() => (chan.src_desc, chan.src),
        Route::Source | Route::Reject(_) => return complete_bdev_io(bdev_io, false),
        Route::Engine => {
            // SAFETY: the clone is dereferenced only on its own thread; other
            // threads send it a boxed message.
            unsafe {
                if sys::spdk_get_thread() == dev.thread {
                    CloneBdev::guarded(dev.clone, "submit", |c| {
                        c.engine_mut().submit(io);
                        c.after_engine();
                    });
                } else {
                    let m = Box::into_raw(Box::new(EngineMsg {
                        clone: dev.clone,
                        io,
                    })) as *mut c_void;
                    sys::spdk_thread_send_msg(dev.thread, Some(engine_msg), m);
                }
            }
            return;
        }
    };
    let (iov, cnt) = user_iov(io.id);
    // SAFETY: desc and channel belong to this thread's Chan; the user's
    // iovecs are passed through untouched.
    let rc = unsafe {
        let done = Some(passthrough_done as unsafe extern "C" fn(_, _, _));
        let arg = bdev_io as *mut c_void;
        if matches!(io.kind, UserOp::Read) {
            sys::spdk_bdev_readv_blocks(
                desc,
                ch,
                iov,
                cnt,
                io.offset_blocks,
                io.num_blocks,
                done,
                arg,
            )
        } else {
            sys::spdk_bdev_writev_blocks(
                desc,
                ch,
                iov,
                cnt,
                io.offset_blocks,
                io.num_blocks,
                done,
                arg,
            )
        }
    };
    if rc != 0 {
        let status = if rc == -libc::ENOMEM {
            sys::SPDK_BDEV_IO_STATUS_NOMEM
        } else {
            sys::SPDK_BDEV_IO_STATUS_FAILED
        };
        // SAFETY: completing the user's io on its own thread.
        unsafe { sys::spdk_bdev_io_complete(bdev_io, status) };
    }
}
