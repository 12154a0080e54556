//! Metadata cost of a commit as a function of the regions it changes, for a
//! 1 TiB clone, and the clone's memory per TiB. The data devices are "null"
//! (requests complete at once, nothing stored); the metadata device is a
//! buffer in memory, so what is measured is exactly what the engine writes.
//!
//!     cargo run --release -p bdev_clone --example commit_cost

use bdev_clone::{
    Backend, BufId, Data, Dev, DevOp, DeviceInfo, Engine, IoResult, Notice, OpenParams, ReqId,
    UserIo, UserIoId, UserOp,
};
use std::collections::{HashMap, VecDeque};

struct NullHost {
    meta: Vec<u8>,
    bufs: HashMap<u64, Vec<u8>>,
    next: u64,
    done: VecDeque<ReqId>,
    meta_bytes: u64,
    meta_writes: u64,
}

impl Backend for NullHost {
    fn submit(&mut self, id: ReqId, dev: Dev, op: DevOp) {
        if dev == Dev::Meta {
            match op {
                DevOp::Read {
                    offset_blocks,
                    num_blocks,
                    data: Data::Buf { buf, .. },
                } => {
                    let (a, n) = (offset_blocks as usize * 512, num_blocks as usize * 512);
                    self.bufs.get_mut(&buf.0).unwrap()[..n].copy_from_slice(&self.meta[a..a + n]);
                }
                DevOp::Write {
                    offset_blocks,
                    num_blocks,
                    data: Data::Buf { buf, .. },
                    ..
                } => {
                    let (a, n) = (offset_blocks as usize * 512, num_blocks as usize * 512);
                    self.meta[a..a + n].copy_from_slice(&self.bufs[&buf.0][..n]);
                    self.meta_bytes += n as u64;
                    self.meta_writes += 1;
                }
                _ => {}
            }
        }
        self.done.push_back(id);
    }
    fn complete_user(&mut self, _io: UserIoId, r: IoResult) {
        r.expect("user I/O");
    }
    fn alloc_buf(&mut self, len: usize) -> Option<BufId> {
        self.next += 1;
        self.bufs.insert(self.next, vec![0; len]);
        Some(BufId(self.next))
    }
    fn buf_mut(&mut self, buf: BufId) -> &mut [u8] {
        self.bufs.get_mut(&buf.0).unwrap()
    }
    fn free_buf(&mut self, buf: BufId) {
        self.bufs.remove(&buf.0);
    }
    fn copy_user_data(&mut self, _: UserIoId, _: usize, _: BufId, _: usize) {
        unreachable!("this example submits no user writes")
    }
    fn now_ns(&self) -> u64 {
        0
    }
    fn notify(&mut self, n: Notice) {
        if let Notice::Opened(Err(e)) = n {
            panic!("{e}");
        }
    }
}

fn run(e: &mut Engine<NullHost>) {
    while let Some(id) = e.backend_mut().done.pop_front() {
        e.complete(id, Ok(()));
    }
}

/// A 1 TiB clone over null data devices and an in-memory metadata device
/// laid out as `layout`, opened (formatted) and idle.
fn open_tib(region_size: u32, layout: &bdev_clone::metadata::Layout) -> Engine<NullHost> {
    let data = DeviceInfo {
        block_size: 512,
        num_blocks: (1u64 << 40) / 512,
    };
    let host = NullHost {
        meta: vec![0; layout.total_bytes() as usize],
        bufs: HashMap::new(),
        next: 0,
        done: VecDeque::new(),
        meta_bytes: 0,
        meta_writes: 0,
    };
    let meta = DeviceInfo {
        block_size: 512,
        num_blocks: layout.total_bytes() / 512,
    };
    let mut p = OpenParams::new(data, data, meta, 1);
    p.region_size = Some(region_size);
    p.settings.hydration_enabled = false;
    let mut e = Engine::open(host, p);
    run(&mut e);
    e
}

fn main() {
    let tib = 1u64 << 40;
    println!("| region size | regions per TiB | metadata on disk | engine memory |");
    println!("|---|---|---|---|");
    for region_kb in [4u64, 64, 1024] {
        let regions = tib / (region_kb * 1024);
        let layout = bdev_clone::metadata::Layout::new(512, 4096, regions);
        let e = open_tib((region_kb * 1024) as u32, &layout);
        // Bitmap + committed copy (one bit each per region), per-page slot and dirty flags.
        let computed = regions / 8 * 2 + layout.page_count as u64 * 2;
        println!(
            "| {region_kb} KiB | {regions} | {:.1} MiB | {:.1} MiB |",
            layout.total_bytes() as f64 / (1 << 20) as f64,
            computed as f64 / (1 << 20) as f64,
        );
        assert_eq!(e.committed_regions(), 0);
    }
    println!();
    // Commit cost against regions changed, 64 KiB regions over 1 TiB.
    let regions = tib / 65536;
    let layout = bdev_clone::metadata::Layout::new(512, 4096, regions);
    println!(
        "1 TiB clone, 64 KiB regions ({} bitmap pages):\n",
        layout.page_count
    );
    println!("| regions changed | pages written | metadata bytes per commit | metadata writes |");
    println!("|---|---|---|---|");
    let mut e = open_tib(65536, &layout);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut id = 0;
    for k in [0u64, 1, 10, 100, 1_000, 10_000, 100_000] {
        // k whole-region writes at random regions (skip the copy), then a flush.
        for _ in 0..k {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let r = rng % regions;
            id += 1;
            e.submit(UserIo {
                id: UserIoId(id),
                kind: UserOp::Write { fua: false },
                offset_blocks: r * 128,
                num_blocks: 128,
            });
            run(&mut e);
        }
        let (b0, w0) = (e.backend_mut().meta_bytes, e.backend_mut().meta_writes);
        id += 1;
        e.submit(UserIo {
            id: UserIoId(id),
            kind: UserOp::Flush,
            offset_blocks: 0,
            num_blocks: 0,
        });
        run(&mut e);
        let bytes = e.backend_mut().meta_bytes - b0;
        let writes = e.backend_mut().meta_writes - w0;
        let pages = bytes.saturating_sub(512) / 4096;
        println!("| {k} | {pages} | {bytes} | {writes} |");
    }
}
