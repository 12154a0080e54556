//! The simulator's implementation of the engine's `Backend`: requests queue
//! up and the world completes them in a random order.

use crate::device::SimDevice;
use bdev_clone::{Backend, BufId, Data, Dev, DevOp, IoError, IoResult, Notice, ReqId, UserIoId};
use fastrand::Rng;
use std::collections::HashMap;

pub struct InFlight {
    pub id: ReqId,
    pub dev: Dev,
    pub op: DevOp,
    /// For a flush: the device's completion count when it was submitted.
    pub mark: u64,
}

/// One device operation as the trace records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TraceEvent {
    Submit(Dev, DevOp),
    Complete(Dev, DevOp, bool),
}

/// The engine's `Backend` over three `SimDevice`s: requests queue up in
/// `inflight` until the world executes them, in any order.
pub struct SimBackend {
    pub now: u64,
    pub devs: [SimDevice; 3],
    pub inflight: Vec<InFlight>,
    bufs: slab_like::Slab,
    pub buf_limit: usize,
    /// Data buffers of user I/O, by id.
    pub user_data: HashMap<u64, Vec<u8>>,
    pub completed: Vec<(UserIoId, IoResult)>,
    pub notices: Vec<Notice>,
    pub trace: Option<Vec<TraceEvent>>,
    /// A hash of every request the engine submitted and every completion, in
    /// order: equal digests mean a seed replayed the same way (refactors
    /// that must not change behaviour compare them).
    pub digest: u64,
    /// Set when the engine asked for memory beyond `buf_limit`.
    pub over_limit: Option<String>,
}

fn idx(dev: Dev) -> usize {
    match dev {
        Dev::Source => 0,
        Dev::Dest => 1,
        Dev::Meta => 2,
    }
}

impl SimBackend {
    pub fn new(devs: [SimDevice; 3], buf_limit: usize) -> SimBackend {
        SimBackend {
            now: 1_000_000_000,
            devs,
            inflight: Vec::new(),
            bufs: slab_like::Slab::default(),
            buf_limit,
            user_data: HashMap::new(),
            completed: Vec::new(),
            notices: Vec::new(),
            trace: None,
            digest: 0,
            over_limit: None,
        }
    }

    pub fn dev(&self, dev: Dev) -> &SimDevice {
        &self.devs[idx(dev)]
    }

    pub fn dev_mut(&mut self, dev: Dev) -> &mut SimDevice {
        &mut self.devs[idx(dev)]
    }

    fn data_mut(&mut self, data: Data, len: usize) -> &mut [u8] {
        match data {
            Data::User(id) => &mut self.user_data.get_mut(&id.0).expect("user buffer")[..len],
            Data::Buf { buf, offset } => &mut self.bufs.get_mut(buf.0)[offset..offset + len],
        }
    }

    /// Completes in-flight request `i` against its device; faults apply.
    pub fn execute(&mut self, i: usize, rng: &mut Rng) -> (ReqId, IoResult) {
        let f = self.inflight.swap_remove(i);
        let d = idx(f.dev);
        let bs = self.devs[d].block_size;
        let check = |dev: &SimDevice, off: u64, n: u64| {
            assert!(
                off + n <= dev.num_blocks && n > 0,
                "engine sent {:?} out of range of the {} device",
                f.op,
                f.dev
            )
        };
        let result = match f.op {
            DevOp::Read {
                offset_blocks,
                num_blocks,
                data,
            } => {
                check(&self.devs[d], offset_blocks, num_blocks);
                if self.devs[d].fail(rng, self.devs[d].faults.read_error) {
                    Err(IoError::Io)
                } else {
                    let len = num_blocks as usize * bs;
                    let mut tmp = vec![0u8; len];
                    self.devs[d].read(offset_blocks, &mut tmp);
                    self.data_mut(data, len).copy_from_slice(&tmp);
                    Ok(())
                }
            }
            DevOp::Write {
                offset_blocks,
                num_blocks,
                data,
                fua,
            } => {
                check(&self.devs[d], offset_blocks, num_blocks);
                let len = num_blocks as usize * bs;
                let bytes = self.data_mut(data, len).to_vec();
                if self.devs[d].fail(rng, self.devs[d].faults.write_error) {
                    // A failed write may still have written a prefix.
                    let keep = rng.usize(..=num_blocks as usize) * bs;
                    self.devs[d].write(offset_blocks, &bytes[..keep], false);
                    Err(IoError::Io)
                } else {
                    self.devs[d].write(offset_blocks, &bytes, fua);
                    Ok(())
                }
            }
            DevOp::Flush => {
                if self.devs[d].fail(rng, self.devs[d].faults.flush_error) {
                    Err(IoError::Io)
                } else {
                    self.devs[d].flush(f.mark);
                    Ok(())
                }
            }
            DevOp::Unmap {
                offset_blocks,
                num_blocks,
            }
            | DevOp::WriteZeroes {
                offset_blocks,
                num_blocks,
            } => {
                check(&self.devs[d], offset_blocks, num_blocks);
                if self.devs[d].fail(rng, self.devs[d].faults.write_error) {
                    Err(IoError::Io)
                } else {
                    let zeroes = vec![0u8; num_blocks as usize * bs];
                    self.devs[d].write(offset_blocks, &zeroes, false);
                    Ok(())
                }
            }
            DevOp::Reset => Ok(()),
        };
        let event = TraceEvent::Complete(f.dev, f.op, result.is_ok());
        self.record(event);
        (f.id, result)
    }

    /// The data each in-flight write would have put on `dev` (for a crash).
    pub fn in_flight_writes(&mut self, dev: Dev) -> Vec<(u64, Vec<u8>)> {
        let bs = self.dev(dev).block_size;
        let ops: Vec<DevOp> = self
            .inflight
            .iter()
            .filter(|f| f.dev == dev)
            .map(|f| f.op)
            .collect();
        ops.into_iter()
            .filter_map(|op| match op {
                DevOp::Write {
                    offset_blocks,
                    num_blocks,
                    data,
                    ..
                } => Some((
                    offset_blocks,
                    self.data_mut(data, num_blocks as usize * bs).to_vec(),
                )),
                DevOp::Unmap {
                    offset_blocks,
                    num_blocks,
                }
                | DevOp::WriteZeroes {
                    offset_blocks,
                    num_blocks,
                } => Some((offset_blocks, vec![0u8; num_blocks as usize * bs])),
                _ => None,
            })
            .collect()
    }

    /// Forgets everything volatile (buffers, requests), as a restarted host would.
    pub fn reset_after_crash(&mut self) {
        self.inflight.clear();
        self.bufs = slab_like::Slab::default();
        self.user_data.clear();
        self.completed.clear();
        self.notices.clear();
    }

    fn record(&mut self, event: TraceEvent) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.digest, event).hash(&mut h);
        self.digest = h.finish();
        if let Some(t) = &mut self.trace {
            t.push(event);
        }
    }

    pub fn buffers_in_use(&self) -> usize {
        self.bufs.bytes
    }
}

impl Backend for SimBackend {
    fn submit(&mut self, id: ReqId, dev: Dev, op: DevOp) {
        let mark = self.dev(dev).flush_mark();
        self.record(TraceEvent::Submit(dev, op));
        self.inflight.push(InFlight { id, dev, op, mark });
    }

    fn complete_user(&mut self, io: UserIoId, result: IoResult) {
        self.completed.push((io, result));
    }

    fn alloc_buf(&mut self, len: usize) -> Option<BufId> {
        if self.bufs.bytes + len > self.buf_limit {
            // The engine's buffer policy keeps within its cap, which the
            // world sets to this limit: asking for more is a bug.
            self.over_limit.get_or_insert(format!(
                "the engine asked for {len} bytes with {} of its {}-byte cap held",
                self.bufs.bytes, self.buf_limit
            ));
            return None;
        }
        Some(BufId(self.bufs.insert(vec![0xEE; len])))
    }

    fn buf_mut(&mut self, buf: BufId) -> &mut [u8] {
        self.bufs.get_mut(buf.0)
    }

    fn free_buf(&mut self, buf: BufId) {
        self.bufs.remove(buf.0);
    }

    fn copy_user_data(&mut self, io: UserIoId, len: usize, buf: BufId, offset: usize) {
        let data = &self.user_data.get(&io.0).expect("user buffer")[..len];
        self.bufs.get_mut(buf.0)[offset..offset + len].copy_from_slice(data);
    }

    fn now_ns(&self) -> u64 {
        self.now
    }

    fn notify(&mut self, notice: Notice) {
        self.notices.push(notice);
    }
}

/// Buffers by id, with the bytes in use counted (the pool's limit).
mod slab_like {
    use std::collections::HashMap;

    #[derive(Default)]
    pub struct Slab {
        bufs: HashMap<u64, Vec<u8>>,
        next: u64,
        pub bytes: usize,
    }

    impl Slab {
        pub fn insert(&mut self, b: Vec<u8>) -> u64 {
            self.next += 1;
            self.bytes += b.len();
            self.bufs.insert(self.next, b);
            self.next
        }
        pub fn get_mut(&mut self, id: u64) -> &mut Vec<u8> {
            self.bufs.get_mut(&id).expect("live buffer")
        }
        pub fn remove(&mut self, id: u64) {
            let b = self.bufs.remove(&id).expect("freeing a live buffer");
            self.bytes -= b.len();
        }
    }
}
