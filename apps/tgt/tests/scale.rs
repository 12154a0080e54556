//! bdev_clone at the largest sizes it supports, in a real SPDK process:
//! a 64 TiB clone at 64 KiB regions and a 4 TiB clone at 4 KiB regions
//! (each 1 Gi regions). Source and destination are null bdevs (they cost no
//! memory and complete at once), the metadata a malloc bdev. Each clone is
//! created (formatted), hydrates for a while, is deleted (which commits) and
//! created again over the same metadata (resumed). The RPCs must answer
//! within a bounded time: nothing at open may cost more than the bitmap's
//! own size. Run one at a time (`--test-threads=1`), like the rest of the
//! suite.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const GIB_REGIONS: u64 = 1 << 30;

/// Metadata for 1 Gi regions with 4 KiB pages on 512-byte blocks:
/// `metadata::Layout::new(512, 4096, 1 << 30).total_bytes()` = 270,565,376
/// bytes (258.03 MiB: two slots of each bitmap page, and the page table),
/// which is also what the refusal of a smaller metadata bdev names. Margin:
/// 288 MiB.
const META_MIB: u64 = 288;

/// The bound on the create and resume RPCs' answer (a generous one: a 64
/// TiB clone formats in about 0.2 s and resumes in about 0.4 s in a release
/// build).
const ANSWER_BOUND: Duration = Duration::from_secs(30);

fn create(t: &Tgt, region_kb: u64) -> (Value, Duration) {
    let t0 = Instant::now();
    let r = call_sock(
        &t.sock,
        "bdev_clone_create",
        Some(
            json!({"name": "c0", "source_bdev": "src", "destination_bdev": "dst",
                    "metadata_bdev": "meta", "region_size_kb": region_kb}),
        ),
        120,
    );
    let took = t0.elapsed();
    assert_eq!(
        r,
        Ok(json!("c0")),
        "bdev_clone_create; log:\n{}",
        t.log_text()
    );
    (t.clone_info("c0"), took)
}

fn n(info: &Value, key: &str) -> u64 {
    info[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {info}"))
}

fn scale(name: &str, size_mib: u64, region_kb: u64) {
    let dir = scratch(name);
    let t = Tgt::start(&dir, "tgt", &["-s", "2048"]);
    for b in ["src", "dst"] {
        t.call(
            "bdev_null_create",
            Some(json!({"name": b, "num_blocks": size_mib * MIB / 512, "block_size": 512})),
        )
        .unwrap();
    }
    t.call(
        "bdev_malloc_create",
        Some(json!({"name": "meta", "num_blocks": META_MIB * MIB / 512, "block_size": 512})),
    )
    .unwrap();

    // Create: formats 258 MiB of metadata.
    let (info, create_took) = create(&t, region_kb);
    assert!(
        create_took < ANSWER_BOUND,
        "create answered after {create_took:?}: {info}"
    );
    assert_eq!(n(&info, "regions_total"), GIB_REGIONS, "{info}");
    assert_eq!(n(&info, "num_blocks"), size_mib * MIB / 512, "{info}");
    assert_eq!(info["state"], "hydrating", "{info}");
    let uuid = info["uuid"].as_str().expect("a uuid").to_string();
    // The engine's memory: two bits per region, plus buffers (capped at
    // 64 MiB) and page tables.
    let cap = GIB_REGIONS / 4 + 96 * MIB;
    assert!(n(&info, "memory_bytes") <= cap, "memory over {cap}: {info}");

    // It hydrates, and keeps hydrating.
    std::thread::sleep(Duration::from_secs(1));
    let a = n(&t.clone_info("c0"), "regions_hydrated");
    std::thread::sleep(Duration::from_secs(2));
    let info = t.clone_info("c0");
    let b = n(&info, "regions_hydrated");
    assert!(a > 0 && b > a, "not hydrating: {a} then {b}: {info}");
    assert!(n(&info, "memory_bytes") <= cap, "memory over {cap}: {info}");

    // Delete commits what is hydrated; a new create over the same metadata
    // resumes it.
    let before = n(&t.clone_info("c0"), "regions_hydrated");
    t.call("bdev_clone_delete", Some(json!({"name": "c0"})))
        .unwrap();
    let (info, took) = create(&t, region_kb);
    assert!(
        took < ANSWER_BOUND,
        "resume answered after {took:?}: {info}"
    );
    assert!(
        n(&info, "regions_committed") >= before && n(&info, "regions_hydrated") >= before,
        "lost progress: {before} regions hydrated before delete: {info}"
    );
    assert_eq!(info["uuid"], uuid.as_str(), "{info}");
    assert_eq!(info["state"], "hydrating", "{info}");
    assert_eq!(n(&info, "regions_total"), GIB_REGIONS, "{info}");
    assert!(n(&info, "memory_bytes") <= cap, "memory over {cap}: {info}");
    eprintln!(
        "{name}: create answered in {create_took:?}, resume in {took:?}; \
         {before} regions hydrated before delete, {} after resume",
        n(&info, "regions_hydrated")
    );
    let log = t.log_text();
    assert!(
        log.contains("resumed from metadata"),
        "not a resume; log:\n{log}"
    );
    t.call("bdev_clone_delete", Some(json!({"name": "c0"})))
        .unwrap();
    assert!(t.alive());
    t.stop();
}

#[test]
fn clone_of_64_tib_at_64_kib_regions() {
    scale("scale64t", 64 << 20, 64);
}

#[test]
fn clone_of_4_tib_at_4_kib_regions() {
    scale("scale4t", 4 << 20, 4);
}
