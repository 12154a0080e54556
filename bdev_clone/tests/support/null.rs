//! A `Backend` for clones of any size: null source and destination (requests
//! complete at once and move no data, like SPDK's null bdevs), metadata in
//! memory, the real clock. What it measures is the engine's own cost.
//! Shared (by `#[path]`) with `examples/scale.rs`.

#![allow(dead_code)]

use bdev_clone::{
    Backend, BufId, Data, Dev, DevOp, DeviceInfo, Engine, IoResult, Notice, OpenError, OpenInfo,
    OpenParams, ReqId, UserIoId,
};
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

pub const BS: u32 = 512;

pub struct NullBackend {
    pub meta: Vec<u8>,
    done: VecDeque<(ReqId, IoResult)>,
    bufs: HashMap<u64, Vec<u8>>,
    next_buf: u64,
    /// Bytes of buffers the engine holds from this host.
    pub held: usize,
    pub notices: Vec<Notice>,
    start: Instant,
}

impl NullBackend {
    pub fn new(meta: Vec<u8>) -> NullBackend {
        NullBackend {
            meta,
            done: VecDeque::new(),
            bufs: HashMap::new(),
            next_buf: 1,
            held: 0,
            notices: Vec::new(),
            start: Instant::now(),
        }
    }
}

impl Backend for NullBackend {
    fn submit(&mut self, id: ReqId, dev: Dev, op: DevOp) {
        if dev == Dev::Meta {
            let bs = BS as usize;
            match op {
                DevOp::Read {
                    offset_blocks,
                    num_blocks,
                    data: Data::Buf { buf, offset },
                } => {
                    let a = offset_blocks as usize * bs;
                    let n = num_blocks as usize * bs;
                    let dst = &mut self.bufs.get_mut(&buf.0).expect("live")[offset..offset + n];
                    dst.copy_from_slice(&self.meta[a..a + n]);
                }
                DevOp::Write {
                    offset_blocks,
                    num_blocks,
                    data: Data::Buf { buf, offset },
                    ..
                } => {
                    let a = offset_blocks as usize * bs;
                    let n = num_blocks as usize * bs;
                    let src = &self.bufs[&buf.0][offset..offset + n];
                    self.meta[a..a + n].copy_from_slice(src);
                }
                _ => {}
            }
        }
        self.done.push_back((id, Ok(())));
    }

    fn complete_user(&mut self, _: UserIoId, _: IoResult) {}

    fn alloc_buf(&mut self, len: usize) -> Option<BufId> {
        let id = self.next_buf;
        self.next_buf += 1;
        self.held += len;
        self.bufs.insert(id, vec![0; len]);
        Some(BufId(id))
    }

    fn buf_mut(&mut self, buf: BufId) -> &mut [u8] {
        self.bufs.get_mut(&buf.0).expect("live buffer")
    }

    fn free_buf(&mut self, buf: BufId) {
        self.held -= self.bufs.remove(&buf.0).expect("live buffer").len();
    }

    fn copy_user_data(&mut self, _: UserIoId, _: usize, _: BufId, _: usize) {}

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64 + 1
    }

    fn notify(&mut self, notice: Notice) {
        self.notices.push(notice);
    }
}

/// Completes everything in flight, and what that starts.
pub fn drive(e: &mut Engine<NullBackend>) {
    while let Some((id, r)) = e.backend_mut().done.pop_front() {
        e.complete(id, r);
    }
}

/// Metadata bytes a clone of `bytes` at `region_size` needs.
pub fn meta_bytes(bytes: u64, region_size: u32) -> usize {
    let regions = bytes.div_ceil(region_size as u64);
    bdev_clone::metadata::Layout::new(BS, 4096, regions).total_bytes() as usize
}

/// Opens (formats or resumes) a clone of `bytes` over `meta`.
pub fn open(
    bytes: u64,
    region_size: u32,
    meta: Vec<u8>,
) -> (Engine<NullBackend>, Result<OpenInfo, OpenError>) {
    let dev = DeviceInfo {
        block_size: BS,
        num_blocks: bytes / BS as u64,
    };
    let meta_info = DeviceInfo {
        block_size: BS,
        num_blocks: meta.len() as u64 / BS as u64,
    };
    let mut p = OpenParams::new(dev, dev, meta_info, 0x5CA1E);
    p.region_size = Some(region_size);
    p.page_size = 4096;
    let mut e = Engine::open(NullBackend::new(meta), p);
    drive(&mut e);
    let r = e
        .backend_mut()
        .notices
        .iter()
        .find_map(|n| match n {
            Notice::Opened(r) => Some(r.clone()),
            _ => None,
        })
        .expect("open finished");
    (e, r)
}

/// Hydrates at least `regions` more regions; returns the seconds it took.
pub fn hydrate(e: &mut Engine<NullBackend>, regions: u64) -> f64 {
    let target = e.status().stats.regions_hydrated + regions;
    let t = Instant::now();
    let target = target.min(e.geometry().region_count);
    // Completion by completion: each one starts the next copy, so draining
    // the queue would hydrate the whole clone.
    while e.status().stats.regions_hydrated < target {
        match e.backend_mut().done.pop_front() {
            Some((id, r)) => e.complete(id, r),
            None => {
                e.poll();
            }
        }
    }
    t.elapsed().as_secs_f64()
}

/// Commits and stops; returns the metadata device and the regions hydrated.
pub fn stop(mut e: Engine<NullBackend>) -> (Vec<u8>, u64) {
    e.shutdown();
    drive(&mut e);
    while !e.backend().notices.contains(&Notice::Stopped) {
        e.poll();
        drive(&mut e);
    }
    assert_eq!(e.backend().held, 0, "every buffer went back to the host");
    let hydrated = e.status().stats.regions_hydrated;
    assert_eq!(
        e.committed_regions(),
        hydrated,
        "stopping committed everything"
    );
    (e.into_backend().meta, hydrated)
}
