//! Small helpers for the C boundary: panic guards, logging, JSON-RPC replies,
//! SPDK JSON values as serde values.

use serde_json::Value;
use spdk_sys as sys;
use std::ffi::{c_int, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`; a panic is logged and turned into `default` instead of
/// unwinding into C (undefined behaviour).
pub fn guard<T>(what: &str, default: T, f: impl FnOnce() -> T) -> T {
    catch(what, f).unwrap_or(default)
}

/// Runs `f`; a panic is logged and returned as its message.
pub fn catch<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|e| {
        let msg = e
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| e.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        log(
            sys::SPDK_LOG_ERROR,
            &format!("bdev_clone: panic in {what}: {msg}"),
        );
        format!("panic in {what}: {msg}")
    })
}

pub fn log(level: sys::spdk_log_level, msg: &str) {
    let text = CString::new(msg.replace('\0', " ")).unwrap();
    let file = c"bdev_clone";
    // SAFETY: a printf-style call with one "%s" argument that is a valid C string.
    unsafe {
        sys::spdk_log(
            level,
            file.as_ptr(),
            0,
            file.as_ptr(),
            c"%s\n".as_ptr(),
            text.as_ptr(),
        );
    }
}

pub fn error(msg: &str) {
    log(sys::SPDK_LOG_ERROR, msg)
}

pub fn warn(msg: &str) {
    log(sys::SPDK_LOG_WARN, msg)
}

/// A bdev's driver-specific info, as `bdev_get_bdevs` shows it under
/// `driver_specific` (Null when the module writes none, or not JSON).
pub fn driver_specific(bdev: *mut sys::spdk_bdev) -> Value {
    let mut out: Vec<u8> = Vec::new();
    // SAFETY: a writer into `out` (alive for the whole block), ended once;
    // `bdev` is registered.
    unsafe {
        let w = sys::spdk_json_write_begin(
            Some(collect_json),
            &mut out as *mut Vec<u8> as *mut c_void,
            0,
        );
        if w.is_null() {
            return Value::Null;
        }
        sys::spdk_json_write_object_begin(w);
        sys::spdk_bdev_dump_info_json(bdev, w);
        sys::spdk_json_write_object_end(w);
        sys::spdk_json_write_end(w);
    }
    serde_json::from_slice(&out).unwrap_or(Value::Null)
}

unsafe extern "C" fn collect_json(ctx: *mut c_void, data: *const c_void, size: usize) -> c_int {
    guard("collect_json", -1, || {
        // SAFETY: ctx is the Vec driver_specific passed; data holds size bytes.
        unsafe {
            let out = &mut *(ctx as *mut Vec<u8>);
            out.extend_from_slice(std::slice::from_raw_parts(data as *const u8, size));
        }
        0
    })
}

pub fn notice(msg: &str) {
    log(sys::SPDK_LOG_NOTICE, msg)
}

/// A JSON-RPC request waiting for its answer. Answering consumes it; one
/// dropped unanswered (a panic on the way, a lost path) answers -EIO, so a
/// client never waits forever.
pub struct Responder(*mut sys::spdk_jsonrpc_request);

impl Responder {
    /// # Safety
    /// `req` must be a live request that nobody else answers.
    pub unsafe fn new(req: *mut sys::spdk_jsonrpc_request) -> Responder {
        Responder(req)
    }

    /// Takes the request out, so that Drop does not answer it again.
    fn take(mut self) -> *mut sys::spdk_jsonrpc_request {
        std::mem::replace(&mut self.0, std::ptr::null_mut())
    }

    pub fn ok(self, value: Value) {
        let req = self.take();
        let text = value.to_string();
        // SAFETY: the request is live (see new) and answered once; the writer
        // returned by begin_result is ended exactly once.
        unsafe {
            let w = sys::spdk_jsonrpc_begin_result(req);
            if w.is_null() {
                return;
            }
            sys::spdk_json_write_val_raw(w, text.as_ptr() as *const c_void, text.len());
            sys::spdk_jsonrpc_end_result(req, w);
        }
    }

    /// `errno` positive (EINVAL...): sent as -errno, as SPDK's RPCs do.
    pub fn err(self, errno: i32, msg: &str) {
        let req = self.take();
        send_error(req, errno, msg);
    }
}

fn send_error(req: *mut sys::spdk_jsonrpc_request, errno: i32, msg: &str) {
    let text = CString::new(msg.replace('\0', " ")).unwrap();
    // SAFETY: the request is live and answered once; the message is a valid C string.
    unsafe { sys::spdk_jsonrpc_send_error_response(req, -errno, text.as_ptr()) }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.0.is_null() {
            send_error(
                self.0,
                libc::EIO,
                "bdev_clone: internal error, request not completed",
            );
        }
    }
}

/// Converts SPDK's parsed JSON (a flat token array) into a serde value.
///
/// # Safety
/// `val` is null or points at a complete value as SPDK's JSON-RPC server
/// hands it to a method.
pub unsafe fn json_value(val: *const sys::spdk_json_val) -> Option<Value> {
    if val.is_null() {
        return None;
    }
    // SAFETY: for containers `len` counts the values inside (not the END);
    // the caller guarantees the tokens are there.
    let first = unsafe { &*val };
    let count =
        if first.type_ & (sys::SPDK_JSON_VAL_OBJECT_BEGIN | sys::SPDK_JSON_VAL_ARRAY_BEGIN) != 0 {
            first.len as usize + 2
        } else {
            1
        };
    // SAFETY: see above.
    let vals = unsafe { std::slice::from_raw_parts(val, count) };
    let mut i = 0;
    convert(vals, &mut i)
}

fn text(v: &sys::spdk_json_val) -> String {
    // SAFETY: strings, names and numbers point at `len` bytes of the request.
    let bytes = unsafe { std::slice::from_raw_parts(v.start as *const u8, v.len as usize) };
    String::from_utf8_lossy(bytes).into_owned()
}

fn convert(vals: &[sys::spdk_json_val], i: &mut usize) -> Option<Value> {
    let v = vals.get(*i)?;
    *i += 1;
    Some(match v.type_ {
        sys::SPDK_JSON_VAL_NULL => Value::Null,
        sys::SPDK_JSON_VAL_TRUE => Value::Bool(true),
        sys::SPDK_JSON_VAL_FALSE => Value::Bool(false),
        sys::SPDK_JSON_VAL_NUMBER => serde_json::from_str(&text(v)).ok()?,
        sys::SPDK_JSON_VAL_STRING | sys::SPDK_JSON_VAL_NAME => Value::String(text(v)),
        sys::SPDK_JSON_VAL_ARRAY_BEGIN => {
            let mut out = Vec::new();
            while vals.get(*i)?.type_ != sys::SPDK_JSON_VAL_ARRAY_END {
                out.push(convert(vals, i)?);
            }
            *i += 1;
            Value::Array(out)
        }
        sys::SPDK_JSON_VAL_OBJECT_BEGIN => {
            let mut out = serde_json::Map::new();
            while vals.get(*i)?.type_ != sys::SPDK_JSON_VAL_OBJECT_END {
                let name = text(vals.get(*i)?);
                *i += 1;
                out.insert(name, convert(vals, i)?);
            }
            *i += 1;
            Value::Object(out)
        }
        _ => return None,
    })
}

/// Writes a serde value where the writer expects a value.
///
/// # Safety
/// `w` must be a live SPDK JSON writer.
pub unsafe fn write_value(w: *mut sys::spdk_json_write_ctx, value: &Value) {
    let text = value.to_string();
    // SAFETY: the caller guarantees `w`; the text is valid JSON.
    unsafe { sys::spdk_json_write_val_raw(w, text.as_ptr() as *const c_void, text.len()) };
}
