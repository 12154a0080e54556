//! Idle costs nothing (issue 15): a target in `--interrupt-mode` sleeps as
//! long as its clones have nothing to do, and hydration, commits and the
//! RPCs all work there. Stock nvmf_tgt with the module preloaded (stock
//! spdk_tgt never sleeps on this build, with or without the module).

mod common;

use common::*;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

/// Share of one core the app used over `secs` seconds, in percent.
fn cpu_percent(t: &Tgt, secs: u64) -> f64 {
    let hz: f64 = String::from_utf8(
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let a = t.cpu_ticks();
    std::thread::sleep(Duration::from_secs(secs));
    let b = t.cpu_ticks();
    (b - a) as f64 / hz / secs as f64 * 100.0
}

#[test]
fn an_idle_target_in_interrupt_mode_sleeps_with_clones() {
    let dir = scratch("interrupt");
    for (f, mib) in [("src", 16), ("dst", 16), ("meta", 4)] {
        let file = std::fs::File::create(dir.join(f)).unwrap();
        file.set_len(mib << 20).unwrap();
    }
    let t = Tgt::start_preloaded_with(
        "nvmf_tgt",
        &dir,
        "tgt",
        &preload_lib(),
        &[],
        &["--interrupt-mode"],
    );
    for b in ["src", "dst", "meta"] {
        t.call(
            "bdev_aio_create",
            Some(json!({"name": b, "filename": dir.join(b), "block_size": 512})),
        )
        .unwrap();
    }
    let without = cpu_percent(&t, 3);
    t.call(
        "bdev_clone_create",
        Some(
            json!({"name": "c0", "source_bdev": "src", "destination_bdev": "dst",
            "metadata_bdev": "meta", "commit_interval_ms": 100}),
        ),
    )
    .unwrap();
    // Hydration and its commits run in interrupt mode.
    let info = t.wait_state("c0", "hydrated", 60);
    assert!(info["commits"].as_u64().unwrap() >= 1, "{info}");
    // Its last commit, then a second for its kept buffers to go back.
    std::thread::sleep(Duration::from_secs(2));
    let with = cpu_percent(&t, 3);
    eprintln!("idle CPU: {without:.1}% without a clone, {with:.1}% with a hydrated one");
    assert!(
        with < without + 5.0,
        "an idle hydrated clone keeps the target awake: {with:.1}% of a core (without: {without:.1}%)"
    );
    // The RPCs work, and give the clone work again.
    t.call(
        "bdev_clone_set_hydration",
        Some(json!({"name": "c0", "max_bandwidth_mb_sec": 10})),
    )
    .unwrap();
    t.call("bdev_clone_release_source", Some(json!({"name": "c0"})))
        .unwrap();
    assert_eq!(t.clone_info("c0")["state"], "source_released");
    std::thread::sleep(Duration::from_secs(2));
    let after = cpu_percent(&t, 2);
    assert!(after < without + 5.0, "awake after a release: {after:.1}%");
    t.call("bdev_clone_delete", Some(json!({"name": "c0"})))
        .unwrap();
    assert!(t.alive());
    t.stop();
}
