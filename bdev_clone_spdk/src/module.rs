//! The module: what SPDK's module table (registered by the C shim) calls,
//! and the registry of live clones. Examine and waiting clones: examine.rs.

use crate::examine::{self, AUTO_EXAMINE};
use crate::ffi;
use crate::vbdev::CloneBdev;
use serde_json::json;
use spdk_sys as sys;
use std::ffi::{c_int, CString};
use std::sync::atomic::Ordering;
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
pub extern "C" fn bdev_clone_rs_module_fini() {
    ffi::guard("module_fini", (), examine::release_all)
}

#[unsafe(no_mangle)]
pub extern "C" fn bdev_clone_rs_get_ctx_size() -> c_int {
    0
}

/// `save_config`: the module's options, then one `bdev_clone_create` per
/// clone (which resumes it) and per waiting clone.
#[unsafe(no_mangle)]
pub extern "C" fn bdev_clone_rs_config_json(w: *mut sys::spdk_json_write_ctx) -> c_int {
    ffi::guard("config_json", 0, || {
        let options = json!({
            "method": "bdev_clone_set_options",
            "params": {"auto_examine": AUTO_EXAMINE.load(Ordering::Relaxed)},
        });
        // SAFETY (all three): SPDK's writer, positioned inside the bdev
        // config array.
        unsafe { ffi::write_value(w, &options) };
        for_each_clone(|c| unsafe { ffi::write_value(w, &c.config()) });
        examine::for_each_waiting(|c| unsafe { ffi::write_value(w, &c.config()) });
        0
    })
}

/// A new bdev may be the last base a waiting clone needs.
#[unsafe(no_mangle)]
pub extern "C" fn bdev_clone_rs_examine_config(_bdev: *mut sys::spdk_bdev) {
    ffi::guard("examine_config", (), examine::assemble_ready);
    // SAFETY: every examine_config call must be answered exactly once.
    unsafe { sys::spdk_bdev_module_examine_done(module()) };
}

/// A new bdev may hold a clone's metadata (`examine::examine_disk` answers
/// SPDK's examine, once its read is done).
#[unsafe(no_mangle)]
pub extern "C" fn bdev_clone_rs_examine_disk(bdev: *mut sys::spdk_bdev) {
    let answered = ffi::guard("examine_disk", false, || {
        examine::examine_disk(bdev);
        true
    });
    if !answered {
        // SAFETY: the panic came before the examine was answered or a read
        // was submitted (nothing after the submit can panic): answer it.
        unsafe { sys::spdk_bdev_module_examine_done(module()) };
    }
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
