//! Hot-first hydration: what users read is copied before the sweep goes on,
//! and the order changes only *when* a region is copied, never what a read
//! returns.

use bdev_clone::{Data, Dev, DevOp, HydrationOrder, UserOp};
use bdev_clone_sim::backend::TraceEvent;
use bdev_clone_sim::harness::{devices, meta_bytes_for, params_for, Harness};
use bdev_clone_sim::oracle::Value;
use proptest::prelude::*;

const RS: u32 = 4096; // 8 blocks per region

fn open(blocks: u64) -> Harness {
    let devs = devices(blocks, blocks, meta_bytes_for(blocks / 8 + 1) + 4096);
    let p = params_for(&devs, RS);
    let (h, r) = Harness::open(devs, p);
    r.expect("open");
    h
}

/// Hydration on, `threshold` regions in flight, `batch` per copy, no rate
/// limit, in `order`.
fn hydrate(h: &mut Harness, order: HydrationOrder, threshold: u32, batch: u32) {
    let mut s = h.engine.settings().clone();
    s.hydration_enabled = true;
    s.hydration_threshold = threshold;
    s.hydration_batch_size = batch;
    s.max_bandwidth_mb_sec = 0;
    s.max_bandwidth_busy_mb_sec = 0;
    s.hydration_order = order;
    h.engine.set_settings(s);
}

/// The copies the engine started, as (first block, blocks) of their source
/// reads, in order.
fn copies(h: &mut Harness) -> Vec<(u64, u64)> {
    h.trace()
        .iter()
        .filter_map(|e| match e {
            TraceEvent::Submit(
                Dev::Source,
                DevOp::Read {
                    offset_blocks,
                    num_blocks,
                    data: Data::Buf { .. },
                },
            ) => Some((*offset_blocks, *num_blocks)),
            _ => None,
        })
        .collect()
}

/// One poll: the hydrator starts what its throttles allow; then every
/// request runs to its end (the harness's devices answer in order).
fn poll(h: &mut Harness) {
    h.backend().now += 1_000_000;
    h.engine.poll();
    h.run();
}

/// Hydration limited to 1 MiB/s (about one 4 KiB region per 4 ms).
fn slow(h: &mut Harness) {
    let mut s = h.engine.settings().clone();
    s.max_bandwidth_mb_sec = 1;
    h.engine.set_settings(s);
}

/// `ms` later, one poll; returns the copies it started, then runs every
/// request to its end.
fn poll_after(h: &mut Harness, ms: u64) -> Vec<(u64, u64)> {
    h.trace();
    h.backend().now += ms * 1_000_000;
    h.engine.poll();
    let started = copies(h);
    h.run();
    started
}

#[test]
fn hot_first_copies_a_read_region_before_sweeping_from_the_start() {
    for order in [HydrationOrder::Sequential, HydrationOrder::HotFirst] {
        let hot = order == HydrationOrder::HotFirst;
        let mut h = open(2048); // 256 regions of 4 KiB
        hydrate(&mut h, order, 1, 1);
        slow(&mut h);
        // A user reads region 200 (from the source: it is not hydrated).
        assert_eq!(
            h.read_values(1600, 2),
            vec![Some(Value::Source(1600)), Some(Value::Source(1601))]
        );
        // 4 ms: tokens for one region.
        let first = poll_after(&mut h, 4);
        // dm-clone's order starts the sweep at region 0; hot-first copies the
        // region the user read first, alone (a random reader: the region
        // before it is not hydrated).
        assert_eq!(first, vec![(if hot { 1600 } else { 0 }, 8)], "{order:?}");
        assert_eq!(h.engine.status().stats.regions_hydrated_hot, hot as u64);
        // Reads of region 200 now come from the destination with hot_first.
        let before = h.engine.status().stats;
        assert_eq!(
            (
                before.user_reads_from_source,
                before.user_reads_from_destination
            ),
            (1, 0)
        );
        h.read_values(1600, 1);
        let after = h.engine.status().stats;
        assert_eq!(
            (
                after.user_reads_from_source,
                after.user_reads_from_destination
            ),
            if hot { (1, 1) } else { (2, 0) },
            "{order:?}"
        );
        // Then the sweep goes on, from the start.
        let next = poll_after(&mut h, 4);
        assert_eq!(next, vec![(if hot { 0 } else { 8 }, 8)], "{order:?}");
    }
}

#[test]
fn a_sequential_reader_gets_the_regions_after_it_copied_ahead() {
    let mut h = open(2048);
    hydrate(&mut h, HydrationOrder::HotFirst, 8, 4);
    slow(&mut h);
    // Region 100: copied alone (nothing before it hydrated), and the tokens
    // left allow no sweep.
    h.read_values(800, 8);
    assert_eq!(poll_after(&mut h, 4), vec![(800, 8)]);
    // Region 101 right after it: a sequential reader; a batch of 4 regions
    // from 101 is copied in one request (16 ms of tokens).
    h.read_values(808, 8);
    assert_eq!(poll_after(&mut h, 16), vec![(808, 32)]);
    assert_eq!(h.engine.status().stats.regions_hydrated_hot, 5);
    assert_eq!(h.engine.status().stats.regions_hydrated, 5);
}

#[test]
fn hints_are_not_taken_while_hydration_is_paused_or_sequential() {
    for (enabled, order) in [
        (false, HydrationOrder::HotFirst),
        (true, HydrationOrder::Sequential),
    ] {
        let mut h = open(2048);
        hydrate(&mut h, order, 1, 1);
        let mut s = h.engine.settings().clone();
        s.hydration_enabled = enabled;
        h.engine.set_settings(s);
        h.read_values(1600, 1);
        assert!(h.engine.shared().hints.is_empty(), "{enabled} {order:?}");
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Blocks `off..off + len` of region `region`.
    Read {
        region: u64,
        off: u64,
        len: u64,
    },
    Write {
        region: u64,
        off: u64,
        len: u64,
    },
    /// Polls, 1 ms apart.
    Poll(u32),
    Flush,
}

const REGIONS: u64 = 32;

fn op() -> impl Strategy<Value = Op> {
    let place = (0..REGIONS, 0u64..8).prop_flat_map(|(r, off)| (Just(r), Just(off), 1..=8 - off));
    prop_oneof![
        5 => place.clone().prop_map(|(region, off, len)| Op::Read { region, off, len }),
        2 => place.prop_map(|(region, off, len)| Op::Write { region, off, len }),
        3 => (1u32..4).prop_map(Op::Poll),
        1 => Just(Op::Flush),
    ]
}

/// Runs `ops` on a fresh clone hydrating in `order`; returns what every read
/// returned, and the regions in the order their copies started.
fn run(ops: &[Op], order: HydrationOrder, threshold: u32, batch: u32) -> (Vec<Vec<u8>>, Vec<u64>) {
    let mut h = open(REGIONS * 8);
    hydrate(&mut h, order, threshold, batch);
    // 1 MiB/s: a 4 KiB region every 4 ms or so, so that order matters.
    let mut s = h.engine.settings().clone();
    s.max_bandwidth_mb_sec = 1;
    h.engine.set_settings(s);
    let mut reads = Vec::new();
    let mut copied = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match *op {
            Op::Read { region, off, len } => {
                let (res, data) = h.io(UserOp::Read, region * 8 + off, len, &[]);
                res.expect("read");
                reads.push(data);
            }
            Op::Write { region, off, len } => {
                let start = region * 8 + off;
                let values: Vec<Value> = (start..start + len)
                    .map(|b| Value::Write {
                        id: i as u64,
                        block: b,
                    })
                    .collect();
                h.io(UserOp::Write { fua: false }, start, len, &values)
                    .0
                    .expect("write");
            }
            Op::Poll(n) => {
                for _ in 0..n {
                    poll(&mut h);
                }
            }
            Op::Flush => h.io(UserOp::Flush, 0, 0, &[]).0.expect("flush"),
        }
        copied.extend(copies(&mut h).iter().map(|&(b, _)| b / 8));
    }
    (reads, copied)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The same workload under both orders: every read returns the same
    /// bytes, and those are what a model of the volume says (the last write,
    /// else the source). Only the order of the copies may differ.
    #[test]
    fn order_changes_when_regions_are_copied_never_what_reads_return(
        ops in proptest::collection::vec(op(), 1..80),
        threshold in 1u32..4,
        batch in 1u32..4,
    ) {
        let (seq, _) = run(&ops, HydrationOrder::Sequential, threshold, batch);
        let (hot, _) = run(&ops, HydrationOrder::HotFirst, threshold, batch);
        prop_assert_eq!(&seq, &hot);
        // The model.
        let mut model: Vec<Value> = (0..REGIONS * 8).map(Value::Source).collect();
        let mut reads = seq.iter();
        for (i, op) in ops.iter().enumerate() {
            match *op {
                Op::Read { region, off, len } => {
                    let data = reads.next().unwrap();
                    for (k, chunk) in data.chunks(512).enumerate() {
                        let b = region * 8 + off + k as u64;
                        prop_assert_eq!(Value::decode(chunk), Some(model[b as usize]), "block {}", b);
                    }
                    prop_assert_eq!(data.len() as u64, len * 512);
                }
                Op::Write { region, off, len } => {
                    for b in region * 8 + off..region * 8 + off + len {
                        model[b as usize] = Value::Write { id: i as u64, block: b };
                    }
                }
                _ => {}
            }
        }
    }
}

/// The property test above must not be vacuous: on such workloads the two
/// orders do copy regions in different orders.
#[test]
fn the_orders_really_differ_on_a_read_heavy_workload() {
    let ops: Vec<Op> = (0..40)
        .flat_map(|i| {
            [
                Op::Read {
                    region: REGIONS - 1 - (i % 4),
                    off: 0,
                    len: 1,
                },
                Op::Poll(2),
            ]
        })
        .collect();
    let (seq_reads, seq) = run(&ops, HydrationOrder::Sequential, 1, 1);
    let (hot_reads, hot) = run(&ops, HydrationOrder::HotFirst, 1, 1);
    assert_eq!(seq_reads, hot_reads);
    assert_eq!(seq.first(), Some(&0));
    assert_eq!(hot.first(), Some(&(REGIONS - 1)), "{hot:?}");
    assert_ne!(seq, hot);
}
