//! The engine's cost at TiB scale: `cargo run --release -p bdev_clone --example scale`.
//! Null source and destination (no device cost), metadata in memory: per
//! clone size, the time to create (format), to hydrate a fixed number of
//! regions (as MiB/s of clone data), to resume (load the bitmap), and the
//! engine's memory. The figures are the engine's own; BENCHMARKS.md has them.

#[path = "../tests/support/null.rs"]
mod null;

use std::time::Instant;

const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;
/// Regions copied per row: the same work for every size.
const REGIONS: u64 = 2_000_000;

fn main() {
    let region = 64 << 10;
    println!("| clone | regions | create | hydration, engine only (null → null) | resume | engine memory |");
    println!("|---|---|---|---|---|---|");
    for (name, bytes) in [
        ("16 GiB", 16 * GIB),
        ("1 TiB", TIB),
        ("16 TiB", 16 * TIB),
        ("64 TiB", 64 * TIB),
    ] {
        let meta = vec![0; null::meta_bytes(bytes, region)];
        let t = Instant::now();
        let (mut e, r) = null::open(bytes, region, meta);
        r.expect("format");
        let create = t.elapsed().as_secs_f64();
        let n = REGIONS.min(e.geometry().region_count / 2);
        let secs = null::hydrate(&mut e, n);
        let mib_s = (n * region as u64) as f64 / (1 << 20) as f64 / secs;
        let memory = e.memory_bytes();
        let (meta, _) = null::stop(e);
        let t = Instant::now();
        let (e, r) = null::open(bytes, region, meta);
        r.expect("resume");
        let resume = t.elapsed().as_secs_f64();
        null::stop(e);
        println!(
            "| {name} | {} | {:.3} s | {:.0} MiB/s ({n} regions in {:.2} s) | {:.3} s | {:.1} MiB |",
            bytes / region as u64,
            create,
            mib_s,
            secs,
            resume,
            memory as f64 / (1 << 20) as f64
        );
    }
}
