//! The engine's `Backend` over files: each request is executed with a plain
//! synchronous call when the engine submits it, and its completion is queued
//! for the driver loop to deliver (the engine forbids re-entry from `submit`).
//! A worker-thread pool was measured against this and did not beat it
//! measurably (docs/cli.md), so there is none.

use crate::dev::{Aligned, FileDev, ALIGN};
use bdev_clone::{Backend, BufId, Data, Dev, DevOp, IoError, IoResult, Notice, ReqId, UserIoId};
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// Aligned memory for the engine (O_DIRECT needs it). Only a supplier: the
/// engine's buffer policy (`bdev_clone::buffers`) decides what may be lent,
/// keeps freed buffers for reuse and caps the total.
#[derive(Default)]
pub struct BufPool {
    live: HashMap<u64, Aligned>,
    next: u64,
}

impl BufPool {
    fn alloc(&mut self, len: usize) -> Option<BufId> {
        self.next += 1;
        self.live.insert(self.next, Aligned::new(len));
        Some(BufId(self.next))
    }

    fn get(&mut self, id: BufId) -> &mut [u8] {
        self.live.get_mut(&id.0).expect("live buffer").as_mut()
    }

    fn free(&mut self, id: BufId) {
        self.live.remove(&id.0).expect("freeing a live buffer");
    }
}

#[derive(Default, Clone, Copy, Debug)]
pub struct IoCounters {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub flushes: u64,
}

fn idx(dev: Dev) -> usize {
    match dev {
        Dev::Source => 0,
        Dev::Dest => 1,
        Dev::Meta => 2,
    }
}

type OpResult = Result<(), (IoError, String)>;

/// One resolved request: byte range and a raw view of its buffer (a raw
/// pointer so that the buffer pool is not borrowed while the device runs it).
struct Job {
    dev: Dev,
    kind: JobKind,
    at: u64,
    len: usize,
    ptr: *mut u8,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum JobKind {
    Read,
    Write { fua: bool },
    WriteZeroes,
    Flush,
    Nop,
}

fn run_job(devs: &[FileDev; 3], j: &Job) -> OpResult {
    let d = &devs[idx(j.dev)];
    let dev = j.dev;
    let os = |what: &str, e: std::io::Error| {
        (
            IoError::Io,
            format!("{what} of the {dev} '{}' at byte {}: {e}", d.shown, j.at),
        )
    };
    // SAFETY: `ptr` points into a live pool buffer of at least `len` bytes
    // (resolved just before), and nothing else uses it during the call.
    let buf = || unsafe { std::slice::from_raw_parts_mut(j.ptr, j.len) };
    match j.kind {
        JobKind::Read => {
            io_aligned(d.direct, buf(), |b| d.read_at(b, j.at), false).map_err(|e| os("read", e))
        }
        JobKind::Write { fua } => {
            io_aligned(d.direct, buf(), |b| d.write_at(b, j.at), true)
                .map_err(|e| os("write", e))?;
            if fua {
                d.flush().map_err(|e| os("fdatasync (FUA)", e))?;
            }
            Ok(())
        }
        JobKind::WriteZeroes => {
            let mut zero = Aligned::new(j.len.min(1 << 20));
            let mut done = 0;
            while done < j.len {
                let n = (j.len - done).min(zero.capacity());
                zero.set_len(n);
                d.write_at(zero.as_mut(), j.at + done as u64)
                    .map_err(|e| os("write", e))?;
                done += n;
            }
            Ok(())
        }
        JobKind::Flush => d.flush().map_err(|e| os("fdatasync", e)),
        JobKind::Nop => Ok(()),
    }
}

pub struct FileBackend {
    devs: [FileDev; 3],
    pool: BufPool,
    /// Completions waiting to be delivered to the engine.
    pub done: VecDeque<(ReqId, IoResult)>,
    pub notices: Vec<Notice>,
    /// The first device error, described for the user.
    pub first_error: Option<String>,
    pub counters: [IoCounters; 3],
    start: Instant,
}

impl FileBackend {
    pub fn new(source: FileDev, dest: FileDev, meta: FileDev) -> FileBackend {
        FileBackend {
            devs: [source, dest, meta],
            pool: BufPool::default(),
            done: VecDeque::new(),
            notices: Vec::new(),
            first_error: None,
            counters: Default::default(),
            start: Instant::now(),
        }
    }

    pub fn dev(&self, dev: Dev) -> &FileDev {
        &self.devs[idx(dev)]
    }

    fn resolve(&mut self, dev: Dev, op: DevOp) -> Result<Job, (IoError, String)> {
        let d = &self.devs[idx(dev)];
        let c = &mut self.counters[idx(dev)];
        let bs = d.block_size as u64;
        let range = |off: u64, n: u64| -> Result<(u64, usize), (IoError, String)> {
            match off.checked_add(n).and_then(|end| end.checked_mul(bs)) {
                Some(end) if n > 0 && end <= d.size => Ok((off * bs, (n * bs) as usize)),
                _ => Err((
                    IoError::Invalid,
                    format!("request out of range of the {dev} device: blocks {off}+{n}"),
                )),
            }
        };
        let job = |kind, at, len, ptr| Job {
            dev,
            kind,
            at,
            len,
            ptr,
        };
        Ok(match op {
            DevOp::Read {
                offset_blocks,
                num_blocks,
                data,
            } => {
                let (at, len) = range(offset_blocks, num_blocks)?;
                let ptr = buffer(&mut self.pool, data, len)?.as_mut_ptr();
                c.read_bytes += len as u64;
                job(JobKind::Read, at, len, ptr)
            }
            DevOp::Write {
                offset_blocks,
                num_blocks,
                data,
                fua,
            } => {
                let (at, len) = range(offset_blocks, num_blocks)?;
                let ptr = buffer(&mut self.pool, data, len)?.as_mut_ptr();
                c.write_bytes += len as u64;
                job(JobKind::Write { fua }, at, len, ptr)
            }
            DevOp::WriteZeroes {
                offset_blocks,
                num_blocks,
            } => {
                let (at, len) = range(offset_blocks, num_blocks)?;
                c.write_bytes += len as u64;
                job(JobKind::WriteZeroes, at, len, std::ptr::null_mut())
            }
            DevOp::Flush => {
                c.flushes += 1;
                job(JobKind::Flush, 0, 0, std::ptr::null_mut())
            }
            // The CLI submits no user I/O, so the engine never discards.
            DevOp::Unmap { .. } => {
                return Err((IoError::Unsupported, "unmap is not supported".into()))
            }
            DevOp::Reset => job(JobKind::Nop, 0, 0, std::ptr::null_mut()),
        })
    }
}

fn buffer(pool: &mut BufPool, data: Data, len: usize) -> Result<&mut [u8], (IoError, String)> {
    match data {
        Data::Buf { buf, offset } => {
            let b = pool.get(buf);
            b.get_mut(offset..offset + len).ok_or((
                IoError::Invalid,
                "request larger than its buffer".to_string(),
            ))
        }
        Data::User(_) => Err((
            IoError::Invalid,
            "user I/O is not supported by the CLI".to_string(),
        )),
    }
}

/// Runs `f` on `buf`, through an aligned bounce buffer when O_DIRECT needs an
/// alignment `buf` lacks.
fn io_aligned(
    direct: bool,
    buf: &mut [u8],
    f: impl FnOnce(&mut [u8]) -> std::io::Result<()>,
    is_write: bool,
) -> std::io::Result<()> {
    if !direct || (buf.as_ptr() as usize).is_multiple_of(ALIGN) {
        return f(buf);
    }
    let mut bounce = Aligned::new(buf.len());
    if is_write {
        bounce.as_mut().copy_from_slice(buf);
    }
    f(bounce.as_mut())?;
    if !is_write {
        buf.copy_from_slice(bounce.as_mut());
    }
    Ok(())
}

impl Backend for FileBackend {
    fn submit(&mut self, id: ReqId, dev: Dev, op: DevOp) {
        let result = match self.resolve(dev, op) {
            Ok(job) => run_job(&self.devs, &job),
            Err(e) => Err(e),
        };
        let result = result.map_err(|(e, msg)| {
            self.first_error.get_or_insert(msg);
            e
        });
        self.done.push_back((id, result));
    }

    fn complete_user(&mut self, _io: UserIoId, _result: IoResult) {}

    fn alloc_buf(&mut self, len: usize) -> Option<BufId> {
        self.pool.alloc(len)
    }

    fn buf_mut(&mut self, buf: BufId) -> &mut [u8] {
        self.pool.get(buf)
    }

    fn free_buf(&mut self, buf: BufId) {
        self.pool.free(buf)
    }

    fn copy_user_data(&mut self, _: UserIoId, _: usize, _: BufId, _: usize) {
        unreachable!("the CLI submits no user writes to the engine")
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn notify(&mut self, notice: Notice) {
        self.notices.push(notice);
    }
}
