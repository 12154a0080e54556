//! bdev_clone in real SPDK processes, driven through JSON-RPC.
//! Run one at a time (`--test-threads=1`): each test starts SPDK apps that
//! busy-poll a core.

mod common;

use common::*;
use serde_json::{json, Value};

#[test]
fn lifecycle_through_the_plugin() {
    let dir = scratch("lifecycle");
    let t = Tgt::start(&dir, "tgt", &[]);
    malloc(&t, "src", 16, 512);
    malloc(&t, "dst", 16, 512);
    malloc(&t, "meta", 1, 512);
    let r = t.plugin(&[
        "bdev_clone_create",
        "-b",
        "c0",
        "-s",
        "src",
        "-d",
        "dst",
        "-m",
        "meta",
        "-r",
        "64",
        "--no-hydration",
    ]);
    assert_eq!(r.unwrap(), json!("c0"));
    assert!(claimed(&t, "src") && claimed(&t, "dst") && claimed(&t, "meta"));
    let info = t.plugin(&["bdev_clone_get_clones", "-b", "c0"]).unwrap()[0].clone();
    for key in [
        "regions_total",
        "regions_hydrated",
        "regions_hydrating",
        "percent",
        "rate_mb_sec",
        "eta_sec",
        "hydration_seconds",
        "state",
        "error",
        "source_bdev",
        "destination_bdev",
        "metadata_bdev",
        "region_size_kb",
        "destination_write_cache",
        "destination_flush_sent",
    ] {
        assert!(info.get(key).is_some(), "get_clones lacks {key}: {info}");
    }
    assert_eq!(info["state"], "paused");
    assert_eq!(info["hydration_seconds"], 0.0, "never hydrated yet");
    assert_eq!(info["regions_total"], 256);
    // bdev_get_bdevs shows the same object.
    let b = t
        .call("bdev_get_bdevs", Some(json!({"name": "c0"})))
        .unwrap();
    assert_eq!(b[0]["driver_specific"]["clone"]["regions_total"], 256);
    assert_eq!(b[0]["block_size"], 512);
    assert_eq!(b[0]["num_blocks"], 32768);
    // The source cannot be released before it is fully hydrated.
    let e = t
        .plugin(&["bdev_clone_release_source", "-b", "c0"])
        .unwrap_err();
    assert!(e.contains("not fully hydrated"), "{e}");
    t.plugin(&[
        "bdev_clone_set_hydration",
        "-b",
        "c0",
        "-e",
        "--hydration-threshold",
        "16",
    ])
    .unwrap();
    let info = t.wait_state("c0", "hydrated", 60);
    assert_eq!(info["regions_hydrated"], 256);
    assert_eq!(info["hydration_threshold"], 16);
    let secs = info["hydration_seconds"].as_f64().unwrap();
    assert!(secs > 0.0 && secs < 60.0, "hydration_seconds {secs}");
    t.plugin(&["bdev_clone_release_source", "c0"]).unwrap();
    assert_eq!(t.clone_info("c0")["state"], "source_released");
    assert!(!claimed(&t, "src"), "the released source is still claimed");
    // The source can go away; the clone keeps working.
    t.call("bdev_malloc_delete", Some(json!({"name": "src"})))
        .unwrap();
    assert_eq!(t.clone_info("c0")["state"], "source_released");
    t.plugin(&["bdev_clone_delete", "c0"]).unwrap();
    assert!(!claimed(&t, "dst") && !claimed(&t, "meta"));
    let e = t.plugin(&["bdev_clone_delete", "c0"]).unwrap_err();
    assert!(e.contains("no clone named"), "{e}");
    assert!(t.alive());
    t.stop();
}

/// Every bad call gets a JSON-RPC error with a message and changes nothing.
#[test]
fn bad_rpc_calls_are_refused() {
    let dir = scratch("badrpc");
    let t = Tgt::start(&dir, "tgt", &[]);
    malloc(&t, "src", 8, 512);
    malloc(&t, "dst", 8, 512);
    malloc(&t, "small", 4, 512);
    malloc(&t, "meta", 1, 512);
    malloc(&t, "tiny", 1, 512); // metadata for a second clone of src and dst (refused: claimed)
    malloc(&t, "big4k", 8, 4096);
    t.call(
        "bdev_null_create",
        Some(json!({"name": "null0", "num_blocks": 16384, "block_size": 512})),
    )
    .unwrap();
    let base = json!({"name": "c", "source_bdev": "src", "destination_bdev": "dst", "metadata_bdev": "meta"});
    let with = |k: &str, v: Value| {
        let mut p = base.clone();
        p[k] = v;
        p
    };
    let without = |k: &str| {
        let mut p = base.clone();
        p.as_object_mut().unwrap().remove(k);
        p
    };
    let cases: Vec<(&str, Option<Value>, i64, &str)> = vec![
        ("bdev_clone_create", None, -22, "name"),
        ("bdev_clone_create", Some(without("name")), -22, "name"),
        (
            "bdev_clone_create",
            Some(without("source_bdev")),
            -22,
            "source_bdev",
        ),
        (
            "bdev_clone_create",
            Some(without("metadata_bdev")),
            -22,
            "metadata_bdev",
        ),
        (
            "bdev_clone_create",
            Some(with("bogus", json!(1))),
            -22,
            "bogus",
        ),
        (
            "bdev_clone_create",
            Some(with("region_size_kb", json!("64"))),
            -22,
            "region_size_kb",
        ),
        (
            "bdev_clone_create",
            Some(with("region_size_kb", json!(0))),
            -22,
            "region_size_kb",
        ),
        (
            "bdev_clone_create",
            Some(with("region_size_kb", json!(48))),
            -22,
            "power of two",
        ),
        (
            "bdev_clone_create",
            Some(with("region_size_kb", json!(1 << 20))),
            -22,
            "region_size_kb",
        ),
        (
            // A region whose copy could never get a buffer (issue 12).
            "bdev_clone_create",
            Some(with("region_size_kb", json!(65536))),
            -22,
            "needs 65536 KiB copy buffers",
        ),
        (
            "bdev_clone_create",
            Some(with("region_size_kb", json!(-4))),
            -22,
            "region_size_kb",
        ),
        (
            "bdev_clone_create",
            Some(with("region_size_kb", json!(1u64 << 40))),
            -22,
            "region_size_kb",
        ),
        (
            "bdev_clone_create",
            Some(with("hydration_threshold", json!(0))),
            -22,
            "hydration_threshold",
        ),
        (
            "bdev_clone_create",
            Some(with("hydration_batch_size", json!(100000))),
            -22,
            "hydration_batch_size",
        ),
        (
            "bdev_clone_create",
            Some(with("commit_interval_ms", json!(0))),
            -22,
            "commit_interval_ms",
        ),
        (
            "bdev_clone_create",
            Some(with("hydration_order", json!("hot-first"))),
            -22,
            "hydration_order",
        ),
        (
            "bdev_clone_create",
            Some(with("uuid", json!("not-a-uuid"))),
            -22,
            "uuid",
        ),
        // Fresh metadata says nothing of a release: the source is needed.
        (
            "bdev_clone_create",
            Some(with("source_released", json!(true))),
            -22,
            "does not say it was released",
        ),
        (
            "bdev_clone_create",
            Some({
                let mut p = with("source_released", json!(true));
                p["format"] = json!(true);
                p
            }),
            -22,
            "format needs the source",
        ),
        (
            "bdev_clone_create",
            Some(with("no_hydration", json!("yes"))),
            -22,
            "no_hydration",
        ),
        (
            "bdev_clone_create",
            Some(with("source_bdev", json!("nope"))),
            -19,
            "does not exist",
        ),
        (
            "bdev_clone_create",
            Some(with("destination_bdev", json!("src"))),
            -22,
            "must differ",
        ),
        (
            "bdev_clone_create",
            Some(with("name", json!("small"))),
            -17,
            "already exists",
        ),
        (
            "bdev_clone_create",
            Some(with("name", json!("src"))),
            -22,
            "own base bdev",
        ),
        (
            "bdev_clone_create",
            Some(with("name", json!(""))),
            -22,
            "name",
        ),
        (
            "bdev_clone_create",
            Some(with("name", json!("ünï\u{1F600}/x"))),
            -22,
            "must differ",
        ),
        (
            "bdev_clone_create",
            Some(with("destination_bdev", json!("small"))),
            -22,
            "smaller",
        ),
        (
            "bdev_clone_create",
            Some(with("destination_bdev", json!("big4k"))),
            -22,
            "block size",
        ),
        ("bdev_clone_create", Some(json!([1, 2])), -22, "object"),
        (
            "bdev_clone_delete",
            Some(json!({"name": "nope"})),
            -19,
            "no clone",
        ),
        ("bdev_clone_delete", Some(json!({})), -22, "name"),
        (
            "bdev_clone_get_clones",
            Some(json!({"name": "nope"})),
            -19,
            "no clone",
        ),
        (
            "bdev_clone_set_hydration",
            Some(json!({"name": "nope", "enabled": true})),
            -19,
            "no clone",
        ),
        (
            "bdev_clone_set_hydration",
            Some(json!({"name": "nope", "hydration_threshold": -1})),
            -22,
            "hydration_threshold",
        ),
        (
            "bdev_clone_release_source",
            Some(json!({"name": "nope"})),
            -19,
            "no clone",
        ),
    ];
    let mut tried = 0;
    for (method, params, code, needle) in &cases {
        let mut params = params.clone();
        if let Some(p) = params.as_mut() {
            // The unicode case reuses "src" as destination: refused for that.
            if p.get("name") == Some(&json!("ünï\u{1F600}/x")) {
                p["destination_bdev"] = json!("src");
            }
        }
        match t.call(method, params.clone()) {
            Ok(v) => panic!("{method} {params:?} succeeded: {v}"),
            Err((c, msg)) => {
                assert_eq!(c, *code, "{method} {params:?}: {msg}");
                assert!(
                    msg.contains(needle),
                    "{method} {params:?}: message '{msg}' lacks '{needle}'"
                );
            }
        }
        tried += 1;
        assert!(t.alive());
    }
    // Nothing was created or claimed by any of them.
    assert_eq!(t.call("bdev_clone_get_clones", None).unwrap(), json!([]));
    for b in ["src", "dst", "meta", "small"] {
        assert!(!claimed(&t, b), "{b} left claimed");
    }
    // A bdev claimed by a clone cannot serve another; the metadata of one
    // clone is refused for a clone of another source.
    t.call("bdev_clone_create", Some(base.clone())).unwrap();
    let e = t.call("bdev_clone_create", Some(json!({"name": "c2", "source_bdev": "src", "destination_bdev": "dst", "metadata_bdev": "tiny"}))).unwrap_err();
    assert_eq!(e.0, -16, "{e:?}");
    t.call("bdev_clone_delete", Some(json!({"name": "c"})))
        .unwrap();
    let e = t.call("bdev_clone_create", Some(json!({"name": "c3", "source_bdev": "null0", "destination_bdev": "dst", "metadata_bdev": "meta"}))).unwrap_err();
    assert!(e.1.contains("format"), "{e:?}");
    // Metadata too small: -ENOSPC naming both sizes, and nothing left behind.
    // 8 MiB of 4 KiB regions is 2,048 regions, one 4 KiB bitmap page: the
    // metadata needs two superblock slots and two page slots of 4 KiB,
    // 16,384 bytes. "meta12k" has room for the superblocks, not the pages;
    // "meta4k" not even for both superblock slots (8,192 bytes).
    for (meta, blocks, need) in [("meta12k", 24u64, 16384u64), ("meta4k", 8, 8192)] {
        t.call(
            "bdev_malloc_create",
            Some(json!({"name": meta, "num_blocks": blocks, "block_size": 512})),
        )
        .unwrap();
        let params = json!({"name": "c4", "source_bdev": "src", "destination_bdev": "dst",
            "metadata_bdev": meta, "region_size_kb": 4, "format": true});
        let (code, msg) = match t.call("bdev_clone_create", Some(params)) {
            Ok(v) => panic!(
                "a clone on the {} bytes of {meta} was created: {v}",
                blocks * 512
            ),
            Err(e) => e,
        };
        assert_eq!(code, -28, "-ENOSPC for {meta}: {msg}");
        let have = blocks * 512;
        assert!(
            msg.contains("metadata device too small")
                && msg.contains(&format!("needs {need} bytes, has {have}")),
            "{meta}: message '{msg}' does not say the metadata is too small with both sizes"
        );
        assert_eq!(t.call("bdev_clone_get_clones", None).unwrap(), json!([]));
        let e = t
            .call("bdev_get_bdevs", Some(json!({"name": "c4"})))
            .unwrap_err();
        assert_eq!(e.0, -19, "a bdev c4 exists after the refusal: {e:?}");
        for b in ["src", "dst", meta] {
            assert!(!claimed(&t, b), "{b} left claimed by the refused create");
        }
        assert!(t.alive());
    }
    // The same source and destination then serve a clone on enough metadata.
    let c4 = json!({"name": "c4", "source_bdev": "src", "destination_bdev": "dst",
        "metadata_bdev": "meta", "region_size_kb": 4, "format": true});
    assert_eq!(t.call("bdev_clone_create", Some(c4)).unwrap(), json!("c4"));
    assert!(claimed(&t, "src") && claimed(&t, "dst") && claimed(&t, "meta"));
    assert_eq!(t.clone_info("c4")["regions_total"], 2048);
    t.call("bdev_clone_delete", Some(json!({"name": "c4"})))
        .unwrap();
    // Metadata of another destination: the open fails after reading it (the
    // failure is answered from a completion, and the clone freed there).
    let other = json!({"name": "c5", "source_bdev": "src", "destination_bdev": "null0",
        "metadata_bdev": "meta"});
    let (code, msg) = t.call("bdev_clone_create", Some(other)).unwrap_err();
    assert_eq!(code, -22, "{msg}");
    assert!(
        msg.contains("metadata belongs to destination 'dst', not 'null0'"),
        "{msg}"
    );
    // Another clone's UUID asked for over c4's metadata (issue 13: identity).
    let other = json!({"name": "c5", "source_bdev": "src", "destination_bdev": "dst",
        "metadata_bdev": "meta", "uuid": "01234567-89ab-cdef-0123-456789abcdef"});
    let (code, msg) = t.call("bdev_clone_create", Some(other)).unwrap_err();
    assert_eq!(code, -22, "{msg}");
    assert!(
        msg.contains("not 01234567-89ab-cdef-0123-456789abcdef"),
        "{msg}"
    );
    assert!(t.alive());
    assert!(!claimed(&t, "null0") && !claimed(&t, "dst") && !claimed(&t, "meta"));
    eprintln!("{tried} bad calls refused");
    assert!(tried >= 25);
    t.stop();
}

/// Reads through an unhydrated clone return the source; writes of every
/// shape read back; after hydration the destination holds the image.
#[test]
fn data_through_the_clone() {
    let dir = scratch("data");
    let mib = 8usize;
    let src = pattern_file(&dir.join("src.img"), mib << 20, 0x5A);
    pattern_file(&dir.join("dst.img"), mib << 20, 0xEE); // garbage to overwrite
    std::fs::write(dir.join("meta.img"), vec![0u8; 1 << 20]).unwrap();
    let clone = json!({"method": "bdev_clone_create", "params": {"name": "c0", "source_bdev": "src",
        "destination_bdev": "dst", "metadata_bdev": "meta", "region_size_kb": 64, "no_hydration": true}});
    let conf = dir.join("conf.json");
    write_json(&conf, &config(&dir, vec![clone]));
    // 1. An unhydrated clone reads as its source.
    let out1 = dir.join("out1");
    spdk_dd(
        &conf,
        &[
            "--ib",
            "c0",
            "--of",
            out1.to_str().unwrap(),
            "--bs",
            "65536",
        ],
    );
    assert!(
        std::fs::read(&out1).unwrap() == src,
        "unhydrated clone does not read as the source"
    );
    // 2. Writes: inside one region, a whole region, across two regions.
    let mut expect = src.clone();
    let patches: [(usize, usize, u8, &str); 3] = [
        (3, 4096, 0x11, "4096"),
        (5, 65536, 0x22, "65536"),
        (31, 4096, 0x33, "4096"),
    ];
    for (i, (seek, bs, tag, bs_s)) in patches.iter().enumerate() {
        let count = if i == 2 { 2 } else { 1 };
        let f = dir.join(format!("w{i}"));
        let data = pattern_file(&f, bs * count, *tag);
        spdk_dd(
            &conf,
            &[
                "--if",
                f.to_str().unwrap(),
                "--ob",
                "c0",
                "--bs",
                bs_s,
                "--seek",
                &seek.to_string(),
                "--count",
                &count.to_string(),
            ],
        );
        expect[seek * bs..seek * bs + bs * count].copy_from_slice(&data);
    }
    // Each spdk_dd run reopened the clone from its metadata: the writes survived.
    let out2 = dir.join("out2");
    spdk_dd(
        &conf,
        &[
            "--ib",
            "c0",
            "--of",
            out2.to_str().unwrap(),
            "--bs",
            "65536",
        ],
    );
    assert!(
        std::fs::read(&out2).unwrap() == expect,
        "written data does not read back"
    );
    // 3. Hydrate in the target app, stop it, and read the destination itself.
    let t = Tgt::start(&dir, "tgt", &["-c", conf.to_str().unwrap()]);
    let info = t.clone_info("c0");
    assert_eq!(
        info["regions_hydrated"], 4,
        "the writes hydrated regions 0, 1, 2 and 5: {info}"
    );
    t.plugin(&["bdev_clone_set_hydration", "-b", "c0", "-e"])
        .unwrap();
    t.wait_state("c0", "hydrated", 120);
    t.stop();
    assert!(
        std::fs::read(dir.join("dst.img")).unwrap() == expect,
        "destination differs from the expected image"
    );
}

/// save_config, stop, restart with the config: the clone resumes and finishes.
#[test]
fn save_config_and_restart_resumes() {
    let dir = scratch("restart");
    let src = pattern_file(&dir.join("src.img"), 16 << 20, 0x42);
    std::fs::write(dir.join("dst.img"), vec![0u8; 16 << 20]).unwrap();
    std::fs::write(dir.join("meta.img"), vec![0u8; 1 << 20]).unwrap();
    let conf = dir.join("base.json");
    write_json(&conf, &config(&dir, vec![]));
    let t = Tgt::start(&dir, "tgt", &["-c", conf.to_str().unwrap()]);
    t.plugin(&[
        "bdev_clone_create",
        "-b",
        "c0",
        "-s",
        "src",
        "-d",
        "dst",
        "-m",
        "meta",
        "-r",
        "64",
        "--max-bandwidth-mb-sec",
        "4",
        "--commit-interval-ms",
        "100",
    ])
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let before = t.clone_info("c0");
    let saved = t.plugin(&["save_config"]).unwrap();
    let saved_path = dir.join("saved.json");
    write_json(&saved_path, &saved);
    t.stop();
    let committed = before["regions_committed"].as_u64().unwrap();
    assert!(committed > 0 && committed < 256, "{before}");
    let t = Tgt::start(&dir, "tgt2", &["-c", saved_path.to_str().unwrap()]);
    let after = t.clone_info("c0");
    assert!(
        after["regions_hydrated"].as_u64().unwrap() >= committed,
        "lost progress: {before} -> {after}"
    );
    assert_eq!(
        after["max_bandwidth_mb_sec"], 4,
        "settings not restored: {after}"
    );
    t.plugin(&[
        "bdev_clone_set_hydration",
        "-b",
        "c0",
        "--max-bandwidth-mb-sec",
        "0",
    ])
    .unwrap();
    t.wait_state("c0", "hydrated", 120);
    // Released, the source can go: a config saved without it restarts the
    // clone, which serves the source's data from the destination alone.
    t.plugin(&["bdev_clone_release_source", "c0"]).unwrap();
    t.call("bdev_aio_delete", Some(json!({"name": "src"})))
        .unwrap();
    let saved = t.plugin(&["save_config"]).unwrap();
    let create = saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["config"].as_array().cloned().unwrap_or_default())
        .find(|c| c["method"] == "bdev_clone_create")
        .expect("bdev_clone_create in the saved config");
    assert_eq!(create["params"]["source_released"], true, "{create}");
    write_json(&saved_path, &saved);
    t.stop();
    assert!(std::fs::read(dir.join("dst.img")).unwrap() == src);
    std::fs::remove_file(dir.join("src.img")).unwrap();
    let t = Tgt::start(&dir, "tgt3", &["-c", saved_path.to_str().unwrap()]);
    assert_eq!(t.clone_info("c0")["state"], "source_released");
    t.stop();
    let out = dir.join("out.img");
    spdk_dd(
        &saved_path,
        &[
            "--ib",
            "c0",
            "--of",
            out.to_str().unwrap(),
            "--bs",
            "1048576",
        ],
    );
    assert!(
        std::fs::read(&out).unwrap() == src,
        "data after restart without the source"
    );
}

/// SPDK's bdevperf `verify` workload over a clone while it hydrates, with the
/// module preloaded into the stock bdevperf.
#[test]
fn bdevperf_verify_while_hydrating() {
    let Some(bdevperf) = spdk_tool("bdevperf") else {
        panic!("bdevperf is not in PATH: install it with SPDK (make install skips build/examples/bdevperf)");
    };
    let dir = scratch("bdevperf");
    pattern_file(&dir.join("src.img"), 64 << 20, 0x77);
    std::fs::write(dir.join("dst.img"), vec![0u8; 64 << 20]).unwrap();
    std::fs::write(dir.join("meta.img"), vec![0u8; 1 << 20]).unwrap();
    let clone = json!({"method": "bdev_clone_create", "params": {"name": "c0", "source_bdev": "src",
        "destination_bdev": "dst", "metadata_bdev": "meta", "region_size_kb": 64, "max_bandwidth_mb_sec": 20}});
    let conf = dir.join("conf.json");
    write_json(&conf, &config(&dir, vec![clone]));
    let out = std::process::Command::new(bdevperf)
        .env("LD_PRELOAD", preload_lib())
        .args(APP_ARGS)
        .args([
            "--json",
            conf.to_str().unwrap(),
            "-q",
            "32",
            "-o",
            "4096",
            "-w",
            "verify",
            "-t",
            "5",
            "-T",
            "c0",
        ])
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "bdevperf verify failed:\n{text}");
    assert!(text.contains("c0"), "{text}");
    assert!(
        !text.contains("miscompare") && !text.contains("Miscompare"),
        "{text}"
    );
}

/// A destination reached over NVMe/TCP with a volatile write cache is refused
/// unless its flushes are really sent (`--enable-flush`).
#[test]
fn nvme_destination_without_enable_flush_is_refused() {
    let dir = scratch("nvmeflush");
    let port = (20000 + std::process::id() % 20000).to_string();
    let a = Tgt::start(&dir, "a", &[]);
    malloc(&a, "m0", 16, 512);
    a.call("nvmf_create_transport", Some(json!({"trtype": "TCP"})))
        .unwrap();
    let nqn = "nqn.2026-11.io.bdev-clone:dst";
    a.call(
        "nvmf_create_subsystem",
        Some(json!({"nqn": nqn, "allow_any_host": true})),
    )
    .unwrap();
    a.call(
        "nvmf_subsystem_add_ns",
        Some(json!({"nqn": nqn, "namespace": {"bdev_name": "m0"}})),
    )
    .unwrap();
    a.call(
        "nvmf_subsystem_add_listener",
        Some(json!({"nqn": nqn, "listen_address":
        {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port}})),
    )
    .unwrap();
    let attach = json!({"name": "Nvme0", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port, "subnqn": nqn});
    let create_on = |t: &Tgt, dst: &str, extra: &[&str]| {
        let mut args = vec![
            "bdev_clone_create",
            "-b",
            "c0",
            "-s",
            "src",
            "-d",
            dst,
            "-m",
            "meta",
        ];
        args.extend_from_slice(extra);
        t.plugin(&args)
    };
    let create = |t: &Tgt, extra: &[&str]| create_on(t, "Nvme0n1", extra);
    // The stacks operators use: passthru and lvol on the NVMe namespace.
    // Neither reports the NVMe's cache as its own (the lvol reports none at
    // all): the check follows them down.
    let stacks = |t: &Tgt, flushed: bool| {
        t.call(
            "bdev_passthru_create",
            Some(json!({"base_bdev_name": "Nvme0n1", "name": "pt0"})),
        )
        .unwrap();
        let r = create_on(t, "pt0", &[]);
        if flushed {
            r.unwrap();
            let info = t.clone_info("c0");
            assert_eq!(
                info["destination_flush_path"],
                json!(["pt0", "Nvme0n1"]),
                "{info}"
            );
            assert_eq!(info["destination_flush_check"], "sent", "{info}");
            t.plugin(&["bdev_clone_delete", "c0"]).unwrap();
        } else {
            let e = r.unwrap_err();
            assert!(
                e.contains("--enable-flush"),
                "passthru on NVMe accepted: {e}"
            );
        }
        t.call("bdev_passthru_delete", Some(json!({"name": "pt0"})))
            .unwrap();
        let lvs = t
            .call(
                "bdev_lvol_create_lvstore",
                Some(json!({"bdev_name": "Nvme0n1", "lvs_name": "lvs0", "cluster_sz": 1048576})),
            )
            .unwrap();
        t.call(
            "bdev_lvol_create",
            Some(json!({"lvol_name": "lvol0", "size_in_mib": 8, "lvs_name": "lvs0"})),
        )
        .unwrap();
        // SPDK's lvol takes no flushes at all (v26.05): over a device with a
        // volatile cache it can never be a safe destination, flushes
        // enabled or not. Accepted only when told, and then shown.
        let e = create_on(t, "lvs0/lvol0", &["--format"]).unwrap_err();
        let why = if flushed {
            "dropped at Nvme0n1: a bdev above it takes no flushes"
        } else {
            "dropped at Nvme0n1: the NVMe bdev completes flushes without sending them"
        };
        assert!(e.contains(why), "lvol on NVMe accepted: {e}");
        create_on(
            t,
            "lvs0/lvol0",
            &["--format", "--allow-unflushed-destination"],
        )
        .unwrap();
        let info = t.clone_info("c0");
        let path = info["destination_flush_path"].as_array().unwrap().clone();
        assert_eq!(path.len(), 2, "{info}");
        assert_eq!(path[1], "Nvme0n1", "{info}");
        assert_eq!(info["destination_flush_sent"], false, "{info}");
        t.plugin(&["bdev_clone_delete", "c0"]).unwrap();
        t.call("bdev_lvol_delete_lvstore", Some(json!({"uuid": lvs})))
            .unwrap();
    };
    // Without --enable-flush: refused, then accepted only when told.
    let b = Tgt::start(&dir, "b", &[]);
    malloc(&b, "src", 8, 512);
    malloc(&b, "meta", 1, 512);
    b.call("bdev_nvme_attach_controller", Some(attach.clone()))
        .unwrap();
    stacks(&b, false);
    let e = create(&b, &[]).unwrap_err();
    assert!(
        e.contains("--enable-flush") && e.contains("allow_unflushed_destination"),
        "{e}"
    );
    assert!(!claimed(&b, "Nvme0n1"));
    // (The lvol clone above formatted the metadata for another destination.)
    create(&b, &["--allow-unflushed-destination", "--format"]).unwrap();
    let info = b.clone_info("c0");
    assert_eq!(info["destination_write_cache"], true);
    assert_eq!(info["destination_flush_sent"], false);
    b.stop();
    // With --enable-flush set before attaching: accepted, flushes sent.
    let c = Tgt::start(&dir, "c", &[]);
    malloc(&c, "src", 8, 512);
    malloc(&c, "meta", 1, 512);
    c.call("bdev_nvme_set_options", Some(json!({"enable_flush": true})))
        .unwrap();
    c.call("bdev_nvme_attach_controller", Some(attach)).unwrap();
    stacks(&c, true);
    create(&c, &["--format"]).unwrap();
    let info = c.clone_info("c0");
    assert_eq!(info["destination_flush_sent"], true, "{info}");
    c.wait_state("c0", "hydrated", 120);
    c.stop();
    a.stop();
}

/// Hot-removing a base bdev under a clone (issue 13, "every base event"):
/// the destination or the metadata unregisters the clone cleanly; the source
/// of a clone not fully hydrated leaves it serving what is hydrated; the
/// source of a hydrated clone is released and the clone carries on.
#[test]
fn hot_remove_of_a_base_bdev() {
    let dir = scratch("hotremove");
    let wait = |what: &str, mut done: Box<dyn FnMut() -> bool + '_>| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    for victim in ["src", "dst", "meta", "src of a hydrated clone"] {
        let t = Tgt::start_preloaded(&dir, victim.split(' ').next().unwrap(), &[]);
        malloc(&t, "src", 64, 512);
        malloc(&t, "dst", 64, 512);
        malloc(&t, "meta", 1, 512);
        let hydrated = victim.contains("hydrated");
        let rate = if hydrated { 0 } else { 16 };
        t.call(
            "bdev_clone_create",
            Some(
                json!({"name": "c0", "source_bdev": "src", "destination_bdev": "dst",
            "metadata_bdev": "meta", "max_bandwidth_mb_sec": rate}),
            ),
        )
        .unwrap();
        if hydrated {
            t.wait_state("c0", "hydrated", 60);
        } else {
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        let name = victim.split(' ').next().unwrap();
        t.call("bdev_malloc_delete", Some(json!({"name": name})))
            .unwrap();
        if name == "src" {
            // The clone carries on; the source is no longer held.
            let want = if hydrated {
                "source_released"
            } else {
                "paused"
            };
            wait(
                "the clone did not carry on",
                Box::new(|| t.clone_info("c0")["state"] == want),
            );
            let info = t.clone_info("c0");
            if !hydrated {
                let error = info["error"].as_str().unwrap_or_default();
                assert!(error.contains("source device was removed"), "{info}");
                assert!(info["percent"].as_f64().unwrap() < 100.0, "{info}");
                // Hydration asked for again: it cannot, and says so.
                t.call(
                    "bdev_clone_set_hydration",
                    Some(json!({"name": "c0", "enabled": true})),
                )
                .unwrap();
                assert_eq!(t.clone_info("c0")["state"], "paused");
            }
            assert!(claimed(&t, "dst") && claimed(&t, "meta"));
            t.call("bdev_clone_delete", Some(json!({"name": "c0"})))
                .unwrap();
        } else {
            wait(
                "clone still there",
                Box::new(|| t.call("bdev_clone_get_clones", None).unwrap() == json!([])),
            );
        }
        for b in ["src", "dst", "meta"] {
            if b != name {
                assert!(!claimed(&t, b), "{b} still claimed after removing {victim}");
            }
        }
        assert!(t.alive());
        let log = t.stop();
        assert!(
            log.contains(&format!(
                "the {} bdev was removed",
                match name {
                    "src" => "source",
                    "dst" => "destination",
                    _ => "metadata",
                }
            )),
            "{log}"
        );
    }
}

/// The order on the wire, from SPDK's own bdev tracepoints: every metadata
/// commit is preceded by its own completed flush of the destination, issued
/// after the copies it commits completed.
#[test]
fn commit_order_on_the_wire() {
    let Some(trace_tool) = spdk_tool("spdk_trace") else {
        panic!("spdk_trace is not in PATH (it comes with SPDK's install)");
    };
    let dir = scratch("wire");
    let t = Tgt::start(&dir, "tgt", &["-e", "bdev"]);
    malloc(&t, "src", 8, 512);
    malloc(&t, "dst", 8, 512);
    malloc(&t, "meta", 1, 512);
    t.plugin(&[
        "bdev_clone_create",
        "-b",
        "c0",
        "-s",
        "src",
        "-d",
        "dst",
        "-m",
        "meta",
        "-r",
        "64",
        "--commit-interval-ms",
        "5",
        "--hydration-threshold",
        "4",
        "--hydration-batch-size",
        "2",
        "--max-bandwidth-mb-sec",
        "20",
    ])
    .unwrap();
    let info = t.wait_state("c0", "hydrated", 60);
    // The commit that says so lands within a commit interval.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(t.clone_info("c0")["regions_committed"], 128, "{info}");
    let pid = t.pid().to_string();
    let out = std::process::Command::new(trace_tool)
        .args(["-s", "bdev_clone_tgt", "-p", &pid, "-j"])
        .output()
        .unwrap();
    t.stop();
    let trace: Value = serde_json::from_slice(&out.stdout).expect("spdk_trace -j output");
    // (tsc, start?, bdev, io type, offset, object id)
    let mut ev: Vec<(u64, bool, String, u64, u64, String)> = Vec::new();
    let mut types = std::collections::HashMap::new();
    for e in trace["entries"].as_array().unwrap() {
        let tp = e["tpoint"].as_u64().unwrap();
        if tp != 192 && tp != 193 {
            continue;
        }
        let obj = e["object"]["id"].as_str().unwrap().to_string();
        let owner = e["owner"]
            .as_str()
            .unwrap()
            .trim_start_matches("bdev_")
            .to_string();
        let start = tp == 192;
        let (ty, off) = if start {
            let v = (
                e["args"][0].as_u64().unwrap(),
                e["args"][2].as_u64().unwrap(),
            );
            types.insert(obj.clone(), v);
            v
        } else {
            types.get(&obj).copied().unwrap_or((0, 0))
        };
        ev.push((e["tsc"].as_u64().unwrap(), start, owner, ty, off, obj));
    }
    ev.sort_by_key(|e| e.0);
    const WRITE: u64 = 2;
    const FLUSH: u64 = 4;
    // Superblock slots are metadata blocks 0 and 8 (512-byte blocks); pages follow.
    let is_superblock = |off: u64| off < 16;
    let (mut commits, mut copies_committed) = (0, 0);
    let mut last_dst_write_done = 0u64; // when the latest copy completed
    let mut covered_up_to = 0u64; // copies completed before the last completed dst flush began
    let mut fresh_flush = false; // a dst flush completed since the last commit ended
    let mut flush_start: std::collections::HashMap<String, u64> = Default::default();
    let (mut in_commit, mut sb_written) = (false, false);
    for (tsc, start, bdev, ty, off, obj) in &ev {
        match (bdev.as_str(), *ty, *start) {
            ("dst", WRITE, false) => last_dst_write_done = *tsc,
            ("dst", FLUSH, true) => {
                flush_start.insert(obj.clone(), last_dst_write_done);
            }
            ("dst", FLUSH, false) => {
                covered_up_to = flush_start[obj];
                fresh_flush = true;
            }
            ("meta", WRITE, true) if last_dst_write_done > 0 => {
                if !in_commit {
                    // The first metadata write of a commit: its own destination
                    // flush, begun after the copies it names, has completed.
                    assert!(
                        fresh_flush,
                        "a commit wrote metadata without a destination flush before it"
                    );
                    commits += 1;
                    in_commit = true;
                    fresh_flush = false;
                    copies_committed = covered_up_to;
                }
                sb_written |= is_superblock(*off);
            }
            ("meta", FLUSH, false) if in_commit && sb_written => {
                in_commit = false; // superblock written and flushed: the commit ended
                sb_written = false;
            }
            _ => {}
        }
    }
    assert!(commits >= 3, "expected several commits, saw {commits}");
    // The last commit covered the last copy.
    assert!(
        copies_committed >= last_dst_write_done,
        "the last copy was never followed by a destination flush and a commit"
    );
    eprintln!("{commits} commits, each after its own destination flush");
}

/// Every I/O type the clone reports as supported works through SPDK's bdev
/// layer: bdevperf's unmap, write_zeroes, flush and reset workloads, then a
/// verify pass over what they left.
#[test]
fn every_supported_io_type_works() {
    let Some(bdevperf) = spdk_tool("bdevperf") else {
        panic!("bdevperf is not in PATH: install it with SPDK (make install skips build/examples/bdevperf)");
    };
    let dir = scratch("iotypes");
    pattern_file(&dir.join("src.img"), 32 << 20, 0x31);
    std::fs::write(dir.join("dst.img"), vec![0u8; 32 << 20]).unwrap();
    std::fs::write(dir.join("meta.img"), vec![0u8; 1 << 20]).unwrap();
    let clone = json!({"method": "bdev_clone_create", "params": {"name": "c0", "source_bdev": "src",
        "destination_bdev": "dst", "metadata_bdev": "meta", "region_size_kb": 64}});
    let conf = dir.join("conf.json");
    write_json(&conf, &config(&dir, vec![clone]));
    for workload in ["unmap", "write_zeroes", "flush", "reset", "verify"] {
        let out = std::process::Command::new(&bdevperf)
            .env("LD_PRELOAD", preload_lib())
            .args(APP_ARGS)
            .args([
                "--json",
                conf.to_str().unwrap(),
                "-q",
                "8",
                "-o",
                "65536",
                "-w",
                workload,
                "-t",
                "1",
                "-T",
                "c0",
            ])
            .output()
            .unwrap();
        let text = output_text(&out);
        assert!(out.status.success(), "bdevperf {workload} failed:\n{text}");
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("c0 "))
            .unwrap_or_else(|| panic!("{text}"));
        // runtime, IOPS, MiB/s, Fail/s, ...: I/O was done and none failed.
        let cols: Vec<f64> = line
            .split(':')
            .nth(1)
            .unwrap()
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .collect();
        assert!(
            cols[1] > 0.0 && cols[3] == 0.0,
            "bdevperf {workload}: {line}"
        );
    }
}

/// An idle clone has no poller; enabling hydration through the RPC must give
/// it one again (it stayed `hydrating` with nothing copied, forever).
#[test]
fn set_hydration_wakes_an_idle_clone() {
    let dir = scratch("wake");
    let t = Tgt::start(&dir, "tgt", &[]);
    malloc(&t, "src", 16, 512);
    malloc(&t, "dst", 16, 512);
    malloc(&t, "meta", 1, 512);
    t.call(
        "bdev_clone_create",
        Some(
            json!({"name": "c0", "source_bdev": "src", "destination_bdev": "dst",
                    "metadata_bdev": "meta", "no_hydration": true, "commit_interval_ms": 100}),
        ),
    )
    .unwrap();
    // Past the first commit: nothing left to do, so no poller.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(t.clone_info("c0")["state"], "paused");
    t.call(
        "bdev_clone_set_hydration",
        Some(json!({"name": "c0", "enabled": true})),
    )
    .unwrap();
    let info = t.wait_state("c0", "hydrated", 30);
    assert_eq!(info["regions_hydrated"], 256, "{info}");
    t.stop();
}

/// hydration_order and commit_interval_ms through create, set_hydration,
/// get_clones and save_config; the counters of user reads by where they
/// were served; hot-first copies what bdevperf reads.
#[test]
fn hydration_order_and_read_counters() {
    let dir = scratch("hotfirst");
    // bdevperf with the module preloaded: it reads the clone when told.
    let t = Tgt::start_preloaded_with(
        "bdevperf",
        &dir,
        "perf",
        &preload_lib(),
        &[],
        &[
            "-z", "-T", "c0", "-q", "8", "-o", "4096", "-w", "randread", "-t", "1",
        ],
    );
    malloc(&t, "src", 16, 512);
    malloc(&t, "dst", 16, 512);
    malloc(&t, "meta", 1, 512);
    t.plugin(&[
        "bdev_clone_create",
        "-b",
        "c0",
        "-s",
        "src",
        "-d",
        "dst",
        "-m",
        "meta",
        "--no-hydration",
        "--hydration-order",
        "sequential",
        "--commit-interval-ms",
        "100",
    ])
    .unwrap();
    let info = t.clone_info("c0");
    assert_eq!(info["hydration_order"], "sequential", "{info}");
    assert_eq!(info["commit_interval_ms"], 100, "{info}");
    // Only the bdev layer's examine has read the new clone (GPT probes).
    let examine = info["user_reads_from_source"].as_u64().unwrap();
    assert!(examine < 16, "{info}");
    assert_eq!(info["user_reads_from_destination"], 0, "{info}");
    let perform = || {
        t.call("perform_tests", None)
            .unwrap_or_else(|e| panic!("perform_tests: {e:?}\n{}", t.log_text()));
    };
    // Nothing hydrated: every read from the source.
    perform();
    let info = t.clone_info("c0");
    let from_source = info["user_reads_from_source"].as_u64().unwrap();
    assert!(from_source > examine + 100, "{info}");
    assert_eq!(info["user_reads_from_destination"], 0, "{info}");
    assert_eq!(info["regions_hydrated_hot"], 0, "{info}");
    // Bad values change nothing.
    for (k, v) in [
        ("hydration_order", json!("random")),
        ("commit_interval_ms", json!(0)),
    ] {
        let e = t
            .call(
                "bdev_clone_set_hydration",
                Some(json!({"name": "c0", "enabled": true, k: v})),
            )
            .unwrap_err();
        assert_eq!(e.0, -22, "{k}: {e:?}");
        assert!(e.1.contains(k), "{k}: {e:?}");
    }
    let info = t.clone_info("c0");
    assert_eq!(info["state"], "paused", "{info}");
    assert_eq!(info["hydration_order"], "sequential", "{info}");
    // Hot-first, hydration slow (1 MiB/s: the sweep alone would take 16 s),
    // and a new commit interval.
    t.plugin(&[
        "bdev_clone_set_hydration",
        "-b",
        "c0",
        "-e",
        "--hydration-order",
        "hot_first",
        "--commit-interval-ms",
        "250",
        "--max-bandwidth-mb-sec",
        "1",
    ])
    .unwrap();
    let info = t.clone_info("c0");
    assert_eq!(info["hydration_order"], "hot_first", "{info}");
    assert_eq!(info["commit_interval_ms"], 250, "{info}");
    perform();
    let info = t.clone_info("c0");
    assert!(
        info["regions_hydrated_hot"].as_u64().unwrap() > 0,
        "hot-first copied nothing bdevperf read: {info}"
    );
    assert!(
        info["user_reads_from_source"].as_u64().unwrap() > from_source,
        "{info}"
    );
    // save_config keeps both settings (bdevperf has no save_config: the
    // bdev subsystem's part of it).
    let saved = t
        .call("framework_get_config", Some(json!({"name": "bdev"})))
        .unwrap();
    let create = saved
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["method"] == "bdev_clone_create")
        .expect("bdev_clone_create in the saved config")
        .clone();
    assert_eq!(create["params"]["hydration_order"], "hot_first", "{create}");
    assert_eq!(create["params"]["commit_interval_ms"], 250, "{create}");
    // Fully hydrated, reads come from the destination.
    t.call(
        "bdev_clone_set_hydration",
        Some(json!({"name": "c0", "max_bandwidth_mb_sec": 0, "max_bandwidth_busy_mb_sec": 0})),
    )
    .unwrap();
    t.wait_state("c0", "hydrated", 60);
    let before = t.clone_info("c0");
    perform();
    let after = t.clone_info("c0");
    assert_eq!(
        after["user_reads_from_source"], before["user_reads_from_source"],
        "{after}"
    );
    assert!(
        after["user_reads_from_destination"].as_u64().unwrap()
            > before["user_reads_from_destination"].as_u64().unwrap() + 100,
        "{after}"
    );
    // bdev_get_bdevs shows the same.
    let b = t
        .call("bdev_get_bdevs", Some(json!({"name": "c0"})))
        .unwrap();
    assert_eq!(
        b[0]["driver_specific"]["clone"]["hydration_order"],
        "hot_first"
    );
    t.stop();
}
