//! TiB-class clones in the engine: open, hydrate, stop, resume, with null
//! data devices (no memory for data) and the metadata in memory. Nothing per
//! copied region may cost in proportion to the clone's size, and any size
//! opens within the buffer cap.

#[path = "support/null.rs"]
mod null;

use bdev_clone::buffers::DEFAULT_CAP;
use bdev_clone::CloneState;

const TIB: u64 = 1 << 40;

fn open_hydrate_resume(bytes: u64, region_size: u32) {
    let (mut e, r) = null::open(
        bytes,
        region_size,
        vec![0; null::meta_bytes(bytes, region_size)],
    );
    let info = r.expect("format");
    assert!(info.formatted);
    assert_eq!(info.geometry.region_count, bytes / region_size as u64);
    null::hydrate(&mut e, 50_000);
    assert!(e.status().stats.regions_hydrated >= 50_000);
    assert_eq!(e.status().state, CloneState::Hydrating);
    let held = e.backend().held;
    assert!(held <= DEFAULT_CAP, "{held} bytes held, over the cap");
    let (meta, hydrated) = null::stop(e);

    let (mut e, r) = null::open(bytes, region_size, meta);
    let info = r.expect("resume");
    assert!(!info.formatted);
    assert_eq!(
        info.regions_hydrated, hydrated,
        "every hydrated region came back"
    );
    assert_eq!(e.committed_regions(), hydrated);
    // Hydration carries on where it stopped.
    null::hydrate(&mut e, 10_000);
    assert!(e.status().stats.regions_hydrated >= hydrated + 10_000);
    null::stop(e);
}

#[test]
fn clone_of_64_tib_at_64_kib_regions() {
    open_hydrate_resume(64 * TIB, 64 << 10);
}

#[test]
fn clone_of_4_tib_at_4_kib_regions() {
    open_hydrate_resume(4 * TIB, 4 << 10);
}
