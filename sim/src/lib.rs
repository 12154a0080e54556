//! Deterministic crash simulator for the bdev_clone engine.
//!
//! A seed picks a geometry, settings, faults and a workload; devices have
//! volatile write caches, complete requests in random order, tear writes at
//! block granularity at a crash and fail on demand. After every simulated
//! crash the clone is reopened and every block is checked by the oracle
//! against DESIGN.md's crash semantics. The same seed replays exactly.

pub mod backend;
pub mod device;
pub mod harness;
pub mod oracle;
pub mod world;

pub use world::{run, Failure, Outcome, SimConfig};

/// Runs `count` seeds from `first`; returns the failures and a summary.
pub fn run_many(first: u64, count: u64, tweak: impl Fn(&mut SimConfig)) -> (Vec<Failure>, Outcome) {
    let mut failures = Vec::new();
    let mut total = Outcome::default();
    for seed in first..first + count {
        let mut cfg = SimConfig::new(seed);
        tweak(&mut cfg);
        match run(&cfg) {
            Ok(o) => {
                total.steps += o.steps;
                total.crashes += o.crashes;
                total.user_ops += o.user_ops;
                total.blocks_verified += o.blocks_verified;
                total.commits += o.commits;
                total.failed_states += o.failed_states;
                total.hot_copies += o.hot_copies;
                total.digest = total.digest.rotate_left(7) ^ o.digest;
            }
            Err(f) => failures.push(f),
        }
    }
    (failures, total)
}
