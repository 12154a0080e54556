//! The clone's io_device and its per-thread channels (each holds channels
//! of the source and destination bdevs for the pass-through path).

use crate::ffi;
use crate::vbdev::CloneBdev;
use bdev_clone::engine::IoCounter;
use bdev_clone::{Dev, Shared};
use spdk_sys as sys;
use std::ffi::{c_int, c_void};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Arc;

unsafe extern "C" {
    pub(crate) fn bdev_clone_channel_ctx(ch: *mut sys::spdk_io_channel) -> *mut c_void;
}

/// What the I/O path on any thread needs of a clone. Its address is the
/// io_device and the bdev's ctxt.
pub struct IoDevice {
    pub(crate) shared: Arc<Shared>,
    pub(crate) descs: [AtomicPtr<sys::spdk_bdev_desc>; 3],
    pub(crate) thread: *mut sys::spdk_thread,
    /// Dereferenced only on `thread`.
    pub(crate) clone: *mut CloneBdev,
}

// SAFETY: `thread` is an opaque handle; `clone` is dereferenced only on that
// thread (others send it messages); the rest is Sync by itself.
unsafe impl Send for IoDevice {}
// SAFETY: as for Send: shared references only read `shared`, the atomics and
// the thread handle; `clone` is dereferenced on its own thread only.
unsafe impl Sync for IoDevice {}

/// Per-thread channel of the clone.
#[repr(C)]
pub(crate) struct Chan {
    pub(crate) dev: *const IoDevice,
    pub(crate) src_desc: *mut sys::spdk_bdev_desc,
    pub(crate) dst_desc: *mut sys::spdk_bdev_desc,
    pub(crate) src: *mut sys::spdk_io_channel,
    pub(crate) dst: *mut sys::spdk_io_channel,
    /// This thread's count of user I/O (an `Arc` from `Shared::io_counter`,
    /// held as a raw pointer in SPDK's channel memory).
    pub(crate) counter: *const IoCounter,
}

pub(crate) unsafe extern "C" fn chan_create(io_device: *mut c_void, ctx: *mut c_void) -> c_int {
    ffi::guard("chan_create", -libc::ENOMEM, || {
        let dev = io_device as *const IoDevice;
        // SAFETY: the IoDevice lives until io_device_gone; ctx is SPDK's
        // channel context, sized for a Chan.
        unsafe {
            Arc::increment_strong_count(dev);
            let d = &*dev;
            let chan = &mut *(ctx as *mut Chan);
            chan.dev = dev;
            chan.src_desc = d.descs[0].load(Ordering::Acquire);
            chan.dst_desc = d.descs[1].load(Ordering::Acquire);
            chan.src = if chan.src_desc.is_null() {
                null_mut()
            } else {
                sys::spdk_bdev_get_io_channel(chan.src_desc)
            };
            chan.dst = sys::spdk_bdev_get_io_channel(chan.dst_desc);
            if chan.dst.is_null() {
                if !chan.src.is_null() {
                    sys::spdk_put_io_channel(chan.src);
                }
                Arc::decrement_strong_count(dev);
                return -libc::ENOMEM;
            }
            chan.counter = Arc::into_raw(d.shared.io_counter());
        }
        0
    })
}

pub(crate) unsafe extern "C" fn chan_destroy(_io_device: *mut c_void, ctx: *mut c_void) {
    ffi::guard("chan_destroy", (), || {
        // SAFETY: a Chan made by chan_create.
        unsafe {
            let chan = &mut *(ctx as *mut Chan);
            if !chan.src.is_null() {
                sys::spdk_put_io_channel(chan.src);
            }
            sys::spdk_put_io_channel(chan.dst);
            drop(Arc::from_raw(chan.counter));
            Arc::decrement_strong_count(chan.dev);
        }
    })
}

pub(crate) unsafe extern "C" fn fn_get_io_channel(ctx: *mut c_void) -> *mut sys::spdk_io_channel {
    // SAFETY: ctxt is our io_device.
    unsafe { sys::spdk_get_io_channel(ctx) }
}

unsafe extern "C" fn put_source_channel(i: *mut sys::spdk_io_channel_iter) {
    // SAFETY: iterating our io_device: the channel ctx is a Chan.
    unsafe {
        let ch = sys::spdk_io_channel_iter_get_channel(i);
        let chan = &mut *(bdev_clone_channel_ctx(ch) as *mut Chan);
        if !chan.src.is_null() {
            sys::spdk_put_io_channel(chan.src);
            chan.src = null_mut();
            chan.src_desc = null_mut();
        }
        sys::spdk_for_each_channel_continue(i, 0);
    }
}

unsafe extern "C" fn source_channels_put(i: *mut sys::spdk_io_channel_iter, _status: c_int) {
    ffi::guard("source_channels_put", (), || {
        // SAFETY: the io_device is the live clone's IoDevice, on the clone thread.
        let c = unsafe {
            &mut *(*(sys::spdk_io_channel_iter_get_io_device(i) as *const IoDevice)).clone
        };
        c.engine_mut().backend_mut().close_base(Dev::Source);
    })
}

impl CloneBdev {
    pub(crate) fn close_source(&mut self) {
        let me = self.io_device();
        if let Some(d) = &self.iodev {
            d.descs[0].store(null_mut(), Ordering::Release);
        }
        // Every thread puts its source channel, then the descriptor closes.
        // SAFETY: iterating our own io_device's channels.
        unsafe {
            sys::spdk_for_each_channel(
                me,
                Some(put_source_channel),
                null_mut(),
                Some(source_channels_put),
            );
        }
    }

    pub(crate) fn io_device(&self) -> *mut c_void {
        self.iodev
            .as_ref()
            .map_or(null_mut(), |d| Arc::as_ptr(d) as *mut c_void)
    }
}
