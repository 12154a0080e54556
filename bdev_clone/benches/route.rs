//! The routing hot path: what every read, and every write to a hydrated
//! region, costs on top of a pass-through (a bitmap test and range checks).
//!
//!     cargo bench -p bdev_clone --bench route

use bdev_clone::engine::Shared;
use bdev_clone::{DeviceInfo, Geometry, UserIo, UserIoId, UserOp};
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

fn routing(c: &mut Criterion) {
    let dev = DeviceInfo {
        block_size: 512,
        num_blocks: (1u64 << 40) / 512,
    };
    let g = Geometry::new(dev, dev, 65536).unwrap();
    let shared = Shared::new(g);
    for r in (0..g.region_count).step_by(2) {
        shared.map.set(r);
    }
    let io = |kind, region: u64| UserIo {
        id: UserIoId(1),
        kind,
        offset_blocks: region * 128 + 8,
        num_blocks: 8,
    };
    let mut group = c.benchmark_group("route");
    group.bench_function("read, hydrated region", |b| {
        let io = io(UserOp::Read, 4096);
        b.iter(|| shared.route(black_box(&io)))
    });
    group.bench_function("read, unhydrated region", |b| {
        let io = io(UserOp::Read, 4097);
        b.iter(|| shared.route(black_box(&io)))
    });
    group.bench_function("write, hydrated region", |b| {
        let io = io(UserOp::Write { fua: false }, 4096);
        b.iter(|| shared.route(black_box(&io)))
    });
    // While hydration runs, every routed I/O is also counted (on the
    // routing thread's own counter) so that hydration can yield to it.
    let counter = shared.io_counter();
    shared.set_counting(true);
    group.bench_function("read, hydrated region, while hydrating (counted)", |b| {
        let io = io(UserOp::Read, 4096);
        b.iter(|| shared.route_counted(black_box(&io), &counter))
    });
    shared.set_counting(false);
    group.bench_function("read, hydrated region, counting off (route_counted)", |b| {
        let io = io(UserOp::Read, 4096);
        b.iter(|| shared.route_counted(black_box(&io), &counter))
    });
    // Reads routed to the source, without and with hot-first hints (the
    // same region again: the slot already holds it, nothing is written; a
    // new region each time: the slot is written).
    group.bench_function("read, unhydrated region, no hints (route_counted)", |b| {
        let io = io(UserOp::Read, 4097);
        b.iter(|| shared.route_counted(black_box(&io), &counter))
    });
    shared.set_hinting(true);
    group.bench_function("read, unhydrated region, hinting, same region", |b| {
        let io = io(UserOp::Read, 4097);
        b.iter(|| shared.route_counted(black_box(&io), &counter))
    });
    group.bench_function(
        "read, unhydrated region, hinting, new region each time",
        |b| {
            let mut r = 1u64;
            b.iter(|| {
                r = (r + 2) % g.region_count;
                shared.route_counted(black_box(&io(UserOp::Read, r)), &counter)
            })
        },
    );
    group.bench_function("read, hydrated region, hinting on (route_counted)", |b| {
        let io = io(UserOp::Read, 4096);
        b.iter(|| shared.route_counted(black_box(&io), &counter))
    });
    shared.set_hinting(false);
    group.bench_function("read, random region of 1 TiB", |b| {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        b.iter(|| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            shared.route(black_box(&io(UserOp::Read, x % g.region_count)))
        })
    });
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
