//! Runs an SPDK application (the framework, with every subsystem linked into
//! the binary) until it is stopped.

use crate::ffi;
use spdk_sys as sys;
use std::ffi::{c_char, c_int, c_void, CString};
use std::ptr::null_mut;

unsafe extern "C" fn started(_arg: *mut c_void) {
    ffi::notice("bdev_clone_tgt started");
}

unsafe extern "C" fn parse_arg(_ch: c_int, _arg: *mut c_char) -> c_int {
    -libc::EINVAL // no options of our own
}

unsafe extern "C" fn usage() {}

/// Parses SPDK's app options from `args`, runs the app, returns the exit code.
pub fn run(args: Vec<String>) -> i32 {
    let args: Vec<CString> = args
        .into_iter()
        .map(|a| CString::new(a).expect("arguments have no NUL"))
        .collect();
    let mut argv: Vec<*mut c_char> = args.iter().map(|a| a.as_ptr() as *mut c_char).collect();
    argv.push(null_mut());
    // SAFETY: SPDK's documented start-up sequence; argv outlives the app and
    // opts is initialised by spdk_app_opts_init before use.
    unsafe {
        let mut opts: sys::spdk_app_opts = std::mem::zeroed();
        sys::spdk_app_opts_init(&mut opts, std::mem::size_of::<sys::spdk_app_opts>());
        opts.name = c"bdev_clone_tgt".as_ptr();
        let rc = sys::spdk_app_parse_args(
            (argv.len() - 1) as c_int,
            argv.as_mut_ptr(),
            &mut opts,
            c"".as_ptr(),
            null_mut(),
            Some(parse_arg),
            Some(usage),
        );
        match rc {
            sys::SPDK_APP_PARSE_ARGS_SUCCESS => {}
            sys::SPDK_APP_PARSE_ARGS_HELP => return 0,
            _ => return 1,
        }
        let rc = sys::spdk_app_start(&mut opts, Some(started), null_mut());
        sys::spdk_app_fini();
        rc
    }
}
