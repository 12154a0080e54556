//! The engine's `Backend` over files. With io_uring (the default when the
//! kernel offers it), reads, writes and flushes are queued on the ring when the
//! engine submits them and run overlapped; `reap` hands finished ones to the
//! driver loop. Without it, each request runs as a plain synchronous call in
//! `submit`. Either way completions wait in `done` for the driver loop to
//! deliver (the engine forbids re-entry from `submit`).

use crate::dev::{Aligned, FileDev, ALIGN};
use crate::uring::{Op, Uring};
use bdev_clone::{Backend, BufId, Data, Dev, DevOp, IoError, IoResult, Notice, ReqId, UserIoId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::io::AsRawFd;
use std::time::Instant;

/// Aligned memory for the engine (O_DIRECT needs it). Only a supplier: the
/// engine's buffer policy (`bdev_clone::buffers`) decides what may be lent,
/// keeps freed buffers for reuse and caps the total. A buffer a queued ring
/// request uses is pinned: freed while pinned, it is dropped at the last
/// unpin (the engine never does this, but the kernel must not write into
/// freed memory whatever the engine does).
#[derive(Default)]
pub struct BufPool {
    live: HashMap<u64, Aligned>,
    pinned: HashMap<u64, u32>,
    orphans: HashSet<u64>,
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
        assert!(self.live.contains_key(&id.0), "freeing a live buffer");
        if self.pinned.contains_key(&id.0) {
            self.orphans.insert(id.0);
        } else {
            self.live.remove(&id.0);
        }
    }

    fn pin(&mut self, id: BufId) {
        *self.pinned.entry(id.0).or_default() += 1;
    }

    fn unpin(&mut self, id: BufId) {
        let n = self.pinned.get_mut(&id.0).expect("pinned buffer");
        *n -= 1;
        if *n == 0 {
            self.pinned.remove(&id.0);
            if self.orphans.remove(&id.0) {
                self.live.remove(&id.0);
            }
        }
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
    /// The pool buffer `ptr` points into.
    buf: Option<BufId>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum JobKind {
    Read,
    Write { fua: bool },
    WriteZeroes,
    Flush,
    Nop,
}

/// The error of `what` on device `dev`, described for the user.
fn describe(d: &FileDev, dev: Dev, at: u64, what: &str, e: std::io::Error) -> (IoError, String) {
    (
        IoError::Io,
        format!("{what} of the {dev} '{}' at byte {at}: {e}", d.shown),
    )
}

/// Runs `j` with synchronous calls (the path without io_uring, and
/// write-zeroes always).
fn run_job(devs: &[FileDev; 3], j: &Job) -> OpResult {
    let d = &devs[idx(j.dev)];
    let os = |what: &str, e| describe(d, j.dev, j.at, what, e);
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

/// Most bytes one ring read or write moves (the rest follows as a short
/// transfer would).
const MAX_RING_IO: usize = 1 << 30;

/// A request on the ring (queued, in the kernel, or between steps).
struct InFlight {
    id: ReqId,
    job: Job,
    /// Bytes transferred so far.
    moved: usize,
    /// A FUA write whose data is written: its `fdatasync` runs.
    syncing: bool,
    /// Aligned stand-in for a buffer O_DIRECT cannot use as it is.
    bounce: Option<Aligned>,
}

impl InFlight {
    /// The kernel's next step for this request.
    fn op(&mut self, fd: i32) -> Op {
        let base = match &mut self.bounce {
            Some(b) => b.as_mut().as_mut_ptr(),
            None => self.job.ptr,
        };
        let len = (self.job.len - self.moved).min(MAX_RING_IO) as u32;
        let at = self.job.at + self.moved as u64;
        // Stays inside the buffer: moved < len.
        let ptr = base.wrapping_add(self.moved);
        match self.job.kind {
            JobKind::Read => Op::Read { fd, ptr, len, at },
            JobKind::Write { .. } if !self.syncing => Op::Write { fd, ptr, len, at },
            _ => Op::DataSync { fd },
        }
    }
}

pub struct FileBackend {
    /// Declared (so dropped) before the buffers: see `Drop`.
    uring: Option<Uring>,
    /// Ring requests by slot (the slot is the ring's user_data).
    slots: Vec<Option<InFlight>>,
    free_slots: Vec<usize>,
    /// Slots waiting for room on the ring (or to resume a short transfer).
    queued: VecDeque<usize>,
    reaped: Vec<(u64, i32)>,
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
    /// `uring`: run reads, writes and flushes on this ring; None runs every
    /// request synchronously in `submit`.
    pub fn new(source: FileDev, dest: FileDev, meta: FileDev, uring: Option<Uring>) -> FileBackend {
        FileBackend {
            uring,
            slots: Vec::new(),
            free_slots: Vec::new(),
            queued: VecDeque::new(),
            reaped: Vec::new(),
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

    /// Requests submitted whose completion is not in `done` yet (always 0
    /// without io_uring).
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    /// Hands queued requests to the kernel and moves the finished ones to
    /// `done`. With `wait`, blocks first until at least one finishes (when
    /// any is in flight): the driver loop's way to wait without spinning.
    pub fn reap(&mut self, wait: bool) -> std::io::Result<()> {
        if self.uring.is_none() {
            return Ok(());
        }
        self.push_queued();
        let ring = self.uring.as_mut().expect("ring");
        ring.submit(wait)?;
        let mut reaped = std::mem::take(&mut self.reaped);
        ring.reap(|ud, res| reaped.push((ud, res)));
        for (ud, res) in reaped.drain(..) {
            self.step(ud as usize, res);
        }
        self.reaped = reaped;
        // Requests that need another step go to the kernel now; the next
        // `reap` submits them.
        self.push_queued();
        Ok(())
    }

    fn finish(&mut self, id: ReqId, result: OpResult) {
        let result = result.map_err(|(e, msg)| {
            self.first_error.get_or_insert(msg);
            e
        });
        self.done.push_back((id, result));
    }

    /// Puts `job` on the ring (queued until there is room).
    fn start(&mut self, id: ReqId, job: Job) {
        let d = &self.devs[idx(job.dev)];
        let mut bounce = None;
        if d.direct && !(job.ptr as usize).is_multiple_of(ALIGN) {
            let mut b = Aligned::new(job.len);
            if matches!(job.kind, JobKind::Write { .. }) {
                // SAFETY: `ptr` points into a live pool buffer of at least
                // `len` bytes, not otherwise borrowed now.
                b.as_mut()
                    .copy_from_slice(unsafe { std::slice::from_raw_parts(job.ptr, job.len) });
            }
            bounce = Some(b);
        }
        if let Some(buf) = job.buf {
            self.pool.pin(buf);
        }
        let f = InFlight {
            id,
            job,
            moved: 0,
            syncing: false,
            bounce,
        };
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.slots[s] = Some(f);
                s
            }
            None => {
                self.slots.push(Some(f));
                self.slots.len() - 1
            }
        };
        self.queued.push_back(slot);
        self.push_queued();
    }

    /// Pushes queued slots onto the ring while it has room.
    fn push_queued(&mut self) {
        while let Some(ring) = self.uring.as_mut() {
            if !ring.has_room() {
                return;
            }
            let Some(slot) = self.queued.pop_front() else {
                return;
            };
            let f = self.slots[slot].as_mut().expect("queued slot");
            let d = &self.devs[idx(f.job.dev)];
            let op = f.op(d.file.as_raw_fd());
            // SAFETY: the memory of a read or write is the bounce buffer,
            // owned by this slot, or a pool buffer pinned by `start`; both
            // live until `step` retires the slot after the completion is
            // reaped, or until `Drop` has drained the ring. The engine does
            // not touch a buffer while its request is in flight. The file
            // stays open as long (`devs` is dropped after the ring drains).
            if let Err(e) = unsafe { ring.push(op, slot as u64) } {
                let r = Err(describe(d, f.job.dev, f.job.at, "io_uring submit", e));
                self.retire(slot, r);
            }
        }
    }

    /// Handles the completion of slot `slot`'s current step.
    fn step(&mut self, slot: usize, res: i32) {
        let f = self.slots[slot].as_mut().expect("slot in flight");
        let d = &self.devs[idx(f.job.dev)];
        let what = match f.job.kind {
            JobKind::Read => "read",
            JobKind::Write { .. } if f.syncing => "fdatasync (FUA)",
            JobKind::Write { .. } => "write",
            _ => "fdatasync",
        };
        if res < 0 {
            if res == -libc::EINTR || res == -libc::EAGAIN {
                self.queued.push_back(slot);
                return;
            }
            let e = std::io::Error::from_raw_os_error(-res);
            let r = Err(describe(d, f.job.dev, f.job.at, what, e));
            return self.retire(slot, r);
        }
        match f.job.kind {
            JobKind::Read | JobKind::Write { .. } if !f.syncing => {
                if res == 0 {
                    // What read_exact_at / write_all_at report.
                    let e = if f.job.kind == JobKind::Read {
                        std::io::Error::from(std::io::ErrorKind::UnexpectedEof)
                    } else {
                        std::io::Error::from(std::io::ErrorKind::WriteZero)
                    };
                    let r = Err(describe(d, f.job.dev, f.job.at, what, e));
                    return self.retire(slot, r);
                }
                f.moved += res as usize;
                if f.moved < f.job.len {
                    self.queued.push_back(slot);
                } else if f.job.kind == (JobKind::Write { fua: true }) {
                    f.syncing = true;
                    self.queued.push_back(slot);
                } else {
                    self.retire(slot, Ok(()));
                }
            }
            _ => self.retire(slot, Ok(())),
        }
    }

    /// Ends slot `slot`'s request with `result`.
    fn retire(&mut self, slot: usize, result: OpResult) {
        let mut f = self.slots[slot].take().expect("slot in flight");
        self.free_slots.push(slot);
        if let (Some(b), JobKind::Read, Ok(())) = (&mut f.bounce, f.job.kind, &result) {
            // SAFETY: `ptr` points into a pool buffer of at least `len` bytes,
            // pinned (so live) until just below, and the kernel is done.
            unsafe { std::slice::from_raw_parts_mut(f.job.ptr, f.job.len) }
                .copy_from_slice(b.as_mut());
        }
        if let Some(buf) = f.job.buf {
            self.pool.unpin(buf);
        }
        self.finish(f.id, result);
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
        let job = |kind, at, len, ptr, buf| Job {
            dev,
            kind,
            at,
            len,
            ptr,
            buf,
        };
        let none = std::ptr::null_mut();
        Ok(match op {
            DevOp::Read {
                offset_blocks,
                num_blocks,
                data,
            } => {
                let (at, len) = range(offset_blocks, num_blocks)?;
                let (ptr, buf) = buffer(&mut self.pool, data, len)?;
                c.read_bytes += len as u64;
                job(JobKind::Read, at, len, ptr, Some(buf))
            }
            DevOp::Write {
                offset_blocks,
                num_blocks,
                data,
                fua,
            } => {
                let (at, len) = range(offset_blocks, num_blocks)?;
                let (ptr, buf) = buffer(&mut self.pool, data, len)?;
                c.write_bytes += len as u64;
                job(JobKind::Write { fua }, at, len, ptr, Some(buf))
            }
            DevOp::WriteZeroes {
                offset_blocks,
                num_blocks,
            } => {
                let (at, len) = range(offset_blocks, num_blocks)?;
                c.write_bytes += len as u64;
                job(JobKind::WriteZeroes, at, len, none, None)
            }
            DevOp::Flush => {
                c.flushes += 1;
                job(JobKind::Flush, 0, 0, none, None)
            }
            // The CLI submits no user I/O, so the engine never discards.
            DevOp::Unmap { .. } => {
                return Err((IoError::Unsupported, "unmap is not supported".into()))
            }
            DevOp::Reset => job(JobKind::Nop, 0, 0, none, None),
        })
    }
}

impl Drop for FileBackend {
    /// The kernel may still read or write buffers of requests in flight (the
    /// run ended on an error): wait for them before the buffers are freed, or
    /// leak the buffers when the ring cannot say.
    fn drop(&mut self) {
        if let Some(ring) = self.uring.as_mut() {
            if !ring.drain() {
                std::mem::forget(std::mem::take(&mut self.pool));
                std::mem::forget(std::mem::take(&mut self.slots));
            }
        }
    }
}

/// The start of `data`'s `len` bytes in the pool, and its buffer.
fn buffer(
    pool: &mut BufPool,
    data: Data,
    len: usize,
) -> Result<(*mut u8, BufId), (IoError, String)> {
    match data {
        Data::Buf { buf, offset } => {
            let b = pool.get(buf);
            let s = b.get_mut(offset..offset + len).ok_or((
                IoError::Invalid,
                "request larger than its buffer".to_string(),
            ))?;
            Ok((s.as_mut_ptr(), buf))
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
        match self.resolve(dev, op) {
            Ok(job)
                if self.uring.is_some()
                    && matches!(
                        job.kind,
                        JobKind::Read | JobKind::Write { .. } | JobKind::Flush
                    ) =>
            {
                self.start(id, job)
            }
            Ok(job) => {
                let r = run_job(&self.devs, &job);
                self.finish(id, r);
            }
            Err(e) => self.finish(id, Err(e)),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::OpenHow;
    use std::path::Path;

    fn dev(path: &Path, role: &str, bytes: &[u8], write: bool) -> FileDev {
        std::fs::write(path, bytes).unwrap();
        let how = OpenHow {
            write,
            direct: true,
            block_size: None,
        };
        FileDev::open(path, role, how).unwrap()
    }

    /// Submits `ops` at once, then reaps until all completed; the results in
    /// request order.
    fn run(b: &mut FileBackend, ops: Vec<(Dev, DevOp)>) -> Vec<IoResult> {
        let n = ops.len();
        for (i, (d, op)) in ops.into_iter().enumerate() {
            b.submit(ReqId(i as u64), d, op);
        }
        let mut out = vec![None; n];
        let mut got = 0;
        while got < n {
            while let Some((id, r)) = b.done.pop_front() {
                out[id.0 as usize] = Some(r);
                got += 1;
            }
            if got < n {
                assert!(b.in_flight() > 0, "a request vanished");
                b.reap(true).unwrap();
            }
        }
        out.into_iter().map(Option::unwrap).collect()
    }

    /// The same requests through the ring and through synchronous calls:
    /// unaligned buffer offsets (bounce buffers under O_DIRECT), FUA writes,
    /// flushes, write-zeroes, out-of-range requests, and a buffer freed while
    /// its read is in flight.
    #[test]
    fn ring_and_sync_paths() {
        for ring in [true, false] {
            let uring = if ring {
                match Uring::new() {
                    Ok(u) => Some(u),
                    Err(e) => {
                        eprintln!("io_uring not available ({e}): only the synchronous path");
                        continue;
                    }
                }
            } else {
                None
            };
            let dir = std::env::temp_dir()
                .join(format!("bdev-clone-backend-{}-{ring}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let pattern: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
            let src = dev(&dir.join("src"), "source", &pattern, false);
            let dst = dev(&dir.join("dst"), "destination", &vec![0xEE; 1 << 20], true);
            let meta = dev(&dir.join("meta"), "metadata", &[0; 65536], true);
            let mut b = FileBackend::new(src, dst, meta, uring);
            let len = 256 << 10;
            let buf = b.alloc_buf(len + 4096).unwrap();
            let aligned = b.alloc_buf(len).unwrap();
            let rd = |off: u64, data| DevOp::Read {
                offset_blocks: off,
                num_blocks: (len / 512) as u64,
                data,
            };
            let at512 = Data::Buf { buf, offset: 512 };
            let whole = Data::Buf {
                buf: aligned,
                offset: 0,
            };
            let r = run(
                &mut b,
                vec![
                    (Dev::Source, rd(8, at512)),
                    (Dev::Source, rd(1024, whole)),
                    (Dev::Source, rd(2047, whole)),
                ],
            );
            assert_eq!(r, vec![Ok(()), Ok(()), Err(IoError::Invalid)]);
            assert!(b.first_error.take().unwrap().contains("out of range"));
            assert_eq!(&b.buf_mut(buf)[512..512 + len], &pattern[4096..4096 + len]);
            assert_eq!(b.buf_mut(aligned), &pattern[512 << 10..(512 << 10) + len]);
            let wr = |off: u64, data, fua| DevOp::Write {
                offset_blocks: off,
                num_blocks: (len / 512) as u64,
                data,
                fua,
            };
            let r = run(
                &mut b,
                vec![
                    (Dev::Dest, wr(0, at512, true)),
                    (Dev::Dest, wr(1024, whole, false)),
                    (
                        Dev::Dest,
                        DevOp::WriteZeroes {
                            offset_blocks: 1536,
                            num_blocks: 8,
                        },
                    ),
                ],
            );
            assert_eq!(r, vec![Ok(()); 3]);
            assert_eq!(run(&mut b, vec![(Dev::Dest, DevOp::Flush)]), vec![Ok(())]);
            let d = std::fs::read(dir.join("dst")).unwrap();
            assert_eq!(&d[..len], &pattern[4096..4096 + len]);
            assert!(d[len..512 << 10].iter().all(|&x| x == 0xEE));
            assert_eq!(&d[512 << 10..(512 << 10) + len], b.buf_mut(aligned));
            assert!(d[768 << 10..(768 << 10) + 4096].iter().all(|&x| x == 0));
            assert!(d[(768 << 10) + 4096..].iter().all(|&x| x == 0xEE));
            assert_eq!(b.counters[1].flushes, 1);
            // Freed while its read is in flight: kept until the completion.
            b.submit(ReqId(0), Dev::Source, rd(0, whole));
            b.free_buf(aligned);
            assert_eq!(b.pool.live.len(), 2 - usize::from(!ring));
            while b.done.is_empty() {
                b.reap(true).unwrap();
            }
            assert_eq!(b.done.pop_front(), Some((ReqId(0), Ok(()))));
            assert_eq!(b.pool.live.len(), 1);
            b.free_buf(buf);
            drop(b);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
