//! Shapes operators use (issue 13): many clones of one read-only golden
//! image, a clone whose destination is an lvol, a clone of a clone. Data is
//! checked byte for byte: on the destinations (aio files) after hydration,
//! and through the clones with spdk_dd while they hydrate.
//! (A restart with clones coming back by examine while an NVMe/TCP host
//! reconnects: examine.rs.)
//!
//! Run alone (`--test-threads=1`): each test starts SPDK apps.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const GOLDEN: usize = 4 << 20;
const CLONES: usize = 32;

fn aio(name: &str, file: &Path) -> Value {
    json!({"method": "bdev_aio_create",
        "params": {"name": name, "filename": file, "block_size": 512}})
}

fn malloc_cfg(name: &str, mib: u64) -> Value {
    json!({"method": "bdev_malloc_create",
        "params": {"name": name, "num_blocks": mib * 2048, "block_size": 512}})
}

fn clone_cfg(name: &str, src: &str, dst: &str, meta: &str, extra: Value) -> Value {
    let mut p = json!({"name": name, "source_bdev": src, "destination_bdev": dst,
        "metadata_bdev": meta, "region_size_kb": 64});
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    json!({"method": "bdev_clone_create", "params": p})
}

fn bdev_config(cfg: Vec<Value>) -> Value {
    json!({"subsystems": [{"subsystem": "bdev", "config": cfg}]})
}

/// Waits until every clone listed is hydrated.
fn wait_all_hydrated(t: &Tgt, secs: u64) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let all = t.call("bdev_clone_get_clones", None).unwrap();
        let all = all.as_array().unwrap().clone();
        if all.iter().all(|c| c["state"] == "hydrated") {
            return all;
        }
        assert!(Instant::now() < deadline, "not all hydrated: {all:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// 32 clones of one golden image (an aio bdev all of them share, read-only)
/// hydrate at once into their own destinations; reads through clones
/// (some hydrating, some never hydrating) return the golden image.
#[test]
fn thirty_two_clones_of_one_golden_image() {
    let dir = scratch("golden");
    let golden = pattern_file(&dir.join("golden.img"), GOLDEN, 0x3c);
    let mut cfg = vec![aio("golden", &dir.join("golden.img"))];
    for i in 0..CLONES {
        let dst = dir.join(format!("dst{i}.img"));
        std::fs::write(&dst, vec![0u8; GOLDEN]).unwrap();
        cfg.push(aio(&format!("dst{i}"), &dst));
        cfg.push(malloc_cfg(&format!("meta{i}"), 1));
        cfg.push(clone_cfg(
            &format!("c{i}"),
            "golden",
            &format!("dst{i}"),
            &format!("meta{i}"),
            json!({"max_bandwidth_busy_mb_sec": 0}),
        ));
    }
    let conf = dir.join("t.json");
    write_json(&conf, &bdev_config(cfg.clone()));
    let t = Tgt::start(&dir, "t", &["-m", "0x1", "-c", conf.to_str().unwrap()]);
    let all = wait_all_hydrated(&t, 120);
    assert_eq!(all.len(), CLONES);
    t.stop();
    for i in 0..CLONES {
        let dst = std::fs::read(dir.join(format!("dst{i}.img"))).unwrap();
        assert!(
            dst == golden,
            "clone c{i}'s destination differs from the golden image"
        );
    }

    // Reads through the clones: even clones never hydrate (every read goes
    // to the golden image), odd ones hydrate while spdk_dd reads. Fresh
    // destinations, the same 32 clones at once.
    for c in cfg.iter_mut() {
        if c["method"] == "bdev_clone_create" {
            let i: usize = c["params"]["name"].as_str().unwrap()[1..].parse().unwrap();
            c["params"]["no_hydration"] = json!(i.is_multiple_of(2));
        }
    }
    for i in 0..CLONES {
        std::fs::write(dir.join(format!("dst{i}.img")), vec![0u8; GOLDEN]).unwrap();
    }
    let conf = dir.join("dd.json");
    write_json(&conf, &bdev_config(cfg));
    for i in [0, 1, 16, 31] {
        let out = dir.join(format!("out{i}.img"));
        spdk_dd(
            &conf,
            &[
                "--ib",
                &format!("c{i}"),
                "--of",
                out.to_str().unwrap(),
                "--bs",
                "65536",
            ],
        );
        assert!(std::fs::read(&out).unwrap() == golden, "reads through c{i}");
    }
}

/// A clone whose destination is an lvol. SPDK v26.05's lvol takes no FLUSH,
/// so over a device with a write cache it is refused unless
/// `allow_unflushed_destination` accepts the risk; then it works: reads
/// while it hydrates, and the whole image once hydrated.
#[test]
fn clone_onto_an_lvol() {
    let dir = scratch("lvol_dest");
    let golden = pattern_file(&dir.join("golden.img"), GOLDEN, 0x5d);
    let lvs = vec![
        aio("golden", &dir.join("golden.img")),
        malloc_cfg("lvsbase", 16),
        json!({"method": "bdev_lvol_create_lvstore",
            "params": {"bdev_name": "lvsbase", "lvs_name": "lvs0", "cluster_sz": 1048576}}),
        json!({"method": "bdev_lvol_create",
            "params": {"lvs_name": "lvs0", "lvol_name": "lvol0", "size_in_mib": 8}}),
        malloc_cfg("meta", 1),
    ];
    let conf = dir.join("t.json");
    write_json(&conf, &bdev_config(lvs.clone()));
    let t = Tgt::start(&dir, "t", &["-m", "0x1", "-c", conf.to_str().unwrap()]);
    let create = |extra: Value| {
        let mut p = json!({"name": "c0", "source_bdev": "golden", "destination_bdev": "lvs0/lvol0",
            "metadata_bdev": "meta"});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        t.call("bdev_clone_create", Some(p))
    };
    let e = create(json!({})).unwrap_err();
    assert_eq!(e.0, -22, "{e:?}");
    assert!(
        e.1.contains("lvs0/lvol0"),
        "the refusal names the lvol: {e:?}"
    );
    create(json!({"allow_unflushed_destination": true})).unwrap();
    let c = t.wait_state("c0", "hydrated", 60);
    let path = c["destination_flush_path"].to_string();
    assert!(
        path.contains("lvs0/lvol0") && path.contains("lvsbase"),
        "{c}"
    );
    t.stop();

    // Reads while it hydrates (unthrottled), in one spdk_dd run.
    let mut cfg = lvs;
    cfg.push(clone_cfg(
        "c0",
        "golden",
        "lvs0/lvol0",
        "meta",
        json!({"allow_unflushed_destination": true, "max_bandwidth_busy_mb_sec": 0}),
    ));
    let conf = dir.join("dd.json");
    write_json(&conf, &bdev_config(cfg));
    let out = dir.join("out.img");
    spdk_dd(
        &conf,
        &["--ib", "c0", "--of", out.to_str().unwrap(), "--bs", "65536"],
    );
    assert!(
        std::fs::read(&out).unwrap() == golden,
        "reads through the lvol clone"
    );
}

/// A clone of a clone: c2 clones c1, which clones the golden image. Both
/// hydrate; c2's destination holds the golden image. Deleting c1 then
/// removes c2's source: c2, fully hydrated, releases it and carries on.
#[test]
fn clone_of_a_clone() {
    let dir = scratch("clone_of_clone");
    let golden = pattern_file(&dir.join("golden.img"), GOLDEN, 0x6e);
    std::fs::write(dir.join("dst2.img"), vec![0u8; GOLDEN]).unwrap();
    let cfg = vec![
        aio("golden", &dir.join("golden.img")),
        malloc_cfg("dst1", 4),
        malloc_cfg("meta1", 1),
        aio("dst2", &dir.join("dst2.img")),
        malloc_cfg("meta2", 1),
        clone_cfg(
            "c1",
            "golden",
            "dst1",
            "meta1",
            json!({"max_bandwidth_mb_sec": 1}),
        ),
        clone_cfg(
            "c2",
            "c1",
            "dst2",
            "meta2",
            json!({"max_bandwidth_busy_mb_sec": 0}),
        ),
    ];
    let conf = dir.join("t.json");
    write_json(&conf, &bdev_config(cfg.clone()));
    // Reads through c2 while both hydrate: c2 reads c1, which reads the
    // golden image for what it has not copied.
    let out = dir.join("out.img");
    spdk_dd(
        &conf,
        &["--ib", "c2", "--of", out.to_str().unwrap(), "--bs", "65536"],
    );
    assert!(std::fs::read(&out).unwrap() == golden, "reads through c2");

    std::fs::write(dir.join("dst2.img"), vec![0u8; GOLDEN]).unwrap();
    let t = Tgt::start(&dir, "t", &["-m", "0x1", "-c", conf.to_str().unwrap()]);
    t.wait_state("c2", "hydrated", 60);
    assert_ne!(t.clone_info("c1")["state"], "failed");
    t.call("bdev_clone_delete", Some(json!({"name": "c1"})))
        .unwrap();
    let c2 = t.wait_state("c2", "source_released", 30);
    assert_eq!(c2["regions_hydrated"], c2["regions_total"], "{c2}");
    t.stop();
    assert!(
        std::fs::read(dir.join("dst2.img")).unwrap() == golden,
        "c2's destination holds the golden image"
    );
}
