//! Live volume migration over NVMe/TCP on 127.0.0.1 (issue 5), with faults.
//!
//! A (stock nvmf_tgt) exports the source, an aio bdev over a pattern file.
//! B (bdev_clone_tgt) attaches it with bdev_nvme_attach_controller, clones it
//! into a local aio destination and exports the clone. C (stock bdevperf -z)
//! runs `verify` on B's export, on the first eighth of the volume (a
//! bdev_split part), in phases: before hydration, during it, while A is dead,
//! after A's and B's restarts, and after the source is released and A gone.
//! examples/live-migration.sh runs the same scenario with a printed timeline.
//!
//! Run alone (`--test-threads=1`): it starts up to four SPDK apps.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const NQN_A: &str = "nqn.2026-11.io.bdev-clone:mig-node-a";
const NQN_B: &str = "nqn.2026-11.io.bdev-clone:mig-node-b";
/// A fixed namespace UUID: the restarted A presents the same namespace.
const NS_UUID: &str = "0f6c3f5e-8f7b-4c43-9d1e-5a3b2c1d0e9f";
const SIZE: usize = 32 << 20;
const REGION: usize = 64 << 10;
const REGIONS: u64 = (SIZE / REGION) as u64;
/// C works on the first eighth of the volume.
const C_BYTES: usize = SIZE / 8;
const C_REGIONS: u64 = REGIONS / 8;

/// A's whole config: the source volume and its NVMe/TCP export.
fn a_config(src: &Path, port: &str) -> Value {
    json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_aio_create", "params": {"name": "vol", "filename": src,
                "block_size": 512, "uuid": NS_UUID}}]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": NQN_A, "allow_any_host": true,
                "serial_number": "SRC00000000000001"}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN_A,
                "namespace": {"bdev_name": "vol", "uuid": NS_UUID}}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN_A,
                "listen_address": tcp_listen(port)}}]}]})
}

fn start_a(dir: &Path, name: &str, port: &str) -> Tgt {
    let conf = dir.join("a.json");
    write_json(&conf, &a_config(&dir.join("src.img"), port));
    Tgt::start_tool(
        "nvmf_tgt",
        dir,
        name,
        &["-m", "0x2", "-c", conf.to_str().unwrap()],
    )
}

/// An initiator's config: B's export attached as controller `name`
/// (bdev `{name}n1`), reconnecting when B restarts, then `extra`.
fn initiator_config(name: &str, port_b: &str, extra: Vec<Value>) -> Value {
    let mut cfg = vec![json!({"method": "bdev_nvme_attach_controller", "params": {
        "name": name, "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
        "trsvcid": port_b, "subnqn": NQN_B, "ctrlr_loss_timeout_sec": -1,
        "reconnect_delay_sec": 1}})];
    cfg.extend(extra);
    json!({"subsystems": [{"subsystem": "bdev", "config": cfg}]})
}

/// One bdevperf run of the configured workload: its per-job results.
fn perform(t: &Tgt) -> Vec<Value> {
    let r = t
        .call("perform_tests", None)
        .unwrap_or_else(|e| panic!("perform_tests: {e:?}\n{}", t.log_text()));
    r["results"].as_array().unwrap().clone()
}

/// A C phase: (IOPS, failed I/Os).
fn phase(c: &Tgt) -> (f64, u64) {
    let r = perform(c);
    (
        r.iter().map(|j| j["iops"].as_f64().unwrap()).sum(),
        r.iter().map(|j| j["io_failed"].as_u64().unwrap()).sum(),
    )
}

/// spdk_dd from B's export (controller "Probe") into a file. spdk_dd ignores
/// failed reads, so it is only used where the bytes are then compared.
fn dd_read(dir: &Path, out: &Path, args: &[&str]) {
    let o = Command::new(spdk_tool("spdk_dd").expect("spdk_dd in PATH"))
        .args(APP_ARGS)
        .args(["-m", "0x2", "--json"])
        .arg(dir.join("probe.json"))
        .args(["--ib", "Proben1", "--of"])
        .arg(out)
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "spdk_dd failed: {}", output_text(&o));
}

fn controller_state(t: &Tgt, name: &str) -> String {
    t.call("bdev_nvme_get_controllers", Some(json!({"name": name})))
        .ok()
        .and_then(|v| v[0]["ctrlrs"][0]["state"].as_str().map(String::from))
        .unwrap_or_default()
}

fn wait_connected(t: &Tgt, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while controller_state(t, name) != "enabled" {
        assert!(Instant::now() < deadline, "{name} never reconnected");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pct(info: &Value) -> f64 {
    info["percent"].as_f64().unwrap()
}

fn n(info: &Value, key: &str) -> u64 {
    info[key].as_u64().unwrap()
}

struct Timeline(Instant);

impl Timeline {
    fn line(&self, what: &str, info: &Value, io: Option<(f64, u64)>) {
        let (iops, errs) = io.map_or(("-".into(), "-".into()), |(i, e)| {
            (format!("{i:.0}"), e.to_string())
        });
        eprintln!(
            "{:6.1}s  {what:<24} {:>6.2}%  iops {iops:>6}  errors {errs:>4}  {}",
            self.0.elapsed().as_secs_f64(),
            pct(info),
            info["state"].as_str().unwrap_or("")
        );
    }
}

#[test]
fn live_migration_over_nvme_tcp_with_faults() {
    let dir = scratch("migration");
    let base = 36000 + (std::process::id() % 1000) * 2;
    let (port_a, port_b) = (base.to_string(), (base + 1).to_string());
    let src = pattern_file(&dir.join("src.img"), SIZE, 0x5a);
    std::fs::write(dir.join("dst.img"), vec![0u8; SIZE]).unwrap();
    std::fs::write(dir.join("meta.img"), vec![0u8; 1 << 20]).unwrap();
    let tl = Timeline(Instant::now());

    // ---- A, B, C
    let a = start_a(&dir, "a", &port_a);
    let b = Tgt::start(&dir, "b", &["-m", "0x1"]);
    // The source must survive A's death: never delete the controller (its
    // bdev, claimed by the clone, stays), retry every second, and fail I/O
    // after one second instead of queueing it until A returns.
    b.call(
        "bdev_nvme_attach_controller",
        Some(json!({"name": "Src", "trtype": "tcp", "adrfam": "ipv4",
            "traddr": "127.0.0.1", "trsvcid": port_a, "subnqn": NQN_A,
            "ctrlr_loss_timeout_sec": -1, "reconnect_delay_sec": 1,
            "fast_io_fail_timeout_sec": 1})),
    )
    .unwrap();
    for (name, file) in [("dst", "dst.img"), ("meta", "meta.img")] {
        b.call(
            "bdev_aio_create",
            Some(json!({"name": name, "filename": dir.join(file), "block_size": 512})),
        )
        .unwrap();
    }
    b.call(
        "bdev_clone_create",
        Some(
            json!({"name": "vol", "source_bdev": "Srcn1", "destination_bdev": "dst",
            "metadata_bdev": "meta", "region_size_kb": 64, "no_hydration": true,
            "max_bandwidth_mb_sec": 1, "commit_interval_ms": 500}),
        ),
    )
    .unwrap();
    nvmf_tcp_subsystem(&b, NQN_B, "CLONE000000000001", &port_b);
    nvmf_add_ns(&b, NQN_B, "vol");
    let split = json!({"method": "bdev_split_create",
        "params": {"base_bdev": "Clonen1", "split_count": 8}});
    write_json(
        &dir.join("c.json"),
        &initiator_config("Clone", &port_b, vec![split]),
    );
    write_json(
        &dir.join("probe.json"),
        &initiator_config("Probe", &port_b, vec![]),
    );
    let c = Tgt::start_tool(
        "bdevperf",
        &dir,
        "c",
        &[
            "-m",
            "0x2",
            "-z",
            "--json",
            dir.join("c.json").to_str().unwrap(),
            "-q",
            "16",
            "-o",
            "4096",
            "-w",
            "verify",
            "-t",
            "2",
            "-f",
            "-T",
            "Clonen1p0",
        ],
    );
    let info = b.clone_info("vol");
    assert_eq!(info["state"], "paused");
    tl.line("A, B, C up", &info, None);

    // ---- before hydration
    let io = phase(&c);
    assert!(io.0 > 0.0 && io.1 == 0, "C before hydration: {io:?}");
    let info = b.clone_info("vol");
    assert!(pct(&info) < 100.0, "{info}");
    tl.line("before hydration", &info, Some(io));

    // ---- hydrating, C running
    b.call(
        "bdev_clone_set_hydration",
        Some(json!({"name": "vol", "enabled": true})),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let io = phase(&c);
        assert_eq!(io.1, 0, "C saw errors while hydrating");
        let info = b.clone_info("vol");
        tl.line("hydrating", &info, Some(io));
        if pct(&info) >= 30.0 {
            break;
        }
        assert!(Instant::now() < deadline, "hydration too slow: {info}");
    }

    // ---- fault 1: A dies in the middle of hydration
    a.kill9();
    std::thread::sleep(Duration::from_secs(2)); // past fast_io_fail_timeout_sec
    let at_kill = b.clone_info("vol");
    assert_eq!(
        at_kill["state"], "hydrating",
        "the clone must survive its source going away: {at_kill}"
    );
    assert!(
        b.call("bdev_get_bdevs", Some(json!({"name": "Srcn1"})))
            .is_ok(),
        "the source bdev was removed when A died"
    );
    let committed = n(&at_kill, "regions_committed");
    assert!(n(&at_kill, "regions_hydrated") < REGIONS, "{at_kill}");
    tl.line("A killed (SIGKILL)", &at_kill, None);
    // C's range is hydrated: its I/O goes on without errors.
    let io = phase(&c);
    assert!(
        io.0 > 0.0 && io.1 == 0,
        "C on hydrated regions while A is down: {io:?}"
    );
    tl.line("A down: C", &b.clone_info("vol"), Some(io));
    // Reads: 16 hydrated regions right after C's range, and the last 16
    // (unhydrated) regions, as two bdevperf read jobs (offsets in blocks).
    let job = format!(
        "[global]\nfilename=Proben1\nbs=65536\niodepth=1\nrw=read\n\
         [hydrated]\noffset={}\nlength={}\n[unhydrated]\noffset={}\nlength={}\n",
        (C_REGIONS + 1) * 128,
        16 * 128,
        (REGIONS - 16) * 128,
        16 * 128
    );
    std::fs::write(dir.join("probe.job"), job).unwrap();
    let p = Tgt::start_tool(
        "bdevperf",
        &dir,
        "probe",
        &[
            "-m",
            "0x2",
            "-z",
            "--json",
            dir.join("probe.json").to_str().unwrap(),
            "-j",
            dir.join("probe.job").to_str().unwrap(),
            "-t",
            "1",
            "-f",
        ],
    );
    let r = perform(&p);
    p.stop();
    assert_eq!(r.len(), 2, "{r:?}");
    let (h, u) = (&r[0], &r[1]);
    assert!(
        h["io_failed"] == 0 && h["iops"].as_f64().unwrap() > 0.0,
        "reads of hydrated regions must work while A is down: {h}"
    );
    assert!(
        u["io_failed"].as_u64().unwrap() > 0 && u["iops"].as_f64().unwrap() == 0.0,
        "every read of an unhydrated region must fail while A is down: {u}"
    );
    // And a hydrated region reads the source's bytes.
    let probe = dir.join("probe_hydrated.img");
    let skip = (C_REGIONS + 1).to_string();
    dd_read(
        &dir,
        &probe,
        &["--bs", "65536", "--skip", &skip, "--count", "1"],
    );
    let off = (C_REGIONS as usize + 1) * REGION;
    assert!(
        std::fs::read(&probe).unwrap() == src[off..off + REGION],
        "a hydrated region read wrong data while A was down"
    );
    let down = b.clone_info("vol");
    assert_eq!(down["state"], "hydrating", "{down}");
    assert!(n(&down, "hydration_errors") > 0, "{down}");
    assert!(
        n(&down, "regions_hydrated") <= n(&at_kill, "regions_hydrated") + 32,
        "hydration went on without a source: {at_kill} -> {down}"
    );
    eprintln!(
        "        A down: reads of hydrated regions {:.0} IOPS, 0 errors, source bytes; \
         of unhydrated regions 0 IOPS, {} errors",
        h["iops"].as_f64().unwrap(),
        u["io_failed"]
    );

    // ---- A comes back over the same file; B reconnects by itself
    let a = start_a(&dir, "a2", &port_a);
    wait_connected(&b, "Src");
    let back = b.clone_info("vol");
    assert!(
        n(&back, "regions_hydrated") >= committed,
        "lost committed regions: {committed} -> {back}"
    );
    tl.line("A restarted", &back, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    let resumed = loop {
        let io = phase(&c);
        assert_eq!(io.1, 0, "C saw errors after A came back");
        let info = b.clone_info("vol");
        tl.line("hydrating again", &info, Some(io));
        if n(&info, "regions_hydrated") > n(&down, "regions_hydrated") {
            break info;
        }
        assert!(
            Instant::now() < deadline,
            "hydration did not resume: {info}"
        );
    };

    // ---- fault 2: B restarts in the middle, from its saved config
    // save_config is a client command (framework_get_config per subsystem).
    let saved = b.plugin(&["save_config"]).unwrap();
    write_json(&dir.join("b.json"), &saved);
    let before = b.clone_info("vol");
    let committed = n(&before, "regions_committed");
    b.stop();
    assert!(
        committed >= n(&resumed, "regions_committed") && committed < REGIONS,
        "B must restart in the middle of hydration: {before}"
    );
    let b = Tgt::start(
        &dir,
        "b2",
        &["-m", "0x1", "-c", dir.join("b.json").to_str().unwrap()],
    );
    assert!(
        b.log_text()
            .contains("bdev_clone vol: resumed from metadata"),
        "{}",
        b.log_text()
    );
    let after = b.clone_info("vol");
    assert!(
        n(&after, "regions_hydrated") >= committed,
        "B lost progress over its restart: {before} -> {after}"
    );
    tl.line("B restarted (-c saved)", &after, None);
    wait_connected(&c, "Clone");
    b.call(
        "bdev_clone_set_hydration",
        Some(json!({"name": "vol", "max_bandwidth_mb_sec": 0})),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let io = phase(&c);
        assert_eq!(io.1, 0, "C saw errors after B's restart");
        let info = b.clone_info("vol");
        tl.line("hydrating after B", &info, Some(io));
        if info["state"] == "hydrated" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hydration never completed: {info}"
        );
    }

    // ---- release the source, let A go; C goes on
    b.call("bdev_clone_release_source", Some(json!({"name": "vol"})))
        .unwrap();
    b.call("bdev_nvme_detach_controller", Some(json!({"name": "Src"})))
        .unwrap();
    a.stop();
    let info = b.clone_info("vol");
    assert_eq!(info["state"], "source_released");
    tl.line("released, A stopped", &info, None);
    let io = phase(&c);
    assert!(io.0 > 0.0 && io.1 == 0, "C after the migration: {io:?}");
    tl.line("after migration", &b.clone_info("vol"), Some(io));
    c.stop();

    // ---- byte-level check
    // The whole clone as an initiator reads it over NVMe/TCP (C stopped, so
    // nothing changes it), then B stops cleanly. The destination must equal
    // that read byte for byte (the volume now lives there, nothing is left in
    // a cache or on the source); outside C's range, never written, it must
    // equal the source image: hydration copied every region there across A's
    // death, A's restart and B's restart, so any difference is a lost, torn or
    // misplaced copy (every 512-byte block of the pattern holds its number).
    // Inside C's range the data is C's: bdevperf verified every block it read
    // back (0 errors), and the range differs from the source.
    let clone_img = dir.join("clone.img");
    dd_read(&dir, &clone_img, &["--bs", "1048576"]);
    b.stop();
    let dst = std::fs::read(dir.join("dst.img")).unwrap();
    let read = std::fs::read(&clone_img).unwrap();
    assert_eq!(read.len(), SIZE);
    assert!(
        read == dst,
        "the destination differs from what the clone returns"
    );
    assert!(
        dst[C_BYTES..] == src[C_BYTES..],
        "the destination differs from the source outside C's range"
    );
    assert!(
        dst[..C_BYTES] != src[..C_BYTES],
        "C's range equals the source: C wrote nothing?"
    );
    eprintln!(
        "{:6.1}s  check: destination == clone read; == source outside C's {} MiB",
        tl.0.elapsed().as_secs_f64(),
        C_BYTES >> 20
    );
}
