//! The JSON-RPC methods: the shim registers each method listed in
//! shim/rpc_methods.h and hands its calls to `bdev_clone_rs_rpc`, which
//! dispatches on [`Method`]. Every parameter is decoded with serde into a
//! typed struct; a bad one gets -EINVAL with a message naming it.

use crate::create;
use crate::examine::{self, AUTO_EXAMINE};
use crate::ffi::{self, Responder};
use crate::module;
use bdev_clone::params::{
    decode, CreateParams, GetParams, NameParams, SetHydrationParams, SetOptionsParams,
};
use libc::{EBUSY, EINVAL, ENODEV};
use serde_json::{json, Value};
use spdk_sys as sys;
use std::ffi::c_int;
use std::sync::atomic::Ordering;

// `Method`: one variant per entry of shim/rpc_methods.h, which the shim
// registers (the shim passes a method's position as its index).
include!(concat!(env!("OUT_DIR"), "/rpc_methods.rs"));

/// No open clone is called `name`: it may still wait for its bases.
fn no_clone(name: &str) -> (i32, String) {
    match examine::waiting_metadata(name) {
        Some(_) => (
            EBUSY,
            format!("clone '{name}' is waiting for its base bdevs (see bdev_clone_get_clones)"),
        ),
        None => (ENODEV, format!("no clone named '{name}'")),
    }
}

/// # Safety
/// Called by the shim's registered RPC handlers with SPDK's live request.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bdev_clone_rs_rpc(
    method: c_int,
    request: *mut sys::spdk_jsonrpc_request,
    params: *const sys::spdk_json_val,
) {
    // SAFETY: the request is live and answered exactly once below.
    let reply = unsafe { Responder::new(request) };
    ffi::guard("rpc", (), move || {
        // SAFETY: SPDK's parsed params (or null). Converted inside the guard:
        // it walks SPDK's token array.
        let params = unsafe { ffi::json_value(params) };
        dispatch(method, params, reply)
    });
}

fn dispatch(method: c_int, params: Option<Value>, reply: Responder) {
    let method = Method::from_index(method);
    let mut reply = Some(reply);
    let mut take = || reply.take().expect("answered once");
    let result: Result<Option<Value>, (i32, String)> = (|| match method {
        Some(Method::Create) => {
            let p: CreateParams = decode(params).map_err(|m| (EINVAL, m))?;
            create::create(p, take());
            Ok(None)
        }
        Some(Method::Delete) => {
            let p: NameParams = decode(params).map_err(|m| (EINVAL, m))?;
            // A waiting clone is forgotten (its hold released).
            if examine::take_waiting(&p.name).is_some() {
                return Ok(Some(json!(true)));
            }
            let c = module::find_clone(&p.name).ok_or_else(|| no_clone(&p.name))?;
            // SAFETY: registry pointers are live on this thread.
            let c = unsafe { &mut *c };
            c.delete(take());
            Ok(None)
        }
        Some(Method::GetClones) => {
            let p: GetParams = decode(params).map_err(|m| (EINVAL, m))?;
            let mut out = Vec::new();
            module::for_each_clone(|c| {
                if c.is_open() && p.name.as_deref().is_none_or(|n| n == c.params.name) {
                    out.push(c.info());
                }
            });
            examine::for_each_waiting(|w| {
                if p.name.as_deref().is_none_or(|n| n == w.params.name) {
                    out.push(w.info());
                }
            });
            if let (Some(n), true) = (&p.name, out.is_empty()) {
                return Err(no_clone(n));
            }
            Ok(Some(Value::Array(out)))
        }
        Some(Method::SetHydration) => {
            fail::fail_point!("rpc_set_hydration");
            let p: SetHydrationParams = decode(params).map_err(|m| (EINVAL, m))?;
            p.validate().map_err(|m| (EINVAL, m))?;
            let c = module::find_clone(&p.name).ok_or_else(|| no_clone(&p.name))?;
            // SAFETY: registry pointers are live on this thread.
            let c = unsafe { &mut *c };
            if !c.is_open() {
                return Err((EBUSY, format!("clone '{}' is not open", p.name)));
            }
            let s = p.apply(c.settings());
            c.set_settings(s);
            Ok(Some(json!(true)))
        }
        Some(Method::ReleaseSource) => {
            let p: NameParams = decode(params).map_err(|m| (EINVAL, m))?;
            let c = module::find_clone(&p.name).ok_or_else(|| no_clone(&p.name))?;
            // SAFETY: registry pointers are live on this thread.
            let c = unsafe { &mut *c };
            if !c.is_open() {
                return Err((EBUSY, format!("clone '{}' is not open", p.name)));
            }
            c.release_source(take());
            Ok(None)
        }
        Some(Method::SetOptions) => {
            let p: SetOptionsParams = decode(params).map_err(|m| (EINVAL, m))?;
            if let Some(on) = p.auto_examine {
                AUTO_EXAMINE.store(on, Ordering::Relaxed);
            }
            Ok(Some(json!(true)))
        }
        None => Err((EINVAL, "unknown method".into())),
    })();
    if let Some(r) = reply {
        match result {
            Ok(v) => r.ok(v.unwrap_or(json!(true))),
            Err((errno, msg)) => r.err(errno, &msg),
        }
    }
}
