//! A tiny in-memory `Backend`: three byte vectors as devices, requests
//! completed in order by `drive`. No caches, no faults: just enough to open
//! the engine over a metadata image and to write and commit through it.
//! Shared (by `#[path]`) with the fuzz targets in fuzz/.

#![allow(dead_code)]

use bdev_clone::{
    Backend, BufId, Data, Dev, DevOp, DeviceInfo, Engine, IoError, IoResult, Notice, OpenError,
    OpenInfo, OpenParams, ReqId, UserIo, UserIoId, UserOp,
};
use std::collections::{HashMap, VecDeque};

pub const BS: u32 = 512;

pub struct Mem {
    pub devs: [Vec<u8>; 3],
    done: VecDeque<(ReqId, IoResult)>,
    bufs: HashMap<u64, Vec<u8>>,
    next_buf: u64,
    /// Data of user writes, by id.
    pub user: HashMap<u64, Vec<u8>>,
    pub completed: Vec<(UserIoId, IoResult)>,
    pub notices: Vec<Notice>,
    pub now: u64,
}

fn idx(dev: Dev) -> usize {
    match dev {
        Dev::Source => 0,
        Dev::Dest => 1,
        Dev::Meta => 2,
    }
}

impl Mem {
    pub fn new(devs: [Vec<u8>; 3]) -> Mem {
        Mem {
            devs,
            done: VecDeque::new(),
            bufs: HashMap::new(),
            next_buf: 1,
            user: HashMap::new(),
            completed: Vec::new(),
            notices: Vec::new(),
            now: 1_000_000_000,
        }
    }

    fn data(&mut self, data: Data, len: usize) -> &mut [u8] {
        match data {
            Data::User(id) => &mut self.user.get_mut(&id.0).expect("user data")[..len],
            Data::Buf { buf, offset } => {
                &mut self.bufs.get_mut(&buf.0).expect("live buffer")[offset..offset + len]
            }
        }
    }
}

impl Backend for Mem {
    fn submit(&mut self, id: ReqId, dev: Dev, op: DevOp) {
        let d = idx(dev);
        let size = self.devs[d].len() as u64;
        let bs = BS as u64;
        // An out-of-range request is an engine bug: panic so that tests and
        // the fuzzer see it.
        let range = |off: u64, n: u64| {
            let (a, b) = (off * bs, (off + n) * bs);
            assert!(b <= size, "{dev} request {off}+{n} beyond {size} bytes");
            (a as usize, b as usize)
        };
        let r = match op {
            DevOp::Read {
                offset_blocks,
                num_blocks,
                data,
            } => {
                let (a, b) = range(offset_blocks, num_blocks);
                let src = self.devs[d][a..b].to_vec();
                self.data(data, b - a).copy_from_slice(&src);
                Ok(())
            }
            DevOp::Write {
                offset_blocks,
                num_blocks,
                data,
                ..
            } => {
                let (a, b) = range(offset_blocks, num_blocks);
                let src = self.data(data, b - a).to_vec();
                self.devs[d][a..b].copy_from_slice(&src);
                Ok(())
            }
            DevOp::WriteZeroes {
                offset_blocks,
                num_blocks,
            }
            | DevOp::Unmap {
                offset_blocks,
                num_blocks,
            } => {
                let (a, b) = range(offset_blocks, num_blocks);
                self.devs[d][a..b].fill(0);
                Ok(())
            }
            DevOp::Flush | DevOp::Reset => Ok(()),
        };
        self.done.push_back((id, r));
    }

    fn complete_user(&mut self, io: UserIoId, result: IoResult) {
        self.completed.push((io, result));
    }

    fn alloc_buf(&mut self, len: usize) -> Option<BufId> {
        let id = self.next_buf;
        self.next_buf += 1;
        self.bufs.insert(id, vec![0; len]);
        Some(BufId(id))
    }

    fn buf_mut(&mut self, buf: BufId) -> &mut [u8] {
        self.bufs.get_mut(&buf.0).expect("live buffer")
    }

    fn free_buf(&mut self, buf: BufId) {
        assert!(self.bufs.remove(&buf.0).is_some(), "double free");
    }

    fn copy_user_data(&mut self, io: UserIoId, len: usize, buf: BufId, offset: usize) {
        let data = &self.user.get(&io.0).expect("user data")[..len];
        self.bufs.get_mut(&buf.0).expect("live buffer")[offset..offset + len].copy_from_slice(data);
    }

    fn now_ns(&self) -> u64 {
        self.now
    }

    fn notify(&mut self, notice: Notice) {
        self.notices.push(notice);
    }
}

/// Completes everything the engine has in flight, and what that starts.
pub fn drive(e: &mut Engine<Mem>) {
    while let Some((id, r)) = e.backend_mut().done.pop_front() {
        e.complete(id, r);
    }
}

pub fn info(bytes: usize) -> DeviceInfo {
    DeviceInfo {
        block_size: BS,
        num_blocks: bytes as u64 / BS as u64,
    }
}

/// Opens an engine over the devices; returns it with the outcome.
pub fn open(
    devs: [Vec<u8>; 3],
    tweak: impl FnOnce(&mut OpenParams),
) -> (Engine<Mem>, Result<OpenInfo, OpenError>) {
    let mut p = OpenParams::new(
        info(devs[0].len()),
        info(devs[1].len()),
        info(devs[2].len()),
        0xF00D,
    );
    p.region_size = Some(4096);
    p.page_size = 512;
    p.settings.hydration_enabled = false;
    tweak(&mut p);
    let mut e = Engine::open(Mem::new(devs), p);
    drive(&mut e);
    let opened = e
        .backend_mut()
        .notices
        .iter()
        .find_map(|n| match n {
            Notice::Opened(r) => Some(r.clone()),
            _ => None,
        })
        .expect("open finished");
    (e, opened)
}

/// A user I/O through the engine, driven to completion.
pub fn io(e: &mut Engine<Mem>, id: u64, kind: UserOp, offset: u64, blocks: u64) -> IoResult {
    e.submit(UserIo {
        id: UserIoId(id),
        kind,
        offset_blocks: offset,
        num_blocks: blocks,
    });
    drive(e);
    let at = e
        .backend_mut()
        .completed
        .iter()
        .position(|(i, _)| i.0 == id)
        .expect("completed");
    e.backend_mut().completed.remove(at).1
}

/// Writes `data` (whole blocks) at `offset` blocks.
pub fn write(e: &mut Engine<Mem>, id: u64, offset: u64, data: &[u8]) -> IoResult {
    e.backend_mut().user.insert(id, data.to_vec());
    let r = io(
        e,
        id,
        UserOp::Write { fua: false },
        offset,
        data.len() as u64 / BS as u64,
    );
    e.backend_mut().user.remove(&id);
    r
}

/// Reads `blocks` at `offset`.
pub fn read(e: &mut Engine<Mem>, id: u64, offset: u64, blocks: u64) -> Result<Vec<u8>, IoError> {
    e.backend_mut()
        .user
        .insert(id, vec![0; (blocks * BS as u64) as usize]);
    let r = io(e, id, UserOp::Read, offset, blocks);
    let data = e.backend_mut().user.remove(&id).unwrap();
    r.map(|()| data)
}
