//! Crash-and-recover seeds: every seed runs a random workload with up to three
//! crashes and checks DESIGN.md's crash semantics after each. A failing seed
//! prints itself; replay it with `cargo run -p bdev_clone_sim --release -- --seed N`.

use bdev_clone_sim::{run, run_many, SimConfig};

fn seeds(first: u64, count: u64) {
    let (failures, total) = run_many(first, count, |_| {});
    for f in &failures {
        eprintln!("{f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed",
        failures.len()
    );
    // The runs really crashed, recovered and checked data.
    assert!(total.crashes as u64 > count, "too few crashes: {total:?}");
    assert!(
        total.blocks_verified > count * 100,
        "too little verified: {total:?}"
    );
    // Hot-first hydration ran (the world picks the order per seed).
    assert!(total.hot_copies > count, "too few hot copies: {total:?}");
}

// 8,000 seeds in all, split so that the test runner spreads them over cores.
#[test]
fn seeds_0000_to_1999() {
    seeds(0, 2000);
}
#[test]
fn seeds_2000_to_3999() {
    seeds(2000, 2000);
}
#[test]
fn seeds_4000_to_5999() {
    seeds(4000, 2000);
}
#[test]
fn seeds_6000_to_7999() {
    seeds(6000, 2000);
}

/// The oracle must catch the bug the seed fixed: a destination whose flushes
/// are acknowledged but persist nothing loses hydrated data at a crash.
#[test]
fn lying_destination_is_caught() {
    let (failures, _) = run_many(0, 200, |c| c.lying_dest = true);
    assert!(
        failures.len() > 100,
        "oracle missed a lying destination: {} of 200 seeds caught",
        failures.len()
    );
    assert!(failures
        .iter()
        .any(|f| f.message.contains("after crash") && f.message.contains("Garbage")));
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 42, 1001] {
        let a = run(&SimConfig::new(seed)).unwrap();
        let b = run(&SimConfig::new(seed)).unwrap();
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }
}

/// Long workloads with many crashes on a few seeds.
#[test]
fn long_runs() {
    let (failures, _) = run_many(100_000, 20, |c| {
        c.ops = 5000;
        c.max_crashes = 20;
    });
    for f in &failures {
        eprintln!("{f}");
    }
    assert!(failures.is_empty());
}
