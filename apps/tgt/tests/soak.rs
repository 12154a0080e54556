//! A bounded soak: three clones hydrating at once in one target, exported
//! over NVMe/TCP; rounds of bdevperf `verify` over two of them while the
//! third is read and compared with its source; between rounds, transient
//! source faults, hydration toggles, deletes and recreates, bad RPCs and
//! target restarts from the saved config. At the end every clone is
//! hydrated, rewritten with a known pattern, the target restarted, and both
//! the clones and their destination files checked.
//!
//! About 3 minutes: `cargo test -p bdev-clone-tgt --test soak -- --ignored
//! --nocapture`; SOAK_SECONDS (default 120) sets the time spent in rounds.

mod common;
mod fault_support;

use common::*;
use fault_support::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const SIZE: usize = 32 * MIB;

#[derive(Default, Debug)]
struct Counts {
    rounds: u64,
    faults: u64,
    bad_inputs: u64,
    restarts: u64,
    recreates: u64,
    toggles: u64,
    bytes_verified_bdevperf: u64,
    bytes_verified_compare: u64,
}

fn clone_params(i: usize) -> Value {
    json!({"name": format!("c{i}"), "source_bdev": format!("EE_src{i}"),
        "destination_bdev": format!("dst{i}"), "metadata_bdev": format!("meta{i}"),
        "region_size_kb": 64, "max_bandwidth_mb_sec": if i == 2 { 1 } else { 4 },
        "commit_interval_ms": 200})
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a == b
}

/// One bdevperf `verify` run over every NVMe bdev of `conf`; returns the
/// bytes it verified (MiB/s of the Total line times the run time).
fn bdevperf_verify(dir: &Path, conf: &Path, secs: u64) -> u64 {
    let bin = spdk_tool("bdevperf").expect("bdevperf in PATH");
    let out = std::process::Command::new(bin)
        .args(APP_ARGS)
        .arg("--json")
        .arg(conf)
        .args(["-q", "16", "-o", "4096", "-w", "verify", "-t"])
        .arg(secs.to_string())
        .output()
        .unwrap();
    let text = output_text(&out);
    std::fs::write(dir.join("bdevperf.last"), &text).unwrap();
    assert!(
        out.status.success(),
        "bdevperf verify failed (see {})",
        dir.join("bdevperf.last").display()
    );
    assert!(
        !text.to_lowercase().contains("miscompare") && !text.contains("mismatch"),
        "bdevperf saw wrong data"
    );
    let total = text
        .lines()
        .find(|l| l.trim_start().starts_with("Total"))
        .expect("a Total line");
    let mibs: f64 = total
        .split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    (mibs * secs as f64 * MIB as f64) as u64
}

/// The initiator config for bdevperf: both exported clones, as Nvme0n1 and Nvme1n1.
fn merged_conf(dir: &Path, a: &Initiator, b: &Initiator) -> PathBuf {
    let read =
        |p: &Path| -> Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let ca = read(&a.conf);
    let mut cb = read(&b.conf);
    let attach_b = cb["subsystems"][0]["config"][1].take();
    let mut attach_b = attach_b;
    attach_b["params"]["name"] = json!("Nvme1");
    let mut cfg = ca["subsystems"][0]["config"].as_array().unwrap().clone();
    cfg.insert(2, attach_b);
    let p = dir.join("bdevperf.json");
    write_json(
        &p,
        &json!({"subsystems": [{"subsystem": "bdev", "config": cfg}]}),
    );
    p
}

#[test]
#[ignore = "about 3 minutes: run with --ignored"]
fn soak() {
    let secs: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let dir = scratch("soak");
    let mut c = Counts::default();
    let mut srcs = Vec::new();
    for i in 0..3 {
        srcs.push(pattern_file(
            &dir.join(format!("src{i}.img")),
            SIZE,
            0x30 + i as u8,
        ));
        std::fs::write(dir.join(format!("dst{i}.img")), vec![0u8; SIZE]).unwrap();
        std::fs::write(dir.join(format!("meta{i}.img")), vec![0u8; MIB]).unwrap();
    }
    let mut t = Tgt::start(&dir, "tgt0", &[]);
    for i in 0..3 {
        for b in ["src", "dst", "meta"] {
            aio(&t, &format!("{b}{i}"), &dir.join(format!("{b}{i}.img")));
        }
        error_bdev(&t, &format!("src{i}"));
        ok(&t, "bdev_clone_create", clone_params(i));
    }
    let inits: Vec<Initiator> = (0..3).map(|i| export(&t, &dir, &format!("c{i}"))).collect();
    // The namespace of each clone's subsystem, to re-add after a recreate.
    let nqns: Vec<String> = ok(&t, "nvmf_get_subsystems", json!({}))
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["nqn"].as_str().map(String::from))
        .filter(|n| n.contains(":c"))
        .collect();
    assert_eq!(nqns.len(), 3, "{nqns:?}");
    let perf_conf = merged_conf(&dir, &inits[0], &inits[1]);
    let start = Instant::now();
    let mut rng: u64 = 0x9E3779B97F4A7C15;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    while start.elapsed() < Duration::from_secs(secs) {
        c.rounds += 1;
        c.bytes_verified_bdevperf += bdevperf_verify(&dir, &perf_conf, 6);
        // c2 is only ever read: it must read as its source.
        let got = inits[2].read(0, SIZE / REGION).expect("read c2");
        assert!(
            same(&got, &srcs[2]),
            "round {}: c2 differs from its source",
            c.rounds
        );
        c.bytes_verified_compare += SIZE as u64;
        let i = (next() % 3) as usize;
        match (c.rounds - 1) % 5 {
            0 => {
                // A transient source fault, met by hydration only: retried.
                // c2 (read, never written) hydrates slowest.
                let i = 2;
                let name = format!("c{i}");
                ok(
                    &t,
                    "bdev_clone_set_hydration",
                    json!({"name": name, "enabled": true}),
                );
                let before = n(&t.clone_info(&name), "hydration_errors");
                if t.clone_info(&name)["state"] == "hydrating" {
                    inject(&t, &format!("EE_src{i}"), "read", 20);
                    c.faults += 1;
                    let _ = std::panic::catch_unwind(|| {
                        wait_info(&t, &name, 5, |v| n(v, "hydration_errors") > before)
                    });
                    clear(&t, &format!("EE_src{i}"));
                }
            }
            1 => {
                for k in 0..3 {
                    let on = next() % 2 == 0;
                    ok(
                        &t,
                        "bdev_clone_set_hydration",
                        json!({"name": format!("c{k}"), "enabled": on,
                            "max_bandwidth_mb_sec": if k == 2 { 1 } else { 2 + next() % 8 }}),
                    );
                    c.toggles += 1;
                }
            }
            3 => {
                // Delete and recreate: resumes from its metadata.
                let name = format!("c{i}");
                let before = n(&t.clone_info(&name), "regions_committed");
                ok(&t, "bdev_clone_delete", json!({"name": name}));
                ok(&t, "bdev_clone_create", clone_params(i));
                let after = t.clone_info(&name);
                assert!(
                    n(&after, "regions_hydrated") >= before,
                    "recreate lost progress: {before} -> {after}"
                );
                let nqn = nqns
                    .iter()
                    .find(|q| q.contains(&format!("{name}-")))
                    .unwrap();
                ok(
                    &t,
                    "nvmf_subsystem_add_ns",
                    json!({"nqn": nqn, "namespace": {"bdev_name": name}}),
                );
                c.recreates += 1;
            }
            4 => {
                // Restart from the saved config.
                let saved = dir.join("saved.json");
                write_json(&saved, &t.plugin(&["save_config"]).unwrap());
                let committed: Vec<u64> = (0..3)
                    .map(|k| n(&t.clone_info(&format!("c{k}")), "regions_committed"))
                    .collect();
                t.stop();
                c.restarts += 1;
                t = Tgt::start(
                    &dir,
                    &format!("tgt{}", c.restarts),
                    &["-c", saved.to_str().unwrap()],
                );
                for (k, was) in committed.iter().enumerate() {
                    let info = t.clone_info(&format!("c{k}"));
                    assert!(
                        n(&info, "regions_hydrated") >= *was,
                        "restart lost progress: {info}"
                    );
                }
            }
            _ => {
                // 2: bad RPC calls, refused, the target stays up.
                // (A create of an existing clone over the same bases is
                // accepted: examine may have assembled it before a config's
                // create. Over other bases it is refused.)
                let mut taken = clone_params(i);
                taken["destination_bdev"] = json!(format!("dst{}", (i + 1) % 3));
                let bad = [
                    ("bdev_clone_create", taken),
                    (
                        "bdev_clone_create",
                        json!({"name": "x", "source_bdev": "src0",
                        "destination_bdev": format!("dst{i}"), "metadata_bdev": "meta9"}),
                    ),
                    (
                        "bdev_clone_set_hydration",
                        json!({"name": "c0", "hydration_threshold": 0}),
                    ),
                    ("bdev_clone_delete", json!({"name": "nope"})),
                    (
                        "bdev_clone_release_source",
                        json!({"name": format!("c{i}")}),
                    ),
                ];
                for (m, p) in bad {
                    let r = t.call(m, Some(p.clone()));
                    // release_source may succeed once a clone is hydrated;
                    // then recreate it as it was for the next rounds.
                    if m == "bdev_clone_release_source" && r.is_ok() {
                        continue;
                    }
                    assert!(r.is_err(), "{m} {p} succeeded");
                    c.bad_inputs += 1;
                }
                assert!(t.alive());
            }
        }
        eprintln!("round {}: {c:?}", c.rounds);
    }
    // Finish: hydrate all, write known data over c0 and c1, restart, check.
    for k in 0..3 {
        ok(
            &t,
            "bdev_clone_set_hydration",
            json!({"name": format!("c{k}"), "enabled": true, "max_bandwidth_mb_sec": 0}),
        );
    }
    for k in 0..3 {
        let info = wait_info(&t, &format!("c{k}"), 120, |v| {
            v["state"] == "hydrated" || v["state"] == "source_released"
        });
        assert_eq!(n(&info, "regions_hydrated"), n(&info, "regions_total"));
    }
    let mut finals = Vec::new();
    for (k, init) in inits.iter().enumerate().take(2) {
        let f = dir.join(format!("final{k}.img"));
        let data = pattern_file(&f, SIZE, 0xA0 + k as u8);
        init.write(0, &data).expect("final write");
        finals.push(data);
    }
    finals.push(srcs[2].clone());
    let saved = dir.join("saved.json");
    write_json(&saved, &t.plugin(&["save_config"]).unwrap());
    t.stop();
    c.restarts += 1;
    let t = Tgt::start(&dir, "tgt_final", &["-c", saved.to_str().unwrap()]);
    for (k, want) in finals.iter().enumerate() {
        let got = inits[k].read(0, SIZE / REGION).expect("final read");
        assert!(same(&got, want), "c{k} after the final restart");
        c.bytes_verified_compare += SIZE as u64;
    }
    let log = t.stop();
    assert!(!log.contains("panic"));
    for (k, want) in finals.iter().enumerate() {
        let dst = std::fs::read(dir.join(format!("dst{k}.img"))).unwrap();
        assert!(same(&dst, want), "dst{k} differs");
        c.bytes_verified_compare += SIZE as u64;
    }
    eprintln!(
        "SOAK: {} rounds in {:?}; faults injected {}, bad inputs tried {}, restarts {}, \
         deletes+recreates {}, hydration toggles {}, bytes verified: {} by bdevperf verify \
         + {} compared",
        c.rounds,
        start.elapsed(),
        c.faults,
        c.bad_inputs,
        c.restarts,
        c.recreates,
        c.toggles,
        c.bytes_verified_bdevperf,
        c.bytes_verified_compare
    );
}
