//! Clones that come back without RPCs (issue 13): examine finds a clone's
//! metadata on a new bdev, holds it while the clone waits for its bases and
//! assembles the clone when they appear, with the identity an NVMe/TCP host
//! saw before (the same namespace UUID across delete + create and across a
//! target restart), and the data it had.
//!
//! Run alone (`--test-threads=1`): each test starts several SPDK apps.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

const NQN: &str = "nqn.2026-11.io.bdev-clone:examine";
const SIZE: usize = 32 << 20;
const REGIONS: u64 = (SIZE / (64 << 10)) as u64;
/// JSON-RPC error codes are SPDK's negative errno values.
const EBUSY: i64 = 16;
const ENODEV: i64 = 19;
const EEXIST: i64 = 17;
const EINVAL: i64 = 22;

fn aio(t: &Tgt, dir: &Path, name: &str) {
    t.call(
        "bdev_aio_create",
        Some(json!({"name": name, "filename": dir.join(format!("{name}.img")), "block_size": 512})),
    )
    .unwrap();
}

fn aio_config(dir: &Path, names: &[&str], extra: Vec<Value>) -> Value {
    let mut cfg: Vec<Value> = extra;
    cfg.extend(names.iter().map(|name| {
        json!({"method": "bdev_aio_create",
            "params": {"name": name, "filename": dir.join(format!("{name}.img")), "block_size": 512}})
    }));
    json!({"subsystems": [{"subsystem": "bdev", "config": cfg}]})
}

fn clones(t: &Tgt) -> Vec<Value> {
    t.call("bdev_clone_get_clones", None)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Exports the clone `c0` over NVMe/TCP on `port` (subsystem created when
/// `fresh`).
fn export(t: &Tgt, port: &str, fresh: bool) {
    if fresh {
        nvmf_tcp_subsystem(t, NQN, "EXAMINE0000000001", port);
    }
    nvmf_add_ns(t, NQN, "c0");
}

/// A host's config: the export attached as controller `name` (bdev `{name}n1`).
fn host_config(name: &str, port: &str) -> Value {
    json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_nvme_attach_controller", "params": {"name": name, "trtype": "tcp",
            "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port, "subnqn": NQN}}]}]})
}

/// The namespace's identity as a host sees it: the UUID of bdev `Hn1` on a
/// stock spdk_tgt that attaches the export. SPDK's NVMe driver takes it from
/// the namespace's NGUID (else its UUID); the target derives both from the
/// exported bdev's UUID.
fn host_identity(dir: &Path, port: &str, tag: &str) -> String {
    let conf = dir.join(format!("host_{tag}.json"));
    write_json(&conf, &host_config("H", port));
    let h = Tgt::start_tool(
        "spdk_tgt",
        dir,
        &format!("host_{tag}"),
        &["-m", "0x2", "-c", conf.to_str().unwrap()],
    );
    let b = h
        .call("bdev_get_bdevs", Some(json!({"name": "Hn1"})))
        .unwrap_or_else(|e| panic!("the host sees no namespace: {e:?}\n{}", h.log_text()))[0]
        .clone();
    h.stop();
    b["uuid"].as_str().unwrap().to_string()
}

/// spdk_dd through the export: `args` with the host's bdev as Hn1.
fn host_dd(dir: &Path, port: &str, args: &[&str]) {
    let conf = dir.join("dd_host.json");
    write_json(&conf, &host_config("H", port));
    let o = Command::new(spdk_tool("spdk_dd").expect("spdk_dd in PATH"))
        .args(APP_ARGS)
        .args(["-m", "0x2", "--json"])
        .arg(&conf)
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "spdk_dd {args:?}: {}", output_text(&o));
}

/// One bdevperf run of its verify workload: (IOPS, failed I/Os).
fn verify(t: &Tgt) -> (f64, u64) {
    let r = t
        .call("perform_tests", None)
        .unwrap_or_else(|e| panic!("perform_tests: {e:?}\n{}", t.log_text()));
    let jobs = r["results"].as_array().unwrap().clone();
    (
        jobs.iter().map(|j| j["iops"].as_f64().unwrap()).sum(),
        jobs.iter().map(|j| j["io_failed"].as_u64().unwrap()).sum(),
    )
}

/// The whole story: create, write through NVMe/TCP, delete + create, restart
/// with nothing but the metadata bdev configured, bases added later by RPC:
/// the clone comes back by examine, with the identity and data the host had.
#[test]
fn restart_brings_the_clone_back_by_examine() {
    let dir = scratch("examine_restart");
    let port = (38000 + std::process::id() % 1000).to_string();
    let mut expect = pattern_file(&dir.join("src.img"), SIZE, 0x42);
    std::fs::write(dir.join("dst.img"), vec![0u8; SIZE]).unwrap();
    std::fs::write(dir.join("meta.img"), vec![0u8; 1 << 20]).unwrap();
    // Not metadata: junk and zeroes are never claimed.
    let junk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("junk.img"), &junk).unwrap();
    std::fs::write(dir.join("zero.img"), vec![0u8; 1 << 20]).unwrap();

    let conf = dir.join("t1.json");
    write_json(
        &conf,
        &aio_config(&dir, &["src", "dst", "meta", "junk", "zero"], vec![]),
    );
    let t = Tgt::start(&dir, "t1", &["-m", "0x1", "-c", conf.to_str().unwrap()]);
    t.call(
        "bdev_clone_create",
        Some(
            json!({"name": "c0", "source_bdev": "src", "destination_bdev": "dst",
            "metadata_bdev": "meta", "region_size_kb": 64, "max_bandwidth_mb_sec": 1,
            "max_bandwidth_busy_mb_sec": 1, "commit_interval_ms": 100}),
        ),
    )
    .unwrap();
    let uuid = t.clone_info("c0")["uuid"].as_str().unwrap().to_string();
    export(&t, &port, true);

    // A host writes 1 MiB at 2 MiB through the export.
    let w = pattern_file(&dir.join("w.img"), 1 << 20, 0x77);
    expect[2 << 20..3 << 20].copy_from_slice(&w);
    host_dd(
        &dir,
        &port,
        &[
            "--if",
            dir.join("w.img").to_str().unwrap(),
            "--ob",
            "Hn1",
            "--bs",
            "65536",
            "--seek",
            "32",
        ],
    );
    let host_uuid = host_identity(&dir, &port, "1");
    assert_eq!(host_uuid, uuid, "the namespace UUID is the clone's");

    // Delete + create over the same metadata, without a uuid: the same
    // namespace identity.
    t.call("bdev_clone_delete", Some(json!({"name": "c0"})))
        .unwrap();
    t.call(
        "bdev_clone_create",
        Some(
            json!({"name": "c0", "source_bdev": "src", "destination_bdev": "dst",
            "metadata_bdev": "meta", "max_bandwidth_mb_sec": 1, "max_bandwidth_busy_mb_sec": 1,
            "commit_interval_ms": 100}),
        ),
    )
    .unwrap();
    assert_eq!(t.clone_info("c0")["uuid"], uuid.as_str());
    export(&t, &port, false);
    assert_eq!(
        host_identity(&dir, &port, "2"),
        host_uuid,
        "identity changed across delete + create"
    );
    // A host that stays connected through the restart (it reconnects every
    // second, forever), on the last sixteenth of the volume.
    let conf = dir.join("verifier.json");
    let mut host = host_config("V", &port);
    host["subsystems"][0]["config"][0]["params"]["ctrlr_loss_timeout_sec"] = json!(-1);
    host["subsystems"][0]["config"][0]["params"]["reconnect_delay_sec"] = json!(1);
    host["subsystems"][0]["config"]
        .as_array_mut()
        .unwrap()
        .push(json!({"method": "bdev_split_create",
            "params": {"base_bdev": "Vn1", "split_count": 16}}));
    write_json(&conf, &host);
    let verifier = Tgt::start_tool(
        "bdevperf",
        &dir,
        "verifier",
        &[
            "-m",
            "0x2",
            "-z",
            "--json",
            conf.to_str().unwrap(),
            "-q",
            "16",
            "-o",
            "4096",
            "-w",
            "verify",
            "-t",
            "1",
            "-T",
            "Vn1p15",
        ],
    );
    let (iops, failed) = verify(&verifier);
    assert!(
        iops > 0.0 && failed == 0,
        "verify before the restart: {iops} IOPS, {failed} failed"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = t.clone_info("c0");
    assert!(!claimed(&t, "junk") && !claimed(&t, "zero"));
    t.stop();

    let committed = before["regions_committed"].as_u64().unwrap();
    assert!(committed > 0 && committed < REGIONS, "{before}");

    // Restart with only the metadata (and the non-metadata bdevs) configured:
    // examine finds the clone and holds its metadata while it waits.
    let conf = dir.join("t2.json");
    write_json(&conf, &aio_config(&dir, &["meta", "junk", "zero"], vec![]));
    let t = Tgt::start(&dir, "t2", &["-m", "0x1", "-c", conf.to_str().unwrap()]);
    let w = t.clone_info("c0");
    assert_eq!(w["state"], "waiting_for_bases", "{w}");
    assert_eq!(w["found_by"], "examine", "{w}");
    assert_eq!(w["waiting_for"], json!(["src", "dst"]), "{w}");
    assert!(claimed(&t, "meta"), "examine holds the metadata");
    assert!(
        !claimed(&t, "junk") && !claimed(&t, "zero"),
        "examine claimed a non-metadata bdev"
    );
    assert_eq!(clones(&t).len(), 1);
    // A waiting clone is no open clone: RPCs on it say so.
    let e = t
        .call(
            "bdev_clone_set_hydration",
            Some(json!({"name": "c0", "enabled": false})),
        )
        .unwrap_err();
    assert_eq!(e.0, -EBUSY, "{e:?}");
    // save_config keeps it.
    let saved = t.plugin(&["save_config"]).unwrap();
    let creates: Vec<Value> = saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["config"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["method"] == "bdev_clone_create" || c["method"] == "bdev_clone_set_options")
        .collect();
    assert_eq!(creates[0]["params"]["auto_examine"], true, "{creates:?}");
    assert_eq!(creates[1]["params"]["name"], "c0", "{creates:?}");
    assert_eq!(creates[1]["params"]["wait_for_bases"], true, "{creates:?}");

    aio(&t, &dir, "src");
    assert_eq!(t.clone_info("c0")["waiting_for"], json!(["dst"]));
    aio(&t, &dir, "dst");
    let after = t.clone_info("c0");
    assert_ne!(after["state"], "waiting_for_bases", "{after}");
    assert_eq!(after["uuid"], uuid.as_str(), "{after}");
    assert_eq!(
        after["max_bandwidth_mb_sec"], 1,
        "settings from the superblock: {after}"
    );
    assert!(
        after["regions_hydrated"].as_u64().unwrap() >= committed,
        "lost progress: {before} -> {after}"
    );
    // A config's create of the clone examine assembled is no error: it
    // answers the name and applies its settings.
    let again = json!({"name": "c0", "source_bdev": "src", "destination_bdev": "dst",
        "metadata_bdev": "meta", "max_bandwidth_mb_sec": 0});
    assert_eq!(t.call("bdev_clone_create", Some(again)).unwrap(), "c0");
    assert_eq!(t.clone_info("c0")["max_bandwidth_mb_sec"], 0);
    // ... but one over other bases, or with another UUID, is.
    let other = json!({"name": "c0", "source_bdev": "junk", "destination_bdev": "dst",
        "metadata_bdev": "meta"});
    assert_eq!(
        t.call("bdev_clone_create", Some(other)).unwrap_err().0,
        -EEXIST
    );
    let other = json!({"name": "c0", "source_bdev": "src", "destination_bdev": "dst",
        "metadata_bdev": "meta", "uuid": "00000000-0000-4000-8000-000000000001"});
    assert_eq!(
        t.call("bdev_clone_create", Some(other)).unwrap_err().0,
        -EEXIST
    );

    // The host sees the same namespace and the data it wrote.
    export(&t, &port, true);
    assert_eq!(
        host_identity(&dir, &port, "3"),
        host_uuid,
        "identity changed across the restart"
    );
    let out = dir.join("out.img");
    host_dd(
        &dir,
        &port,
        &[
            "--ib",
            "Hn1",
            "--of",
            out.to_str().unwrap(),
            "--bs",
            "1048576",
        ],
    );
    let got = std::fs::read(&out).unwrap();
    // The verifier wrote the last sixteenth; everything else is the source
    // and what the first host wrote.
    let tail = SIZE - SIZE / 16;
    assert!(
        got[..tail] == expect[..tail],
        "data through the export after the restart"
    );
    // The verifier reconnected by itself and verifies again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let state = verifier
            .call("bdev_nvme_get_controllers", Some(json!({"name": "V"})))
            .ok()
            .and_then(|v| v[0]["ctrlrs"][0]["state"].as_str().map(String::from));
        if state.as_deref() == Some("enabled") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the host never reconnected"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (iops, failed) = verify(&verifier);
    assert!(
        iops > 0.0 && failed == 0,
        "verify after the restart: {iops} IOPS, {failed} failed"
    );
    t.stop();
}

/// Waiting clones can be deleted (the hold goes), examine can be switched
/// off (and its setting is saved), and a config's create of a clone examine
/// holds is merged with it.
#[test]
fn examine_can_be_switched_off_and_waiting_clones_deleted() {
    let dir = scratch("examine_options");
    pattern_file(&dir.join("src.img"), 4 << 20, 0x11);
    std::fs::write(dir.join("dst.img"), vec![0u8; 4 << 20]).unwrap();
    std::fs::write(dir.join("meta.img"), vec![0u8; 1 << 20]).unwrap();
    let conf = dir.join("t1.json");
    write_json(&conf, &aio_config(&dir, &["src", "dst", "meta"], vec![]));
    let t = Tgt::start(&dir, "t1", &["-m", "0x1", "-c", conf.to_str().unwrap()]);
    t.call(
        "bdev_clone_create",
        Some(
            json!({"name": "c1", "source_bdev": "src", "destination_bdev": "dst",
            "metadata_bdev": "meta", "no_hydration": true}),
        ),
    )
    .unwrap();
    t.stop();

    // Off from the config (applied before any bdev exists): nothing claimed.
    let off = json!({"method": "bdev_clone_set_options", "params": {"auto_examine": false}});
    let conf = dir.join("t2.json");
    write_json(&conf, &aio_config(&dir, &["meta"], vec![off]));
    let t = Tgt::start(&dir, "t2", &["-m", "0x1", "-c", conf.to_str().unwrap()]);
    assert!(clones(&t).is_empty());
    assert!(!claimed(&t, "meta"));
    let saved = t.plugin(&["save_config"]).unwrap().to_string();
    assert!(saved.contains(r#""auto_examine":false"#), "{saved}");
    let bad = t.call("bdev_clone_set_options", Some(json!({"auto_examine": 3})));
    assert_eq!(bad.unwrap_err().0, -EINVAL);
    let bad = t.call("bdev_clone_set_options", Some(json!({"examine": true})));
    assert_eq!(bad.unwrap_err().0, -EINVAL);

    // On at run time: the next bdev with metadata is examined.
    t.call(
        "bdev_clone_set_options",
        Some(json!({"auto_examine": true})),
    )
    .unwrap();
    t.call("bdev_aio_delete", Some(json!({"name": "meta"})))
        .unwrap();
    aio(&t, &dir, "meta");
    let w = t.clone_info("c1");
    assert_eq!(w["state"], "waiting_for_bases", "{w}");
    assert!(claimed(&t, "meta"));

    // A config's create merges with the examine-found clone: its settings
    // win, and the clone is assembled once the bases exist.
    let create = json!({"name": "c1", "source_bdev": "src", "destination_bdev": "dst",
        "metadata_bdev": "meta", "wait_for_bases": true, "hydration_threshold": 3});
    assert_eq!(t.call("bdev_clone_create", Some(create)).unwrap(), "c1");
    // Another metadata bdev for the same name is refused.
    let other = json!({"name": "c1", "source_bdev": "src", "destination_bdev": "dst",
        "metadata_bdev": "meta2", "wait_for_bases": true});
    assert_eq!(
        t.call("bdev_clone_create", Some(other)).unwrap_err().0,
        -EEXIST
    );
    assert_eq!(clones(&t).len(), 1);

    // Deleted while waiting: the hold goes, nothing is left.
    assert_eq!(
        t.call("bdev_clone_delete", Some(json!({"name": "c1"})))
            .unwrap(),
        true
    );
    assert!(clones(&t).is_empty());
    assert!(!claimed(&t, "meta"));
    assert_eq!(
        t.call("bdev_clone_delete", Some(json!({"name": "c1"})))
            .unwrap_err()
            .0,
        -ENODEV
    );

    // Found again, then its metadata bdev goes away: it stops waiting.
    t.call("bdev_aio_delete", Some(json!({"name": "meta"})))
        .unwrap();
    aio(&t, &dir, "meta");
    assert_eq!(t.clone_info("c1")["state"], "waiting_for_bases");
    t.call("bdev_aio_delete", Some(json!({"name": "meta"})))
        .unwrap();
    assert!(clones(&t).is_empty());

    // Found again; its bases come: assembled with the stored settings.
    aio(&t, &dir, "meta");
    aio(&t, &dir, "src");
    aio(&t, &dir, "dst");
    let c = t.clone_info("c1");
    assert_eq!(c["state"], "paused", "{c}");
    assert_eq!(c["hydration_enabled"], false, "{c}");
    t.stop();
}
