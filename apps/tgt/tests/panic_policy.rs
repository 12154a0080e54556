//! The panic policy (README, "When something panics"): a panic inside the
//! module never leaves a caller waiting and never takes the target down. The
//! clone it happened in goes to `failed` with the panic message as its error;
//! every I/O and RPC it held is answered with an error; delete still works.
//! Panics are injected with fail points (libbdev_clone_spdk.so built with the
//! fault-injection feature, FAILPOINTS in the app's environment).

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

fn create(t: &Tgt, extra: serde_json::Value) {
    let mut p = json!({"name": "c0", "source_bdev": "src", "destination_bdev": "dst",
        "metadata_bdev": "meta"});
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    t.call("bdev_clone_create", Some(p)).unwrap();
}

#[test]
fn a_panic_in_a_completion_fails_the_clone_and_the_target_carries_on() {
    let dir = scratch("panic-completion");
    // Opening takes five completions; the ninth (a hydration copy) panics.
    let t = Tgt::start_preloaded_with(
        "spdk_tgt",
        &dir,
        "tgt",
        &fault_injection_lib(),
        &[("FAILPOINTS", "engine_req_done=8*off->1*panic->off")],
        &[],
    );
    malloc(&t, "src", 64, 512);
    malloc(&t, "dst", 64, 512);
    malloc(&t, "meta", 4, 512);
    create(&t, json!({}));
    let info = t.wait_state("c0", "failed", 30);
    let error = info["error"].as_str().unwrap();
    assert!(
        error.contains("internal error") && error.contains("panic in engine_req_done"),
        "{info}"
    );
    // The target answers, the clone refuses writes and deletes cleanly.
    assert!(t.alive());
    assert!(t.call("spdk_get_version", None).is_ok());
    let started = Instant::now();
    t.call("bdev_clone_delete", Some(json!({"name": "c0"})))
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!claimed(&t, "src") && !claimed(&t, "dst") && !claimed(&t, "meta"));
    assert!(t.log_text().contains("panic in engine_req_done"));
    t.stop();
}

#[test]
fn a_panic_in_an_rpc_is_answered_with_an_error() {
    let dir = scratch("panic-rpc");
    let t = Tgt::start_preloaded_with(
        "spdk_tgt",
        &dir,
        "tgt",
        &fault_injection_lib(),
        &[("FAILPOINTS", "rpc_set_hydration=panic")],
        &[],
    );
    malloc(&t, "src", 16, 512);
    malloc(&t, "dst", 16, 512);
    malloc(&t, "meta", 4, 512);
    create(&t, json!({"no_hydration": true}));
    let (code, msg) = t
        .call(
            "bdev_clone_set_hydration",
            Some(json!({"name": "c0", "enabled": true})),
        )
        .unwrap_err();
    assert_eq!(code, -5, "{msg}");
    assert!(msg.contains("internal error"), "{msg}");
    // Nothing else is affected.
    assert_eq!(t.clone_info("c0")["state"], "paused");
    t.call("bdev_clone_delete", Some(json!({"name": "c0"})))
        .unwrap();
    assert!(!claimed(&t, "dst"));
    t.stop();
}
