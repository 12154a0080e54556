//! The module: what SPDK's module table (registered by the C shim) calls,
//! the registry of live clones, and examine (pending creates whose base
//! bdevs appear later).

use crate::create::start_create;
use crate::ffi;
use crate::vbdev::CloneBdev;
use bdev_clone::params::CreateParams;
use bdev_clone::plan;
use spdk_sys as sys;
use std::ffi::{c_int, CString};
use std::sync::Mutex;

unsafe extern "C" {
    fn bdev_clone_module() -> *mut sys::spdk_bdev_module;
}

pub fn module() -> *mut sys::spdk_bdev_module {
    // SAFETY: the shim returns its static module table.
    unsafe { bdev_clone_module() }
}

#[unsafe(no_mangle)]
pub extern "C" fn bdev_clone_rs_module_init() -> c_int {
    ffi::guard("module_init", -libc::EINVAL, || {
        crate::notify::register_types();
        // Fail points come from FAILPOINTS in the environment (tests only:
        // without the fault-injection feature this is empty).
        #[cfg(feature = "fault-injection")]
        std::mem::forget(fail::FailScenario::setup());
        0
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn bdev_clone_rs_module_fini() {}

#[unsafe(no_mangle)]
pub extern "C" fn bdev_clone_rs_get_ctx_size() -> c_int {
    0
}

/// `save_config`: one `bdev_clone_create` per clone, which resumes it.
#[unsafe(no_mangle)]
pub extern "C" fn bdev_clone_rs_config_json(w: *mut sys::spdk_json_write_ctx) -> c_int {
    ffi::guard("config_json", 0, || {
        for_each_clone(|c| {
            // SAFETY: SPDK's writer, positioned inside the bdev config array.
            unsafe { ffi::write_value(w, &c.config()) }
        });
        0
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn bdev_clone_rs_examine_config(bdev: *mut sys::spdk_bdev) {
    ffi::guard("examine_config", (), || examine(bdev));
    // SAFETY: every examine_config call must be answered exactly once.
    unsafe { sys::spdk_bdev_module_examine_done(module()) };
}

/// Pointers to every live clone; touched only on the app thread.
pub(crate) struct Registry(pub(crate) Vec<usize>);
pub(crate) static CLONES: Mutex<Registry> = Mutex::new(Registry(Vec::new()));

pub fn for_each_clone(mut f: impl FnMut(&mut CloneBdev)) {
    let ptrs = CLONES.lock().unwrap().0.clone();
    for p in ptrs {
        // SAFETY: registry entries are live clones, removed before freeing.
        f(unsafe { &mut *(p as *mut CloneBdev) })
    }
}

pub fn find_clone(name: &str) -> Option<*mut CloneBdev> {
    let ptrs = CLONES.lock().unwrap().0.clone();
    ptrs.into_iter()
        .map(|p| p as *mut CloneBdev)
        // SAFETY: registry entries are live clones.
        .find(|&p| unsafe { (*p).params.name == name })
}

pub(crate) fn bdev_by_name(name: &str) -> Option<*mut sys::spdk_bdev> {
    let n = CString::new(name).ok()?;
    // SAFETY: lookup by a valid C string.
    let b = unsafe { sys::spdk_bdev_get_by_name(n.as_ptr()) };
    (!b.is_null()).then_some(b)
}

/// Creates waiting for their base bdevs (`wait_for_bases`).
pub(crate) static PENDING: Mutex<Vec<CreateParams>> = Mutex::new(Vec::new());

/// The module's examine_config: a new bdev may complete a pending create.
pub fn examine(_bdev: *mut sys::spdk_bdev) {
    let ready: Vec<CreateParams> = {
        let mut pending = PENDING.lock().unwrap();
        let (ready, waiting) = pending
            .drain(..)
            .partition(|p| plan::bases_ready(p, |n| bdev_by_name(n).is_some()));
        *pending = waiting;
        ready
    };
    for p in ready {
        let name = p.name.clone();
        match start_create(p) {
            // SAFETY: freshly created, live.
            Ok(clone) => unsafe { (*clone).after_engine() },
            Err((_, msg)) => {
                ffi::error(&format!("bdev_clone {name}: deferred create failed: {msg}"))
            }
        }
    }
}
