//! Events (README, "Events"; docs/rpc.md): SPDK notifications when a clone
//! becomes `hydrated`, `source_released`, `read_only` or `failed`, read
//! through SPDK's own RPCs (`notify_get_types`, `notify_get_notifications`),
//! each sent exactly once per change of state, with the clone's name as
//! context.

mod common;
mod fault_support;

use common::*;
use fault_support::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const MIB: usize = 1 << 20;
const TYPES: [&str; 4] = [
    "bdev_clone_hydrated",
    "bdev_clone_source_released",
    "bdev_clone_read_only",
    "bdev_clone_failed",
];

/// The bdev_clone events sent so far, as (type, ctx), in order.
fn events(t: &Tgt) -> Vec<(String, String)> {
    let all = ok(t, "notify_get_notifications", json!({"id": 0}));
    all.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"].as_str().unwrap().starts_with("bdev_clone_"))
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["ctx"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The event types sent for clone `ctx`, in order.
fn events_of(t: &Tgt, ctx: &str) -> Vec<String> {
    events(t)
        .into_iter()
        .filter(|(_, c)| c == ctx)
        .map(|(ty, _)| ty)
        .collect()
}

/// An aio bdev `name` over a new file of `mib` MiB of zeroes.
fn zeroed(t: &Tgt, dir: &Path, name: &str, mib: usize) {
    let f = dir.join(format!("{name}.img"));
    std::fs::write(&f, vec![0u8; mib * MIB]).unwrap();
    aio(t, name, &f);
}

fn create(t: &Tgt, name: &str, dst: &str, meta: &str, extra: Value) {
    let mut p = json!({"name": name, "source_bdev": "src", "destination_bdev": dst,
        "metadata_bdev": meta, "region_size_kb": 64, "commit_interval_ms": 100});
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    assert_eq!(ok(t, "bdev_clone_create", p), json!(name));
}

#[test]
fn each_state_change_is_one_notification() {
    let dir = scratch("events");
    pattern_file(&dir.join("src.img"), 4 * MIB, 0x3C);
    let t = Tgt::start(&dir, "tgt", &[]);
    let types = t.call("notify_get_types", None).unwrap();
    for ty in TYPES {
        assert!(types.as_array().unwrap().contains(&json!(ty)), "{types}");
    }
    // One source, shared read-only by every clone.
    aio(&t, "src", &dir.join("src.img"));

    // hydrated, then source_released.
    zeroed(&t, &dir, "dst0", 4);
    zeroed(&t, &dir, "meta0", 1);
    create(&t, "c0", "dst0", "meta0", json!({}));
    t.wait_state("c0", "hydrated", 60);
    // Later calls into the clone (a settings change, polls) send nothing
    // more.
    ok(
        &t,
        "bdev_clone_set_hydration",
        json!({"name": "c0", "hydration_threshold": 4}),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(events_of(&t, "c0"), ["bdev_clone_hydrated"]);
    ok(&t, "bdev_clone_release_source", json!({"name": "c0"}));
    t.wait_state("c0", "source_released", 30);

    // read_only, and `hydrated` only once durable: every region is copied,
    // but the commit that would record the last ones fails on the metadata
    // device (the only commit: the interval is an hour).
    zeroed(&t, &dir, "dst1", 4);
    zeroed(&t, &dir, "meta1", 1);
    let ee = error_bdev(&t, "meta1");
    create(
        &t,
        "c1",
        "dst1",
        &ee,
        json!({"no_hydration": true, "commit_interval_ms": 3_600_000}),
    );
    inject(&t, &ee, "flush", 1_000_000);
    ok(
        &t,
        "bdev_clone_set_hydration",
        json!({"name": "c1", "enabled": true}),
    );
    let info = t.wait_state("c1", "read_only", 30);
    assert_eq!(n(&info, "regions_hydrated"), 64, "{info}");
    assert_eq!(n(&info, "regions_committed"), 0, "{info}");

    // failed: the destination is hot-removed (the clone is unregistered).
    zeroed(&t, &dir, "dst2", 4);
    zeroed(&t, &dir, "meta2", 1);
    create(
        &t,
        "c2",
        "dst2",
        "meta2",
        json!({"max_bandwidth_mb_sec": 1}),
    );
    wait_info(&t, "c2", 30, |i| n(i, "regions_committed") >= 1);
    ok(&t, "bdev_aio_delete", json!({"name": "dst2"}));
    wait_for("c2 to go away", 30, || {
        (t.call("bdev_clone_get_clones", Some(json!({"name": "c2"})))
            .is_err())
        .then_some(Value::Null)
    });

    // A name longer than an SPDK event's context holds (127 bytes) is cut.
    let long = "l".repeat(200);
    zeroed(&t, &dir, "dst3", 4);
    zeroed(&t, &dir, "meta3", 1);
    create(&t, &long, "dst3", "meta3", json!({}));
    t.wait_state(&long, "hydrated", 60);

    // Let the failed clones' later commits and the poller run: still once.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        events_of(&t, "c0"),
        ["bdev_clone_hydrated", "bdev_clone_source_released"]
    );
    assert_eq!(events_of(&t, "c1"), ["bdev_clone_read_only"]);
    assert_eq!(events_of(&t, "c2"), ["bdev_clone_failed"]);
    assert_eq!(events_of(&t, &long[..127]), ["bdev_clone_hydrated"]);
    assert_eq!(events(&t).len(), 5, "{:?}", events(&t));
    ok(&t, "bdev_clone_delete", json!({"name": "c1"}));
    ok(&t, "bdev_clone_delete", json!({"name": long}));

    // After a restart, a clone that opens with its source released says so
    // once (a tool waiting for it after a restart does not wait forever).
    let saved = dir.join("saved.json");
    write_json(&saved, &t.plugin(&["save_config"]).unwrap());
    t.stop();
    let t = Tgt::start(&dir, "tgt2", &["-c", saved.to_str().unwrap()]);
    assert_eq!(t.clone_info("c0")["state"], "source_released");
    assert_eq!(events_of(&t, "c0"), ["bdev_clone_source_released"]);
    t.stop();
}

/// A stock spdk_tgt with the module preloaded registers the types too.
#[test]
fn preloaded_module_registers_the_types() {
    let dir = scratch("events-preload");
    let t = Tgt::start_preloaded(&dir, "tgt", &[]);
    let types = t.call("notify_get_types", None).unwrap();
    for ty in TYPES {
        assert!(types.as_array().unwrap().contains(&json!(ty)), "{types}");
    }
    t.stop();
}
