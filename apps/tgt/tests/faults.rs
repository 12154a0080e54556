//! Faults under a clone in real SPDK: SPDK's error-injection bdevs
//! (`bdev_error_create`, `bdev_error_inject_error`) stacked under the source,
//! the destination and the metadata; hot-removal of each base bdev under I/O;
//! bad RPC input beyond spdk.rs's table. The clone is exported over NVMe/TCP
//! on 127.0.0.1 and read and written by an SPDK initiator (spdk_dd), as a
//! remote host would. Run one at a time (`--test-threads=1`).

mod common;
mod fault_support;

use common::*;
use fault_support::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// Backing files: an 8 MiB patterned source, a zeroed destination, 1 MiB of
/// metadata.
fn files(dir: &Path) -> (Vec<u8>, [PathBuf; 3]) {
    let src = pattern_file(&dir.join("src.img"), 8 * MIB, 0x5A);
    std::fs::write(dir.join("dst.img"), vec![0u8; 8 * MIB]).unwrap();
    std::fs::write(dir.join("meta.img"), vec![0u8; MIB]).unwrap();
    (
        src,
        [
            dir.join("src.img"),
            dir.join("dst.img"),
            dir.join("meta.img"),
        ],
    )
}

/// Equal bytes; never prints them (a failed assert on 8 MiB floods the log).
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        eprintln!("lengths differ: {} vs {}", a.len(), b.len());
        return false;
    }
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => {
            eprintln!("first difference at byte {i} (region {})", i / REGION);
            false
        }
        None => true,
    }
}

/// A saved config whose clones start paused (`no_hydration`).
fn paused(mut saved: Value) -> Value {
    for sub in saved["subsystems"].as_array_mut().unwrap() {
        for c in sub["config"].as_array_mut().into_iter().flatten() {
            if c["method"] == "bdev_clone_create" {
                c["params"]["no_hydration"] = json!(true);
            }
        }
    }
    saved
}

fn describe(r: &Result<Vec<u8>, String>) -> String {
    match r {
        Ok(d) => format!("{} bytes, first {:02x?}", d.len(), &d[..d.len().min(16)]),
        Err(e) => e.clone(),
    }
}

fn region(data: &[u8], r: usize) -> &[u8] {
    &data[r * REGION..(r + 1) * REGION]
}

fn create(t: &Tgt, src: &str, dst: &str, meta: &str, extra: Value) {
    let mut p = json!({"name": "c0", "source_bdev": src, "destination_bdev": dst,
        "metadata_bdev": meta, "region_size_kb": 64, "commit_interval_ms": 100});
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    assert_eq!(ok(t, "bdev_clone_create", p), json!("c0"));
}

/// Source read errors: a user read of an unhydrated region fails with an I/O
/// error; its hydration is retried and counted; other regions keep working;
/// once the fault clears, hydration completes and the data is the source's.
#[test]
fn source_read_errors() {
    let dir = scratch("f_src");
    let (src, [s, d, m]) = files(&dir);
    let t = Tgt::start(&dir, "tgt", &[]);
    aio(&t, "src", &s);
    aio(&t, "dst", &d);
    aio(&t, "meta", &m);
    let ee = error_bdev(&t, "src");
    create(&t, &ee, "dst", "meta", json!({"no_hydration": true}));
    let init = export(&t, &dir, "c0");
    assert!(
        init.read(3, 1).unwrap() == region(&src, 3),
        "before the fault"
    );

    inject(&t, &ee, "read", 1_000_000);
    let r = init.read(3, 1);
    assert!(
        r.is_err(),
        "a read of an unhydrated region succeeded: {}",
        describe(&r)
    );
    // A whole-region write needs no copy: it works, and reads back.
    let mut expect = src.clone();
    let w5 = vec![0xC5u8; REGION];
    init.write(5 * REGION, &w5).expect("whole-region write");
    expect[5 * REGION..6 * REGION].copy_from_slice(&w5);
    assert!(same(&init.read(5, 1).unwrap(), &w5), "data differs");
    // A partial write must copy its region from the source first: it fails.
    assert!(init.write(7 * REGION + 4096, &[0xC7u8; 4096]).is_err());
    // Hydration fails, is counted, and is retried.
    ok(
        &t,
        "bdev_clone_set_hydration",
        json!({"name": "c0", "enabled": true}),
    );
    let info = wait_info(&t, "c0", 30, |i| n(i, "hydration_errors") >= 3);
    assert_eq!(info["state"], "hydrating", "{info}");
    assert_eq!(
        n(&info, "regions_hydrated"),
        1,
        "only the written region: {info}"
    );
    // Region 5 still reads as written, through the destination.
    assert!(same(&init.read(5, 1).unwrap(), &w5), "data differs");

    clear(&t, &ee);
    let info = t.wait_state("c0", "hydrated", 60);
    assert!(n(&info, "hydration_errors") >= 3, "{info}");
    assert!(
        same(&init.read(0, 128).unwrap(), &expect),
        "clone after the fault"
    );
    assert!(t.alive());
    let log = t.stop();
    assert!(!log.contains("panic"), "{log}");
    assert!(same(&std::fs::read(&d).unwrap(), &expect), "destination");
}

/// Destination write errors fail user writes and copies, and mark nothing;
/// a destination flush error fails the commit: state `failed` with the reason,
/// reads served, writes refused; after a restart from the saved config the
/// clone resumes from the last good commit and finishes with the right data.
#[test]
fn destination_write_and_flush_errors() {
    let dir = scratch("f_dst");
    let (src, [s, d, m]) = files(&dir);
    let t = Tgt::start(&dir, "tgt", &[]);
    aio(&t, "src", &s);
    aio(&t, "dst", &d);
    aio(&t, "meta", &m);
    let ee = error_bdev(&t, "dst");
    create(&t, "src", &ee, "meta", json!({"no_hydration": true}));
    let init = export(&t, &dir, "c0");

    // Write errors.
    inject(&t, &ee, "write", 1_000_000);
    assert!(init.write(2 * REGION, &vec![0xD2u8; REGION]).is_err());
    assert!(init.write(4 * REGION + 4096, &[0xD4u8; 4096]).is_err());
    ok(
        &t,
        "bdev_clone_set_hydration",
        json!({"name": "c0", "enabled": true, "max_bandwidth_mb_sec": 2}),
    );
    let info = wait_info(&t, "c0", 30, |i| n(i, "hydration_errors") >= 2);
    assert_eq!(
        n(&info, "regions_hydrated"),
        0,
        "marked without data: {info}"
    );
    assert_eq!(n(&info, "regions_committed"), 0, "{info}");
    // Failed writes left the clone reading the source.
    assert!(
        same(&init.read(2, 3).unwrap(), &src[2 * REGION..5 * REGION]),
        "data differs"
    );

    // Flush errors, mid-hydration.
    clear(&t, &ee);
    wait_info(&t, "c0", 30, |i| n(i, "regions_committed") >= 4);
    inject(&t, &ee, "flush", 1_000_000);
    let info = t.wait_state("c0", "failed", 30);
    let err = info["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("destination"), "{info}");
    let committed = n(&info, "regions_committed");
    assert!(committed < 128, "{info}");
    // Reads served (from what is in memory), writes refused.
    assert!(
        same(&init.read(0, 128).unwrap(), &src),
        "reads of a failed clone"
    );
    assert!(init.write(0, &vec![0xD0u8; REGION]).is_err());
    let info = t.clone_info("c0");
    assert_eq!(n(&info, "regions_committed"), committed, "{info}");
    let saved = dir.join("saved.json");
    write_json(&saved, &paused(t.plugin(&["save_config"]).unwrap()));
    let log = t.stop();
    assert!(log.contains("commit failed"), "{log}");

    // Restart from the saved config, the fault gone: resumes from the last
    // good commit (nothing of the failed one). Paused, so that no copy (a
    // hot-first one for the bdev layer's examine reads, say) runs before
    // the count is read.
    let t = Tgt::start(&dir, "tgt2", &["-c", saved.to_str().unwrap()]);
    let info = t.clone_info("c0");
    assert_eq!(n(&info, "regions_hydrated"), committed, "{info}");
    ok(
        &t,
        "bdev_clone_set_hydration",
        json!({"name": "c0", "enabled": true, "max_bandwidth_mb_sec": 0}),
    );
    t.wait_state("c0", "hydrated", 60);
    t.stop();
    assert!(same(&std::fs::read(&d).unwrap(), &src), "destination");
}

/// Metadata write or flush errors: state `read_only` with the reason (RPC and
/// log), reads served, writes refused; restarted from its saved config with
/// the fault gone, the clone resumes from the last good commit.
#[test]
fn metadata_write_and_flush_errors() {
    for io_type in ["write", "flush"] {
        let dir = scratch(&format!("f_meta_{io_type}"));
        let (src, [s, d, m]) = files(&dir);
        let t = Tgt::start(&dir, "tgt", &[]);
        aio(&t, "src", &s);
        aio(&t, "dst", &d);
        aio(&t, "meta", &m);
        let ee = error_bdev(&t, "meta");
        create(&t, "src", "dst", &ee, json!({"max_bandwidth_mb_sec": 2}));
        let init = export(&t, &dir, "c0");
        wait_info(&t, "c0", 30, |i| n(i, "regions_committed") >= 4);
        inject(&t, &ee, io_type, 1_000_000);
        let info = t.wait_state("c0", "read_only", 30);
        let err = info["error"].as_str().unwrap_or_default().to_string();
        assert!(err.contains("metadata"), "{io_type}: {info}");
        let committed = n(&info, "regions_committed");
        assert!(same(&init.read(0, 128).unwrap(), &src), "{io_type}: reads");
        assert!(init.write(0, &vec![0xE0u8; REGION]).is_err(), "{io_type}");
        let saved = dir.join("saved.json");
        write_json(&saved, &t.plugin(&["save_config"]).unwrap());
        let log = t.stop();
        assert!(log.contains(&err), "{io_type}: the log lacks '{err}'");

        let t = Tgt::start(&dir, "tgt2", &["-c", saved.to_str().unwrap()]);
        let info = t.clone_info("c0");
        assert!(
            n(&info, "regions_hydrated") >= committed,
            "{io_type}: {info}"
        );
        assert_eq!(info["state"], "hydrating", "{io_type}: {info}");
        ok(
            &t,
            "bdev_clone_set_hydration",
            json!({"name": "c0", "max_bandwidth_mb_sec": 0}),
        );
        t.wait_state("c0", "hydrated", 60);
        t.stop();
        assert!(
            same(&std::fs::read(&d).unwrap(), &src),
            "{io_type}: destination"
        );
    }
}

/// Hot-removal of the source, the destination or the metadata bdev while
/// the clone hydrates and a remote host (bdevperf over NVMe/TCP) drives I/O
/// at it: the target does not crash, every outstanding I/O completes (else
/// the namespace could not be removed and the clone would never go), the
/// clone is unregistered, the other bases' claims are released, and the
/// target stays up and serves RPCs.
#[test]
fn hot_remove_under_io() {
    let bdevperf = spdk_tool("bdevperf").expect("bdevperf in PATH");
    for victim in ["src", "dst", "meta"] {
        let dir = scratch(&format!("f_hr_{victim}"));
        // Sparse 1 GiB files: 16384 regions, far more than the host's writes
        // hydrate before the removal.
        for f in ["src", "dst"] {
            let file = std::fs::File::create(dir.join(format!("{f}.img"))).unwrap();
            file.set_len(1 << 30).unwrap();
        }
        std::fs::write(dir.join("meta.img"), vec![0u8; MIB]).unwrap();
        let t = Tgt::start(&dir, "tgt", &[]);
        for b in ["src", "dst", "meta"] {
            aio(&t, b, &dir.join(format!("{b}.img")));
        }
        create(
            &t,
            "src",
            "dst",
            "meta",
            json!({"max_bandwidth_mb_sec": 16}),
        );
        let init = export(&t, &dir, "c0");
        let out = std::fs::File::create(dir.join("bdevperf.out")).unwrap();
        let mut perf = std::process::Command::new(&bdevperf)
            .args(APP_ARGS)
            .arg("--json")
            .arg(&init.conf)
            .args([
                "-T", "Nvme0n1", "-q", "16", "-o", "4096", "-w", "randrw", "-M", "70",
            ])
            .args(["-t", "10"])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        // Under I/O: wait until the host has done reads and writes.
        wait_for("host I/O", 30, || {
            let (r, w) = iostat(&t, "c0");
            (r > 500 && w > 200).then_some(Value::Null)
        });
        let before = t.clone_info("c0");
        assert_eq!(before["state"], "hydrating", "{victim}: {before}");
        ok(&t, "bdev_aio_delete", json!({"name": victim}));
        if victim == "src" {
            // The source of a clone not fully hydrated: the clone stays up,
            // serving its hydrated regions (unhydrated reads fail: the host
            // sees errors), and the source is no longer held.
            let info = wait_for("the clone carrying on without its source", 30, || {
                let i = t.clone_info("c0");
                (i["state"] == "paused").then_some(i)
            });
            let error = info["error"].as_str().unwrap_or_default();
            assert!(error.contains("source device was removed"), "{info}");
        } else {
            let deadline = Instant::now() + Duration::from_secs(30);
            while t.call("bdev_clone_get_clones", None).unwrap() != json!([])
                || t.call("bdev_get_bdevs", Some(json!({"name": "c0"})))
                    .is_ok()
            {
                assert!(
                    Instant::now() < deadline,
                    "{victim}: c0 never went away:\n{}",
                    t.log_text()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            for b in ["src", "dst", "meta"] {
                if b != victim {
                    assert!(!claimed(&t, b), "{victim}: {b} still claimed");
                }
            }
        }
        // The host sees errors and ends; it neither hangs nor crashes.
        let deadline = Instant::now() + Duration::from_secs(60);
        let st = loop {
            if let Some(st) = perf.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = perf.kill();
                panic!("{victim}: bdevperf hung after the removal");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        use std::os::unix::process::ExitStatusExt;
        assert!(
            st.signal().is_none(),
            "{victim}: bdevperf killed by a signal: {st}"
        );
        assert!(t.alive(), "{victim}: target down");
        if victim == "src" {
            ok(&t, "bdev_clone_delete", json!({"name": "c0"}));
            assert!(!claimed(&t, "dst") && !claimed(&t, "meta"));
        }
        // The remaining bases can serve a new clone at once.
        if victim != "meta" {
            let e = t.call(
                "bdev_clone_create",
                Some(json!({"name": "c1", "source_bdev": "src",
                "destination_bdev": "dst", "metadata_bdev": "meta"})),
            );
            assert!(e.is_err(), "{victim}: a base is gone, create must fail");
        }
        let log = t.stop();
        let role = match victim {
            "src" => "source",
            "dst" => "destination",
            _ => "metadata",
        };
        assert!(
            log.contains(&format!("the {role} bdev was removed")),
            "{victim}: {log}"
        );
        assert!(!log.contains("panic"), "{victim}: {log}");
    }
}

/// Bad input beyond spdk.rs's table: the metadata of a live clone, deleting
/// twice while hydrating, huge numbers, strange names. Each is refused with
/// an error that says why, and changes nothing.
#[test]
fn more_bad_rpc_calls_are_refused() {
    let dir = scratch("f_badrpc");
    let t = Tgt::start(&dir, "tgt", &[]);
    for (name, mib) in [
        ("src", 8),
        ("dst", 8),
        ("meta", 1),
        ("src2", 8),
        ("dst2", 8),
    ] {
        ok(
            &t,
            "bdev_malloc_create",
            json!({"name": name, "num_blocks": mib * 2048, "block_size": 512}),
        );
    }
    create(&t, "src", "dst", "meta", json!({"max_bandwidth_mb_sec": 1}));
    let base = json!({"name": "c1", "source_bdev": "src2", "destination_bdev": "dst2",
        "metadata_bdev": "meta2"});
    let with = |k: &str, v: Value| {
        let mut p = base.clone();
        p["metadata_bdev"] = json!("meta");
        p[k] = v;
        p
    };
    let long = "x".repeat(300);
    let cases: Vec<(&str, Value, i64, &str)> = vec![
        // The metadata (or destination) of a live clone.
        (
            "bdev_clone_create",
            with("name", json!("c1")),
            -16,
            "claimed",
        ),
        (
            "bdev_clone_create",
            with("destination_bdev", json!("dst")),
            -16,
            "claimed",
        ),
        // The clone itself as a base of another.
        (
            "bdev_clone_create",
            with("source_bdev", json!("c0")),
            -16,
            "claimed",
        ),
        (
            "bdev_clone_create",
            with("name", json!("c0")),
            -17,
            "exists",
        ),
        ("bdev_clone_create", with("name", json!(long)), -22, "name"),
        (
            "bdev_clone_create",
            with("name", json!("a\u{0}b")),
            -22,
            "NUL",
        ),
        (
            "bdev_clone_create",
            with("hydration_threshold", json!(u64::MAX)),
            -22,
            "hydration_threshold",
        ),
        (
            "bdev_clone_create",
            with("hydration_threshold", json!(1e300)),
            -22,
            "hydration_threshold",
        ),
        (
            "bdev_clone_create",
            with("commit_interval_ms", json!(u64::MAX)),
            -22,
            "commit_interval_ms",
        ),
        (
            "bdev_clone_create",
            with("max_bandwidth_mb_sec", json!(-1)),
            -22,
            "max_bandwidth_mb_sec",
        ),
        (
            "bdev_clone_create",
            with("region_size_kb", json!(u32::MAX)),
            -22,
            "region_size_kb",
        ),
        (
            "bdev_clone_create",
            with("uuid", json!("00000000-0000-0000-0000-00000000000\u{0}")),
            -22,
            "uuid",
        ),
        ("bdev_clone_create", with("name", json!(null)), -22, "name"),
        // Refused by SPDK's JSON-RPC server itself (params must be an object).
        ("bdev_clone_create", json!("c1"), -32600, "Invalid request"),
        (
            "bdev_clone_set_hydration",
            json!({"name": "c0", "hydration_batch_size": 0}),
            -22,
            "hydration_batch_size",
        ),
        (
            "bdev_clone_set_hydration",
            json!({"name": "c0", "hydration_threshold": 1u64 << 40}),
            -22,
            "hydration_threshold",
        ),
        (
            "bdev_clone_set_hydration",
            json!({"name": "c0", "enabled": 1}),
            -22,
            "enabled",
        ),
        (
            "bdev_clone_set_hydration",
            json!({"name": "c0", "bogus": true}),
            -22,
            "bogus",
        ),
        (
            "bdev_clone_get_clones",
            json!({"name": ["c0"]}),
            -22,
            "name",
        ),
        (
            "bdev_clone_release_source",
            json!({"name": "c0"}),
            -16,
            "not fully hydrated",
        ),
        ("bdev_clone_delete", json!({"name": 7}), -22, "name"),
    ];
    let before = t.clone_info("c0");
    let mut tried = 0;
    for (method, params, code, needle) in &cases {
        match t.call(method, Some(params.clone())) {
            Ok(v) => panic!("{method} {params} succeeded: {v}"),
            Err((c, msg)) => {
                assert_eq!(c, *code, "{method} {params}: {msg}");
                assert!(
                    msg.contains(needle),
                    "{method} {params}: '{msg}' lacks '{needle}'"
                );
            }
        }
        tried += 1;
        assert!(t.alive());
    }
    // Nothing changed: one clone, its settings as they were.
    let all = t.call("bdev_clone_get_clones", None).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    let after = &all[0];
    for k in [
        "hydration_threshold",
        "hydration_batch_size",
        "max_bandwidth_mb_sec",
        "hydration_enabled",
    ] {
        assert_eq!(before[k], after[k], "{k} changed");
    }
    for b in ["src2", "dst2"] {
        assert!(!claimed(&t, b), "{b} left claimed");
    }
    // Deleting twice while hydrating: the second call is refused (or finds the
    // clone gone), the first completes; the target stays up.
    let sock = t.sock.clone();
    let first = std::thread::spawn(move || {
        call_sock(&sock, "bdev_clone_delete", Some(json!({"name": "c0"})), 60)
    });
    let second = t.call("bdev_clone_delete", Some(json!({"name": "c0"})));
    let first = first.join().unwrap();
    // Exactly one succeeds; the other is refused, whichever came second.
    assert!(first.is_ok() != second.is_ok(), "{first:?} {second:?}");
    if let Err((c, msg)) = first.as_ref().and(second.as_ref()) {
        assert!(
            (*c == -16 && msg.contains("being deleted")) || (*c == -19 && msg.contains("no clone")),
            "{c} {msg}"
        );
    }
    tried += 1;
    assert_eq!(t.call("bdev_clone_get_clones", None).unwrap(), json!([]));
    for b in ["src", "dst", "meta"] {
        assert!(!claimed(&t, b), "{b} left claimed after delete");
    }
    eprintln!("{tried} more bad calls refused");
    t.stop();
}
