//! The clone engine: routes user I/O, hydrates regions, and commits metadata
//! with the destination flushed first. Single-threaded and polled; it talks to
//! devices only through [`Backend`].
//!
//! Invariants (checked by the simulator's oracle):
//! - a region's bit is set in memory only after its data is on the destination
//!   (copy written, or a write that covers the whole region completed);
//! - a commit snapshots the dirty pages *before* it flushes the destination,
//!   and writes them only after that flush completed, so a persisted bit always
//!   names data that was durable first;
//! - a user write is acknowledged only after its region's bit is set, so a
//!   flush that completes after the ack also commits the region.

use crate::geometry::{DeviceInfo, Geometry, GeometryError, DEFAULT_REGION_SIZE};
use crate::io::*;
use crate::metadata::{self, Layout, SbError, Superblock, DEFAULT_PAGE_SIZE};
use crate::region_map::RegionMap;
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Run-time tunables (all can change while the clone runs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub hydration_enabled: bool,
    /// Regions being copied at once by the background hydrator.
    pub hydration_threshold: u32,
    /// Contiguous regions per copy request.
    pub hydration_batch_size: u32,
    /// Background hydration rate limit; 0 = unlimited.
    pub max_bandwidth_mb_sec: u64,
    /// Rate limit while user I/O is running (seen in the last 50 ms), so
    /// that hydration yields to it; 0 = the same as max_bandwidth_mb_sec.
    /// Hydration runs at full speed whenever the clone is idle.
    pub max_bandwidth_busy_mb_sec: u64,
    pub commit_interval_ms: u64,
    pub discard_passdown: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            hydration_enabled: true,
            hydration_threshold: 32,
            hydration_batch_size: 8,
            max_bandwidth_mb_sec: 0,
            max_bandwidth_busy_mb_sec: 64,
            commit_interval_ms: 1000,
            discard_passdown: true,
        }
    }
}

/// What `open` needs to know.
#[derive(Clone, Debug)]
pub struct OpenParams {
    /// None when the source is gone; accepted only if the metadata says it was
    /// released.
    pub source: Option<DeviceInfo>,
    pub dest: DeviceInfo,
    pub meta: DeviceInfo,
    /// None: the stored size when resuming, the default when formatting.
    pub region_size: Option<u32>,
    pub page_size: u32,
    /// Replace metadata that belongs to other devices or is corrupt.
    pub format: bool,
    pub uuid: [u8; 16],
    /// Random per format; keeps pages of earlier formats out.
    pub nonce: u64,
    /// Host identities of the devices (bdev UUIDs); all-zero = unknown.
    pub source_id: [u8; 16],
    pub dest_id: [u8; 16],
    pub source_name: String,
    pub dest_name: String,
    pub settings: Settings,
}

impl OpenParams {
    pub fn new(source: DeviceInfo, dest: DeviceInfo, meta: DeviceInfo, nonce: u64) -> Self {
        OpenParams {
            source: Some(source),
            dest,
            meta,
            region_size: None,
            page_size: DEFAULT_PAGE_SIZE,
            format: false,
            uuid: [0; 16],
            nonce,
            source_id: [0; 16],
            dest_id: [0; 16],
            source_name: String::new(),
            dest_name: String::new(),
            settings: Settings::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenInfo {
    pub geometry: Geometry,
    pub formatted: bool,
    pub uuid: [u8; 16],
    pub regions_hydrated: u64,
    pub source_released: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenError {
    Geometry(GeometryError),
    MetaTooSmall {
        need: u64,
        have: u64,
    },
    BadPageSize(u32),
    /// Valid metadata of other devices or another geometry.
    Mismatch(String),
    Corrupt(String),
    Io(Dev, IoError),
    SourceMissing,
    /// The host's buffer pool could not lend the buffers opening needs.
    NoMemory,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Geometry(e) => e.fmt(f),
            OpenError::MetaTooSmall { need, have } => write!(
                f,
                "metadata device too small: needs {need} bytes, has {have}"
            ),
            OpenError::BadPageSize(p) => write!(
                f,
                "metadata page size {p} must be a power of two from 64 and a multiple of the \
                 metadata block size"
            ),
            OpenError::Mismatch(m) => write!(f, "{m}; pass format to overwrite it"),
            OpenError::Corrupt(m) => write!(
                f,
                "metadata corrupt: {m}; pass format to reformat (this forgets hydration progress \
                 and any data written to the clone)"
            ),
            OpenError::Io(dev, e) => write!(f, "{e} on the {dev} device while opening"),
            OpenError::SourceMissing => {
                write!(
                    f,
                    "no source given and the metadata does not say it was released"
                )
            }
            OpenError::NoMemory => write!(f, "out of buffers while opening"),
        }
    }
}

impl std::error::Error for OpenError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloneState {
    Opening,
    Hydrating,
    Paused,
    Hydrated,
    SourceReleased,
    /// Metadata can no longer be committed: writes refused, reads served.
    ReadOnly,
    /// The destination failed a flush: writes refused, reads served.
    Failed,
}

impl CloneState {
    pub fn as_str(self) -> &'static str {
        match self {
            CloneState::Opening => "opening",
            CloneState::Hydrating => "hydrating",
            CloneState::Paused => "paused",
            CloneState::Hydrated => "hydrated",
            CloneState::SourceReleased => "source_released",
            CloneState::ReadOnly => "read_only",
            CloneState::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub regions_hydrated: u64,
    pub regions_hydrating: u64,
    pub bytes_hydrated: u64,
    pub hydration_errors: u64,
    pub commits: u64,
    pub dest_flushes: u64,
    pub meta_bytes_written: u64,
    /// Bytes per second of hydration over the last window.
    pub rate_bytes_sec: u64,
    /// How long hydration has run (state hydrating, paused time excluded)
    /// since the clone was opened.
    pub hydration_ns: u64,
}

#[derive(Clone, Debug)]
pub struct Status {
    pub state: CloneState,
    pub error: Option<String>,
    pub geometry: Geometry,
    pub regions_total: u64,
    pub stats: Stats,
    pub eta_sec: Option<u64>,
    pub settings: Settings,
    pub committed_seq: u64,
}

impl Status {
    pub fn percent(&self) -> f64 {
        if self.regions_total == 0 {
            return 100.0;
        }
        self.stats.regions_hydrated as f64 * 100.0 / self.regions_total as f64
    }
}

/// State that threads other than the engine's may read without a lock: the
/// SPDK glue routes reads and hydrated writes with it on every thread.
#[derive(Debug)]
pub struct Shared {
    pub map: RegionMap,
    pub geometry: Geometry,
    writes_allowed: AtomicBool,
    /// Set while background hydration runs: only then are user I/Os counted
    /// (for the busy rate limit), so a hydrated clone pays nothing.
    hydrating: AtomicBool,
    user_ios: AtomicU64,
}

/// Where an I/O can go without the engine's help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Dest,
    Source,
    /// Needs the engine: hydration, lock, commit or fan-out.
    Engine,
    Reject(IoError),
}

impl Shared {
    /// Routing state for a geometry, nothing hydrated, writes allowed (the
    /// engine makes its own; this one serves benchmarks and tests).
    pub fn new(geometry: Geometry) -> Shared {
        Shared {
            map: RegionMap::new(geometry.region_count),
            geometry,
            writes_allowed: AtomicBool::new(true),
            hydrating: AtomicBool::new(false),
            user_ios: AtomicU64::new(0),
        }
    }

    /// The routing decision for one user I/O; the same rule serves the
    /// engine's own submit and the SPDK fast path.
    #[inline]
    pub fn route(&self, io: &UserIo) -> Route {
        if self.hydrating.load(Ordering::Relaxed) {
            self.user_ios.fetch_add(1, Ordering::Relaxed);
        }
        let g = &self.geometry;
        if !g.in_bounds(io.offset_blocks, io.num_blocks) {
            return Route::Reject(IoError::Invalid);
        }
        let single = || {
            io.num_blocks > 0
                && g.region_of(io.offset_blocks)
                    == g.region_of(io.offset_blocks + io.num_blocks - 1)
        };
        match io.kind {
            UserOp::Read => {
                if !single() {
                    Route::Reject(IoError::Invalid)
                } else if self.map.is_hydrated(g.region_of(io.offset_blocks)) {
                    Route::Dest
                } else {
                    Route::Source
                }
            }
            UserOp::Write { fua } => {
                if !single() {
                    Route::Reject(IoError::Invalid)
                } else if !self.writes_allowed.load(Ordering::Acquire) {
                    Route::Reject(IoError::ReadOnly)
                } else if !fua && self.map.is_hydrated(g.region_of(io.offset_blocks)) {
                    Route::Dest
                } else {
                    Route::Engine
                }
            }
            _ => Route::Engine,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Parent {
    User(UserIoId),
    Fanout(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RegionOpKind {
    Write { fua: bool },
    WriteZeroes,
    Unmap,
}

/// A write-like operation inside one region.
#[derive(Clone, Copy, Debug)]
struct RegionOp {
    parent: Parent,
    kind: RegionOpKind,
    region: u64,
    offset: u64,
    blocks: u64,
}

struct RegionLock {
    /// Set while a copy or a whole-region overwrite fills the region.
    waiters: VecDeque<RegionOp>,
    /// Part of a copy in flight (false for a whole-region overwrite, or a copy
    /// still waiting for a buffer).
    copying: bool,
}

struct Copy {
    first: u64,
    count: u64,
    blocks: u64,
    buf: BufId,
    background: bool,
    /// The partial write that needed this copy, its data patched into the
    /// buffer between the source read and the destination write: one
    /// destination write instead of two, and the write completes with the copy.
    merged: Option<RegionOp>,
}

struct Fanout {
    io: UserIoId,
    remaining: usize,
    result: IoResult,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CommitStep {
    DestFlush,
    Pages,
    MetaFlush,
    Superblock,
    FinalFlush,
}

struct Commit {
    seq: u64,
    waiters: Vec<UserIoId>,
    /// (page, slot written, buffer, snapshot of the page's words)
    pages: Vec<(u32, u8, BufId, Vec<u64>)>,
    write_sb: bool,
    sb_buf: Option<BufId>,
    flags: u32,
    step: CommitStep,
    outstanding: usize,
    error: Option<(Dev, IoError)>,
}

enum OpenStep {
    ReadSuperblocks,
    ZeroSlot1,
    FlushZero,
    WriteSlot0,
    FlushSlot0,
    ReadPages {
        outstanding: usize,
    },
    /// What was read may still sit in the device's volatile cache (a format
    /// whose flush failed, say): make it durable before building on it.
    FlushLoaded,
}

enum Req {
    /// A user read or a reset, completed as the device completes it.
    User(UserIoId),
    /// A region op sent to the destination; `fills` when it overwrites a whole
    /// unhydrated region and holds its lock.
    Region {
        op: RegionOp,
        fills: bool,
    },
    CopyRead(usize),
    CopyWrite(usize),
    Commit,
    /// A metadata request while opening; `buf` is None for a flush.
    Open {
        buf: Option<BufId>,
        offset: u64,
        len: u64,
    },
}

struct Opening {
    params: OpenParams,
    step: OpenStep,
    sb: Option<Superblock>,
    formatted: bool,
    error: Option<OpenError>,
}

struct Meta {
    layout: Layout,
    nonce: u64,
    uuid: [u8; 16],
    seq: u64,
    sb_slot: u8,
    page_slot: Vec<u8>,
    flags: u32,
    sb_template: Superblock,
    dirty: Vec<bool>,
    dirty_list: Vec<u32>,
    /// The superblock must be written even if no page changed.
    sb_dirty: bool,
}

pub struct Engine<B: Backend> {
    backend: B,
    shared: Arc<Shared>,
    settings: Settings,
    meta: Meta,
    committed: Vec<u64>,
    state: CloneState,
    error: Option<String>,
    opening: Option<Opening>,
    reqs: Slab<Req>,
    copies: Slab<Copy>,
    fanouts: Slab<Fanout>,
    locks: HashMap<u64, RegionLock>,
    /// Regions locked for a user write whose copy waits for a buffer.
    copy_backlog: VecDeque<u64>,
    commit: Option<Commit>,
    flush_waiters: Vec<UserIoId>,
    commit_wanted: bool,
    last_commit_ns: u64,
    cursor: u64,
    background_in_flight: u64,
    tokens: f64,
    last_refill_ns: u64,
    retry_after_ns: u64,
    releasing: bool,
    stopping: bool,
    stats: Stats,
    rate_window: (u64, u64),
    /// When `stats.hydration_ns` was last brought up to date.
    hydration_clock_ns: u64,
    user_in_flight: u64,
    /// User I/O count at the last sample, and until when the clone counts as busy.
    busy_sample: (u64, u64),
    meta_bs: u32,
}

impl<B: Backend> Engine<B> {
    /// Starts opening the clone: reads the metadata, then formats it or loads
    /// it. `Notice::Opened` reports the outcome; until then user I/O is
    /// refused.
    pub fn open(backend: B, params: OpenParams) -> Engine<B> {
        let placeholder = Geometry {
            block_size: 512,
            region_size: 512,
            num_blocks: 0,
            dest_blocks: 0,
            region_count: 0,
        };
        let now = backend.now_ns();
        let mut e = Engine {
            backend,
            shared: Arc::new({
                let s = Shared::new(placeholder);
                s.writes_allowed.store(false, Ordering::Release);
                s
            }),
            settings: params.settings.clone(),
            meta: Meta {
                layout: Layout::new(params.meta.block_size.max(1), DEFAULT_PAGE_SIZE, 0),
                nonce: 0,
                uuid: [0; 16],
                seq: 0,
                sb_slot: 0,
                page_slot: Vec::new(),
                flags: 0,
                sb_template: empty_sb(),
                dirty: Vec::new(),
                dirty_list: Vec::new(),
                sb_dirty: false,
            },
            committed: Vec::new(),
            state: CloneState::Opening,
            error: None,
            opening: None,
            reqs: Slab::new(),
            copies: Slab::new(),
            fanouts: Slab::new(),
            locks: HashMap::new(),
            copy_backlog: VecDeque::new(),
            commit: None,
            flush_waiters: Vec::new(),
            commit_wanted: false,
            last_commit_ns: now,
            cursor: 0,
            background_in_flight: 0,
            tokens: 0.0,
            last_refill_ns: now,
            retry_after_ns: 0,
            releasing: false,
            stopping: false,
            stats: Stats::default(),
            rate_window: (now, 0),
            hydration_clock_ns: now,
            user_in_flight: 0,
            busy_sample: (0, 0),
            meta_bs: params.meta.block_size.max(1),
        };
        let meta_bs = params.meta.block_size;
        let page_size = params.page_size;
        let meta_bytes = params.meta.bytes();
        e.opening = Some(Opening {
            params,
            step: OpenStep::ReadSuperblocks,
            sb: None,
            formatted: false,
            error: None,
        });
        if !metadata::valid_page_size(page_size)
            || meta_bs == 0
            || !page_size.is_multiple_of(meta_bs)
        {
            e.open_failed(OpenError::BadPageSize(page_size));
            return e;
        }
        let need = 2 * Layout::new(meta_bs, page_size, 0).sb_area;
        if meta_bytes < need {
            e.open_failed(OpenError::MetaTooSmall {
                need,
                have: meta_bytes,
            });
            return e;
        }
        e.open_io(DevOpKind::Read, 0, need);
        e
    }

    /// The host, for what it keeps of its own (its queues, its devices).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Ends the engine and hands back its host (after a simulated crash, say).
    pub fn into_backend(self) -> B {
        self.backend
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn geometry(&self) -> Geometry {
        self.shared.geometry
    }

    pub fn state(&self) -> CloneState {
        self.state
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// True when nothing is in flight that the engine started (copies,
    /// commits, user requests): used by hosts before tearing down.
    pub fn idle(&self) -> bool {
        self.reqs.is_empty() && self.commit.is_none()
    }

    pub fn status(&self) -> Status {
        let g = self.shared.geometry;
        let mut stats = self.stats.clone();
        stats.regions_hydrated = self.shared.map.count_hydrated();
        stats.regions_hydrating = self.locks.values().filter(|l| l.copying).count() as u64;
        stats.hydration_ns = self.hydration_ns_at(self.backend.now_ns());
        let remaining = g.region_count - stats.regions_hydrated;
        let eta_sec = if remaining == 0 {
            Some(0)
        } else {
            (remaining * g.region_size as u64).checked_div(stats.rate_bytes_sec)
        };
        Status {
            state: self.state,
            error: self.error.clone(),
            geometry: g,
            regions_total: g.region_count,
            stats,
            eta_sec,
            settings: self.settings.clone(),
            committed_seq: self.meta.seq,
        }
    }

    /// Changes run-time settings; takes effect at the next poll.
    pub fn set_settings(&mut self, settings: Settings) {
        self.tick_hydration_clock();
        self.settings = settings;
        if matches!(self.state, CloneState::Hydrating | CloneState::Paused) {
            self.state = if self.settings.hydration_enabled {
                CloneState::Hydrating
            } else {
                CloneState::Paused
            };
        }
        self.note_hydrating();
    }

    /// Releases the source once everything is hydrated: commits a superblock
    /// that says so. `Notice::SourceReleased` reports the outcome; after a
    /// success the engine never reads the source again.
    pub fn release_source(&mut self) -> Result<(), String> {
        match self.state {
            CloneState::SourceReleased => return Err("source already released".into()),
            CloneState::Hydrated => {}
            CloneState::ReadOnly | CloneState::Failed => {
                return Err(format!("clone is {}", self.state.as_str()))
            }
            _ => {
                let s = self.status();
                return Err(format!(
                    "clone not fully hydrated ({} of {} regions)",
                    s.stats.regions_hydrated, s.regions_total
                ));
            }
        }
        if self.releasing {
            return Err("release already in progress".into());
        }
        self.releasing = true;
        self.meta.flags |= metadata::FLAG_SOURCE_RELEASED;
        self.meta.sb_dirty = true;
        self.commit_wanted = true;
        self.start_commit();
        Ok(())
    }

    /// Stops hydration, lets what is in flight finish, commits, then sends
    /// `Notice::Stopped`. The host must not submit user I/O after calling it.
    pub fn shutdown(&mut self) {
        self.stopping = true;
        if self.opening.is_some() {
            return; // finishes opening first; poll() completes the stop
        }
        self.commit_wanted = self.meta.sb_dirty || !self.meta.dirty_list.is_empty();
        self.poll();
    }

    // ---------------------------------------------------------------- user I/O

    pub fn submit(&mut self, io: UserIo) {
        if self.opening.is_some() || self.stopping {
            self.backend.complete_user(io.id, Err(IoError::NoDevice));
            return;
        }
        match self.shared.route(&io) {
            Route::Reject(e) => self.backend.complete_user(io.id, Err(e)),
            Route::Dest => self.submit_user_passthrough(io, Dev::Dest),
            Route::Source => self.submit_user_passthrough(io, Dev::Source),
            Route::Engine => self.submit_slow(io),
        }
    }

    fn submit_user_passthrough(&mut self, io: UserIo, dev: Dev) {
        let op = match io.kind {
            UserOp::Read => DevOp::Read {
                offset_blocks: io.offset_blocks,
                num_blocks: io.num_blocks,
                data: Data::User(io.id),
            },
            UserOp::Write { fua } => DevOp::Write {
                offset_blocks: io.offset_blocks,
                num_blocks: io.num_blocks,
                data: Data::User(io.id),
                fua,
            },
            _ => unreachable!("only reads and writes pass through"),
        };
        self.user_in_flight += 1;
        self.send(dev, op, Req::User(io.id));
    }

    fn submit_slow(&mut self, io: UserIo) {
        let g = self.shared.geometry;
        let writable = self.shared.writes_allowed.load(Ordering::Acquire);
        match io.kind {
            UserOp::Read => unreachable!("reads always route"),
            UserOp::Flush => {
                if !writable {
                    self.backend.complete_user(io.id, Err(IoError::ReadOnly));
                    return;
                }
                self.flush_waiters.push(io.id);
                self.commit_wanted = true;
                self.start_commit();
            }
            UserOp::Reset => {
                self.user_in_flight += 1;
                self.send(Dev::Dest, DevOp::Reset, Req::User(io.id));
            }
            UserOp::Write { fua } => self.dispatch_region_op(RegionOp {
                parent: Parent::User(io.id),
                kind: RegionOpKind::Write { fua },
                region: g.region_of(io.offset_blocks),
                offset: io.offset_blocks,
                blocks: io.num_blocks,
            }),
            UserOp::WriteZeroes | UserOp::Unmap => {
                if !writable {
                    self.backend.complete_user(io.id, Err(IoError::ReadOnly));
                    return;
                }
                let kind = if io.kind == UserOp::Unmap {
                    RegionOpKind::Unmap
                } else {
                    RegionOpKind::WriteZeroes
                };
                let regions = g.regions_touched(io.offset_blocks, io.num_blocks);
                if regions.is_empty() {
                    self.backend.complete_user(io.id, Ok(()));
                    return;
                }
                let parent = if regions.end - regions.start == 1 {
                    Parent::User(io.id)
                } else {
                    Parent::Fanout(self.fanouts.insert(Fanout {
                        io: io.id,
                        remaining: (regions.end - regions.start) as usize,
                        result: Ok(()),
                    }))
                };
                let end = io.offset_blocks + io.num_blocks;
                for region in regions {
                    let (start, len) = g.region_extent(region);
                    let lo = start.max(io.offset_blocks);
                    let hi = (start + len).min(end);
                    self.dispatch_region_op(RegionOp {
                        parent,
                        kind,
                        region,
                        offset: lo,
                        blocks: hi - lo,
                    });
                }
            }
        }
    }

    fn dispatch_region_op(&mut self, op: RegionOp) {
        if !self.shared.writes_allowed.load(Ordering::Acquire) {
            self.finish(op.parent, Err(IoError::ReadOnly));
            return;
        }
        let r = op.region;
        if self.shared.map.is_hydrated(r) {
            if op.kind == RegionOpKind::Unmap && !self.settings.discard_passdown {
                self.finish(op.parent, Ok(()));
            } else {
                self.send_region_op(op, false);
            }
            return;
        }
        if let Some(lock) = self.locks.get_mut(&r) {
            lock.waiters.push_back(op);
            return;
        }
        let full = self.shared.geometry.covers_region(op.offset, op.blocks);
        match (op.kind, full) {
            // Discarding part of an unhydrated region changes nothing: it
            // still reads as the source, which is a valid discard result.
            (RegionOpKind::Unmap, false) => self.finish(op.parent, Ok(())),
            (RegionOpKind::Unmap, true) if !self.settings.discard_passdown => {
                // dm-clone: a discarded region needs no copy.
                let marked = self.mark_hydrated(r);
                self.finish(
                    op.parent,
                    if marked {
                        Ok(())
                    } else {
                        Err(IoError::ReadOnly)
                    },
                );
            }
            (_, true) => {
                self.locks.insert(
                    r,
                    RegionLock {
                        waiters: VecDeque::new(),
                        copying: false,
                    },
                );
                self.send_region_op(op, true);
            }
            (_, false) => {
                self.locks.insert(
                    r,
                    RegionLock {
                        waiters: VecDeque::new(),
                        copying: false,
                    },
                );
                // Only a plain write can ride in the copy: write-zeroes has no
                // data, and FUA is left on its own path.
                let merge = matches!(op.kind, RegionOpKind::Write { fua: false });
                let started = self.start_copy(r, 1, false, merge.then_some(op));
                if !started || !merge {
                    self.locks.get_mut(&r).unwrap().waiters.push_back(op);
                }
                if !started {
                    self.copy_backlog.push_back(r);
                }
            }
        }
    }

    fn send_region_op(&mut self, op: RegionOp, fills: bool) {
        let dev_op = match op.kind {
            RegionOpKind::Write { fua } => {
                let Parent::User(id) = op.parent else {
                    unreachable!("writes are never fanned out")
                };
                DevOp::Write {
                    offset_blocks: op.offset,
                    num_blocks: op.blocks,
                    data: Data::User(id),
                    fua,
                }
            }
            RegionOpKind::WriteZeroes => DevOp::WriteZeroes {
                offset_blocks: op.offset,
                num_blocks: op.blocks,
            },
            RegionOpKind::Unmap => DevOp::Unmap {
                offset_blocks: op.offset,
                num_blocks: op.blocks,
            },
        };
        self.user_in_flight += 1;
        self.send(Dev::Dest, dev_op, Req::Region { op, fills });
    }

    fn region_op_done(&mut self, op: RegionOp, fills: bool, mut result: IoResult) {
        if fills {
            // A whole-region write that cannot be marked (the clone failed
            // meanwhile) must not be acknowledged: reads would go to the source.
            if result.is_ok() && !self.mark_hydrated(op.region) {
                result = Err(IoError::ReadOnly);
            }
            self.unlock(op.region, result.is_ok());
        }
        let fua = matches!(op.kind, RegionOpKind::Write { fua: true });
        if fua && result.is_ok() && !self.is_committed(op.region) {
            // The data is durable, the region's hydration not yet: the commit
            // completes this write.
            let Parent::User(id) = op.parent else {
                unreachable!()
            };
            self.flush_waiters.push(id);
            self.commit_wanted = true;
            self.start_commit();
            return;
        }
        self.finish(op.parent, result);
    }

    fn finish(&mut self, parent: Parent, result: IoResult) {
        match parent {
            Parent::User(id) => self.backend.complete_user(id, result),
            Parent::Fanout(k) => {
                let f = &mut self.fanouts[k];
                if f.result.is_ok() {
                    f.result = result;
                }
                f.remaining -= 1;
                if f.remaining == 0 {
                    let f = self.fanouts.remove(k);
                    self.backend.complete_user(f.io, f.result);
                }
            }
        }
    }

    fn is_committed(&self, region: u64) -> bool {
        self.committed[(region / 64) as usize] & (1 << (region % 64)) != 0
    }

    fn unlock(&mut self, region: u64, filled: bool) {
        let Some(lock) = self.locks.remove(&region) else {
            return;
        };
        for op in lock.waiters {
            if filled || self.shared.geometry.covers_region(op.offset, op.blocks) {
                self.dispatch_region_op(op);
            } else {
                // The copy failed: the write cannot be applied on top of it.
                self.finish(op.parent, Err(IoError::Io));
            }
        }
    }

    /// Marks a region hydrated; false when the clone has failed and marks
    /// nothing new.
    fn mark_hydrated(&mut self, region: u64) -> bool {
        if !self.shared.writes_allowed.load(Ordering::Acquire) {
            return false;
        }
        if self.shared.map.set(region) {
            let page = (region / metadata::regions_per_page(self.meta.layout.page_size)) as u32;
            if !self.meta.dirty[page as usize] {
                self.meta.dirty[page as usize] = true;
                self.meta.dirty_list.push(page);
            }
            self.stats.bytes_hydrated += self.shared.geometry.region_extent(region).1
                * self.shared.geometry.block_size as u64;
        }
        true
    }

    // ---------------------------------------------------------------- hydration

    fn start_copy(
        &mut self,
        first: u64,
        count: u64,
        background: bool,
        merged: Option<RegionOp>,
    ) -> bool {
        let g = self.shared.geometry;
        let (offset, _) = g.region_extent(first);
        let (last_start, last_len) = g.region_extent(first + count - 1);
        let blocks = last_start + last_len - offset;
        let Some(buf) = self
            .backend
            .alloc_buf((blocks * g.block_size as u64) as usize)
        else {
            return false;
        };
        for r in first..first + count {
            if let Some(l) = self.locks.get_mut(&r) {
                l.copying = true;
            }
        }
        if background {
            self.background_in_flight += count;
        }
        let k = self.copies.insert(Copy {
            first,
            count,
            blocks,
            buf,
            background,
            merged,
        });
        self.send(
            Dev::Source,
            DevOp::Read {
                offset_blocks: offset,
                num_blocks: blocks,
                data: Data::Buf { buf, offset: 0 },
            },
            Req::CopyRead(k),
        );
        true
    }

    fn copy_step(&mut self, k: usize, wrote: bool, result: IoResult) {
        if result.is_ok() && !wrote {
            let c = &self.copies[k];
            let (offset, _) = self.shared.geometry.region_extent(c.first);
            let (blocks, buf) = (c.blocks, c.buf);
            if let Some(op) = c.merged {
                let Parent::User(id) = op.parent else {
                    unreachable!("writes are never fanned out")
                };
                let bs = self.shared.geometry.block_size as usize;
                self.backend.copy_user_data(
                    id,
                    op.blocks as usize * bs,
                    buf,
                    (op.offset - offset) as usize * bs,
                );
            }
            self.send(
                Dev::Dest,
                DevOp::Write {
                    offset_blocks: offset,
                    num_blocks: blocks,
                    data: Data::Buf { buf, offset: 0 },
                    fua: false,
                },
                Req::CopyWrite(k),
            );
            return;
        }
        let c = self.copies.remove(k);
        self.backend.free_buf(c.buf);
        if c.background {
            self.background_in_flight -= c.count;
        }
        if result.is_err() {
            self.stats.hydration_errors += 1;
            // Back off before the background hydrator tries again.
            self.retry_after_ns = self.backend.now_ns() + 100_000_000;
        }
        let mut marked = true;
        for r in c.first..c.first + c.count {
            if result.is_ok() {
                marked = self.mark_hydrated(r);
            }
            self.unlock(r, result.is_ok());
        }
        if let Some(op) = c.merged {
            // As for a whole-region write: not acknowledged unless marked,
            // or reads would go to the source.
            let r = match result {
                Ok(()) if !marked => Err(IoError::ReadOnly),
                Ok(()) => Ok(()),
                Err(_) => Err(IoError::Io),
            };
            self.finish(op.parent, r);
        }
        self.check_hydrated();
        if c.background {
            // Keep the copy pipeline full without waiting for the next poll.
            self.pump_hydration();
        }
    }

    /// `stats.hydration_ns` brought up to `now`: plus the time since the last
    /// tick if hydration is running.
    fn hydration_ns_at(&self, now: u64) -> u64 {
        let running = if self.state == CloneState::Hydrating {
            now.saturating_sub(self.hydration_clock_ns)
        } else {
            0
        };
        self.stats.hydration_ns + running
    }

    /// Brings `stats.hydration_ns` up to date; called before every change of
    /// state or settings.
    fn tick_hydration_clock(&mut self) {
        let now = self.backend.now_ns();
        self.stats.hydration_ns = self.hydration_ns_at(now);
        self.hydration_clock_ns = now;
    }

    fn check_hydrated(&mut self) {
        if matches!(self.state, CloneState::Hydrating | CloneState::Paused)
            && self.shared.map.count_hydrated() == self.shared.geometry.region_count
        {
            self.tick_hydration_clock();
            self.state = CloneState::Hydrated;
            self.commit_wanted = true;
        }
    }

    /// The hydration rate limit in force, in bytes per second (0 = none):
    /// the busy limit while user I/O was seen in the last 50 ms.
    fn rate_limit(&mut self, now: u64) -> f64 {
        let ios = self.shared.user_ios.load(Ordering::Relaxed);
        if ios != self.busy_sample.0 {
            self.busy_sample = (ios, now + 50_000_000);
        }
        let s = &self.settings;
        let mb = match (now < self.busy_sample.1, s.max_bandwidth_busy_mb_sec) {
            (true, busy) if busy > 0 => match s.max_bandwidth_mb_sec {
                0 => busy,
                cap => cap.min(busy),
            },
            _ => s.max_bandwidth_mb_sec,
        };
        mb as f64 * 1024.0 * 1024.0
    }

    /// Tells the routing path whether to count user I/O (only while
    /// background hydration runs).
    fn note_hydrating(&self) {
        let active = self.state == CloneState::Hydrating && self.settings.hydration_enabled;
        self.shared.hydrating.store(active, Ordering::Relaxed);
    }

    fn pump_hydration(&mut self) {
        let now = self.backend.now_ns();
        self.note_hydrating();
        let rate = self.rate_limit(now);
        if rate > 0.0 {
            let g = self.shared.geometry;
            let batch_bytes =
                self.settings.hydration_batch_size.max(1) as f64 * g.region_size as f64;
            let burst = batch_bytes.max(rate / 100.0);
            let elapsed = now.saturating_sub(self.last_refill_ns) as f64 / 1e9;
            self.tokens = (self.tokens + elapsed * rate).min(burst);
        }
        self.last_refill_ns = now;
        if self.state != CloneState::Hydrating
            || !self.settings.hydration_enabled
            || self.stopping
            || now < self.retry_after_ns
        {
            return;
        }
        let g = self.shared.geometry;
        let threshold = self.settings.hydration_threshold.max(1) as u64;
        let batch = self.settings.hydration_batch_size.max(1) as u64;
        let mut scans = 0;
        while self.background_in_flight < threshold && scans < 64 + threshold {
            scans += 1;
            let Some(first) = self.shared.map.next_unhydrated(self.cursor) else {
                return;
            };
            if self.locks.contains_key(&first) {
                self.cursor = first + 1;
                continue;
            }
            let room = (threshold - self.background_in_flight).min(batch);
            let mut count = 1;
            while count < room
                && first + count < g.region_count
                && !self.shared.map.is_hydrated(first + count)
                && !self.locks.contains_key(&(first + count))
            {
                count += 1;
            }
            if rate > 0.0 {
                let bytes = (count * g.region_size as u64) as f64;
                if self.tokens < bytes {
                    return;
                }
                self.tokens -= bytes;
            }
            for r in first..first + count {
                self.locks.insert(
                    r,
                    RegionLock {
                        waiters: VecDeque::new(),
                        copying: false,
                    },
                );
            }
            // A pool short of a whole batch still serves one region at a time.
            if !self.start_copy(first, count, true, None)
                && (count == 1 || {
                    for r in first + 1..first + count {
                        self.locks.remove(&r);
                    }
                    count = 1;
                    !self.start_copy(first, 1, true, None)
                })
            {
                self.locks.remove(&first);
                return;
            }
            self.cursor = first + count;
        }
    }

    // ---------------------------------------------------------------- commits

    fn start_commit(&mut self) {
        if self.commit.is_some() || self.opening.is_some() || !self.commit_wanted {
            return;
        }
        if !self.shared.writes_allowed.load(Ordering::Acquire) && !self.meta.sb_dirty {
            for id in std::mem::take(&mut self.flush_waiters) {
                self.backend.complete_user(id, Err(IoError::ReadOnly));
            }
            self.commit_wanted = false;
            return;
        }
        let layout = self.meta.layout;
        let seq = self.meta.seq + 1;
        let mut pages = Vec::with_capacity(self.meta.dirty_list.len());
        let wpp = layout.words_per_page();
        let nwords = self.committed.len();
        for &p in &self.meta.dirty_list {
            let Some(buf) = self.backend.alloc_buf(layout.page_size as usize) else {
                for (_, _, b, _) in pages {
                    self.backend.free_buf(b);
                }
                return; // retried at the next poll
            };
            let lo = p as usize * wpp;
            let words: Vec<u64> = (lo..(lo + wpp).min(nwords))
                .map(|i| self.shared.map.word(i))
                .collect();
            metadata::encode_page(self.backend.buf_mut(buf), p, seq, self.meta.nonce, &words);
            pages.push((p, 1 - self.meta.page_slot[p as usize], buf, words));
        }
        let dirty_list = std::mem::take(&mut self.meta.dirty_list);
        let write_sb = !pages.is_empty() || self.meta.sb_dirty;
        let sb_buf = if write_sb {
            match self.backend.alloc_buf(self.meta.layout.sb_area as usize) {
                Some(b) => Some(b),
                None => {
                    for (_, _, b, _) in pages {
                        self.backend.free_buf(b);
                    }
                    self.meta.dirty_list = dirty_list;
                    return; // retried at the next poll
                }
            }
        } else {
            None
        };
        for &p in &dirty_list {
            self.meta.dirty[p as usize] = false;
        }
        self.meta.sb_dirty = false;
        self.commit_wanted = false;
        self.commit = Some(Commit {
            seq,
            waiters: std::mem::take(&mut self.flush_waiters),
            pages,
            write_sb,
            sb_buf,
            flags: self.meta.flags,
            step: CommitStep::DestFlush,
            outstanding: 1,
            error: None,
        });
        self.stats.dest_flushes += 1;
        // The rule this project exists for: the destination is flushed before
        // any metadata that could name its data is written.
        self.send(Dev::Dest, DevOp::Flush, Req::Commit);
    }

    fn commit_step(&mut self, dev: Dev, result: IoResult) {
        let c = self.commit.as_mut().expect("commit in flight");
        if let Err(e) = result {
            c.error.get_or_insert((dev, e));
        }
        c.outstanding -= 1;
        if c.outstanding > 0 {
            return;
        }
        if c.error.is_some() {
            return self.commit_failed();
        }
        let layout = self.meta.layout;
        match c.step {
            CommitStep::DestFlush if !c.write_sb => self.commit_done(),
            CommitStep::DestFlush if !c.pages.is_empty() => {
                c.step = CommitStep::Pages;
                c.outstanding = c.pages.len();
                let writes: Vec<_> = c
                    .pages
                    .iter()
                    .map(|&(p, slot, buf, _)| (layout.page_offset(p, slot), buf))
                    .collect();
                for (offset, buf) in writes {
                    self.meta_write(offset, layout.page_size as u64, buf);
                }
            }
            CommitStep::DestFlush | CommitStep::MetaFlush => self.write_superblock(),
            CommitStep::Pages => {
                c.step = CommitStep::MetaFlush;
                c.outstanding = 1;
                self.send(Dev::Meta, DevOp::Flush, Req::Commit);
            }
            CommitStep::Superblock => {
                c.step = CommitStep::FinalFlush;
                c.outstanding = 1;
                self.send(Dev::Meta, DevOp::Flush, Req::Commit);
            }
            CommitStep::FinalFlush => self.commit_done(),
        }
    }

    fn write_superblock(&mut self) {
        let hydrated = self.committed_count_after(self.commit.as_ref().unwrap());
        let c = self.commit.as_mut().unwrap();
        let buf = c.sb_buf.expect("allocated when the commit started");
        let mut sb = self.meta.sb_template.clone();
        sb.seq = c.seq;
        sb.flags = c.flags;
        sb.regions_hydrated = hydrated;
        c.step = CommitStep::Superblock;
        c.outstanding = 1;
        sb.encode(self.backend.buf_mut(buf));
        let slot = 1 - self.meta.sb_slot;
        let offset = self.meta.layout.sb_offset(slot);
        let len = sb_len_bytes(&self.meta.layout, self.meta_bs);
        self.meta_write(offset, len, buf);
    }

    /// Regions hydrated once commit `c` lands (informational, in the superblock).
    fn committed_count_after(&self, c: &Commit) -> u64 {
        let wpp = self.meta.layout.words_per_page();
        let mut n: u64 = self.committed.iter().map(|w| w.count_ones() as u64).sum();
        for (p, _, _, words) in &c.pages {
            let lo = *p as usize * wpp;
            for (i, w) in words.iter().enumerate() {
                n += w.count_ones() as u64;
                n -= self.committed[lo + i].count_ones() as u64;
            }
        }
        n
    }

    fn meta_write(&mut self, offset: u64, len: u64, buf: BufId) {
        let bs = self.meta_bs as u64;
        self.stats.meta_bytes_written += len;
        self.send(
            Dev::Meta,
            DevOp::Write {
                offset_blocks: offset / bs,
                num_blocks: len / bs,
                data: Data::Buf { buf, offset: 0 },
                fua: false,
            },
            Req::Commit,
        );
    }

    fn commit_done(&mut self) {
        let c = self.commit.take().unwrap();
        let wpp = self.meta.layout.words_per_page();
        for (p, slot, buf, words) in c.pages {
            self.meta.page_slot[p as usize] = slot;
            let lo = p as usize * wpp;
            self.committed[lo..lo + words.len()].copy_from_slice(&words);
            self.backend.free_buf(buf);
        }
        if let Some(buf) = c.sb_buf {
            self.backend.free_buf(buf);
            self.meta.seq = c.seq;
            self.meta.sb_slot = 1 - self.meta.sb_slot;
        }
        self.stats.commits += 1;
        self.last_commit_ns = self.backend.now_ns();
        for id in c.waiters {
            self.backend.complete_user(id, Ok(()));
        }
        if self.releasing && c.flags & metadata::FLAG_SOURCE_RELEASED != 0 {
            self.releasing = false;
            self.state = CloneState::SourceReleased;
            self.backend.notify(Notice::SourceReleased(Ok(())));
        } else if self.state == CloneState::Hydrated
            && self.meta.dirty_list.is_empty()
            && self.committed_all()
        {
            self.backend.notify(Notice::Hydrated);
        }
        if !self.flush_waiters.is_empty() {
            self.commit_wanted = true;
        }
        self.start_commit();
    }

    fn committed_all(&self) -> bool {
        self.committed_regions() == self.shared.geometry.region_count
    }

    /// Regions whose hydration is durable in the metadata.
    pub fn committed_regions(&self) -> u64 {
        self.committed.iter().map(|w| w.count_ones() as u64).sum()
    }

    fn commit_failed(&mut self) {
        let c = self.commit.take().unwrap();
        let (dev, err) = c.error.unwrap();
        for (_, _, buf, _) in c.pages {
            self.backend.free_buf(buf);
        }
        if let Some(buf) = c.sb_buf {
            self.backend.free_buf(buf);
        }
        let msg = format!("commit failed: {err} on the {dev} device");
        self.fail(
            if dev == Dev::Dest {
                CloneState::Failed
            } else {
                CloneState::ReadOnly
            },
            msg,
        );
        for id in c.waiters {
            self.backend.complete_user(id, Err(IoError::Io));
        }
        for id in std::mem::take(&mut self.flush_waiters) {
            self.backend.complete_user(id, Err(IoError::Io));
        }
        if self.releasing {
            self.releasing = false;
            self.backend
                .notify(Notice::SourceReleased(Err("commit failed".into())));
        }
    }

    /// Stops everything that would mark or commit: the clone keeps serving
    /// reads from what is in memory and refuses writes.
    fn fail(&mut self, state: CloneState, msg: String) {
        if matches!(self.state, CloneState::Failed | CloneState::ReadOnly) {
            return;
        }
        self.shared.writes_allowed.store(false, Ordering::Release);
        self.tick_hydration_clock();
        self.state = state;
        self.error = Some(msg.clone());
        self.backend.notify(Notice::Failed(msg));
    }

    /// Puts the clone in its failed state from outside (hot-removal of a base
    /// device): writes are refused from now on.
    pub fn device_lost(&mut self, dev: Dev) {
        let state = if dev == Dev::Meta {
            CloneState::ReadOnly
        } else {
            CloneState::Failed
        };
        self.fail(state, format!("the {dev} device was removed"));
    }

    // ---------------------------------------------------------------- polling

    /// Drives timers: background hydration, periodic commits, retries.
    pub fn poll(&mut self) {
        if self.opening.is_some() {
            return;
        }
        while let Some(&r) = self.copy_backlog.front() {
            if !self.start_copy(r, 1, false, None) {
                break;
            }
            self.copy_backlog.pop_front();
        }
        let now = self.backend.now_ns();
        if !self.meta.dirty_list.is_empty()
            && now.saturating_sub(self.last_commit_ns)
                >= self.settings.commit_interval_ms * 1_000_000
        {
            self.commit_wanted = true;
        }
        if self.stopping && (self.meta.sb_dirty || !self.meta.dirty_list.is_empty()) {
            self.commit_wanted = true;
        }
        self.start_commit();
        self.pump_hydration();
        let (t0, n0) = self.rate_window;
        if now.saturating_sub(t0) >= 1_000_000_000 {
            let bytes = self.stats.bytes_hydrated - n0;
            self.stats.rate_bytes_sec = bytes * 1_000_000_000 / (now - t0);
            self.rate_window = (now, self.stats.bytes_hydrated);
        }
        if self.stopping
            && self.reqs.is_empty()
            && self.commit.is_none()
            && (self.meta.dirty_list.is_empty() || !self.writable())
            && (!self.meta.sb_dirty || !self.writable())
        {
            self.stopping = false;
            self.backend.notify(Notice::Stopped);
            self.stopping = true; // stays refusing I/O
        }
    }

    fn writable(&self) -> bool {
        self.shared.writes_allowed.load(Ordering::Acquire)
    }

    // ---------------------------------------------------------------- completions

    /// Delivers the completion of a request the engine submitted.
    pub fn complete(&mut self, id: ReqId, result: IoResult) {
        let req = self.reqs.remove(id.0 as usize);
        match req {
            Req::User(io) => {
                self.user_in_flight -= 1;
                self.backend.complete_user(io, result);
            }
            Req::Region { op, fills } => {
                self.user_in_flight -= 1;
                self.region_op_done(op, fills, result);
            }
            Req::CopyRead(k) => self.copy_step(k, false, result),
            Req::CopyWrite(k) => self.copy_step(k, true, result),
            Req::Commit => {
                let dev = match self.commit.as_ref().map(|c| c.step) {
                    Some(CommitStep::DestFlush) => Dev::Dest,
                    _ => Dev::Meta,
                };
                self.commit_step(dev, result)
            }
            Req::Open { buf, offset, len } => self.open_step(buf, offset, len, result),
        }
        if self.stopping {
            self.poll();
        }
    }

    fn send(&mut self, dev: Dev, op: DevOp, req: Req) {
        let id = ReqId(self.reqs.insert(req) as u64);
        self.backend.submit(id, dev, op);
    }

    // ---------------------------------------------------------------- opening

    fn open_io(&mut self, kind: DevOpKind, offset: u64, len: u64) {
        let bs = self.opening.as_ref().unwrap().params.meta.block_size as u64;
        let op_for = |buf| match kind {
            DevOpKind::Read => DevOp::Read {
                offset_blocks: offset / bs,
                num_blocks: len / bs,
                data: Data::Buf { buf, offset: 0 },
            },
            DevOpKind::Write => DevOp::Write {
                offset_blocks: offset / bs,
                num_blocks: len / bs,
                data: Data::Buf { buf, offset: 0 },
                fua: false,
            },
        };
        let Some(buf) = self.backend.alloc_buf(len as usize) else {
            return self.open_failed(OpenError::NoMemory);
        };
        if kind == DevOpKind::Write {
            let o = self.opening.as_ref().unwrap();
            let b = self.backend.buf_mut(buf);
            b.fill(0);
            if let (OpenStep::WriteSlot0, Some(sb)) = (&o.step, &o.sb) {
                sb.encode(&mut b[..]);
            }
        }
        self.send(
            Dev::Meta,
            op_for(buf),
            Req::Open {
                buf: Some(buf),
                offset,
                len,
            },
        );
    }

    fn open_flush(&mut self) {
        self.send(
            Dev::Meta,
            DevOp::Flush,
            Req::Open {
                buf: None,
                offset: 0,
                len: 0,
            },
        );
    }

    fn open_step(&mut self, buf: Option<BufId>, offset: u64, len: u64, result: IoResult) {
        if let Err(e) = result {
            if let Some(buf) = buf {
                self.backend.free_buf(buf);
            }
            let o = self.opening.as_mut().unwrap();
            o.error.get_or_insert(OpenError::Io(Dev::Meta, e));
            if let OpenStep::ReadPages { outstanding } = &mut o.step {
                *outstanding -= 1;
                if *outstanding > 0 {
                    return;
                }
            }
            let err = o.error.clone().unwrap();
            return self.open_failed(err);
        }
        // Only flush steps come without a buffer.
        let data_buf = || buf.expect("a read or write step carries its buffer");
        let step = std::mem::replace(
            &mut self.opening.as_mut().unwrap().step,
            OpenStep::ReadSuperblocks,
        );
        match step {
            OpenStep::ReadSuperblocks => {
                // Only what was read: a pool may hand out larger buffers.
                let data = self.backend.buf_mut(data_buf())[..len as usize].to_vec();
                self.backend.free_buf(data_buf());
                self.superblocks_read(&data);
            }
            OpenStep::ZeroSlot1 => {
                self.backend.free_buf(data_buf());
                self.opening.as_mut().unwrap().step = OpenStep::FlushZero;
                self.open_flush();
            }
            OpenStep::FlushZero => {
                let sb_area = self.meta.layout.sb_area;
                self.opening.as_mut().unwrap().step = OpenStep::WriteSlot0;
                self.open_io(DevOpKind::Write, 0, sb_area);
            }
            OpenStep::WriteSlot0 => {
                self.backend.free_buf(data_buf());
                self.opening.as_mut().unwrap().step = OpenStep::FlushSlot0;
                self.open_flush();
            }
            OpenStep::FlushSlot0 => {
                self.meta.sb_slot = 0;
                self.open_done();
            }
            OpenStep::FlushLoaded => self.open_done(),
            OpenStep::ReadPages { outstanding } => {
                self.pages_read(data_buf(), offset, len);
                self.backend.free_buf(data_buf());
                let outstanding = outstanding - 1;
                let o = self.opening.as_mut().unwrap();
                o.step = OpenStep::ReadPages { outstanding };
                if outstanding == 0 {
                    match o.error.clone() {
                        Some(e) => self.open_failed(e),
                        None => self.pages_loaded(),
                    }
                }
            }
        }
    }

    fn superblocks_read(&mut self, data: &[u8]) {
        let o = self.opening.as_ref().unwrap();
        let p = o.params.clone();
        let sb_area = Layout::new(p.meta.block_size, p.page_size, 0).sb_area as usize;
        let slots = [
            Superblock::decode(&data[..sb_area]),
            Superblock::decode(&data[sb_area..2 * sb_area]),
        ];
        let best = (0..2u8)
            .filter_map(|i| slots[i as usize].as_ref().ok().map(|sb| (i, sb.clone())))
            .max_by_key(|(_, sb)| sb.seq);
        match best {
            Some((slot, sb)) => match self.check_compatible(&p, &sb) {
                Ok(()) => self.load(slot, sb),
                Err(e) if p.format => {
                    let _ = e;
                    self.format(&p)
                }
                Err(e) => self.open_failed(e),
            },
            None => {
                let blank = slots.iter().all(|s| *s == Err(SbError::Blank));
                if blank || p.format {
                    self.format(&p)
                } else {
                    let why = |s: &Result<Superblock, SbError>| match s {
                        Err(e) => e.to_string(),
                        Ok(_) => "valid".into(),
                    };
                    let foreign = slots.contains(&Err(SbError::Foreign));
                    if foreign && slots.iter().all(|s| s.is_err()) {
                        self.open_failed(OpenError::Mismatch(
                            "the metadata device holds data that is not bdev_clone metadata".into(),
                        ))
                    } else {
                        self.open_failed(OpenError::Corrupt(format!(
                            "superblock slot 0: {}, slot 1: {}",
                            why(&slots[0]),
                            why(&slots[1])
                        )))
                    }
                }
            }
        }
    }

    fn check_compatible(&self, p: &OpenParams, sb: &Superblock) -> Result<(), OpenError> {
        let mismatch = |what: String| Err(OpenError::Mismatch(what));
        if p.dest.block_size != sb.block_size {
            return mismatch(format!(
                "metadata is for block size {}, the destination has {}",
                sb.block_size, p.dest.block_size
            ));
        }
        match p.source {
            Some(src) if src.block_size != sb.block_size || src.num_blocks != sb.source_blocks => {
                return mismatch(format!(
                    "metadata is for a source of {} blocks of {} bytes, this source has {} of {}",
                    sb.source_blocks, sb.block_size, src.num_blocks, src.block_size
                ));
            }
            Some(_) => {}
            None if !sb.source_released() => return Err(OpenError::SourceMissing),
            None => {}
        }
        if p.dest.num_blocks < sb.source_blocks {
            return Err(OpenError::Geometry(GeometryError::DestTooSmall {
                source_bytes: sb.source_blocks * sb.block_size as u64,
                dest_bytes: p.dest.bytes(),
            }));
        }
        // A device is "another" only if neither its identity (UUID) nor its
        // name matches: some hosts regenerate UUIDs at every start (SPDK aio
        // and malloc bdevs without a configured UUID), some rename devices.
        let known = |id: &[u8; 16]| id.iter().any(|&b| b != 0);
        let other = |id: &[u8; 16], stored: &[u8; 16], name: &str, stored_name: &str| {
            known(id) && known(stored) && id != stored && name != stored_name
        };
        if other(&p.source_id, &sb.source_id, &p.source_name, &sb.source_name) {
            return mismatch(format!(
                "metadata belongs to source '{}', not '{}'",
                sb.source_name, p.source_name
            ));
        }
        if other(&p.dest_id, &sb.dest_id, &p.dest_name, &sb.dest_name) {
            return mismatch(format!(
                "metadata belongs to destination '{}', not '{}'",
                sb.dest_name, p.dest_name
            ));
        }
        if let Some(rs) = p.region_size {
            if rs != sb.region_size {
                return mismatch(format!(
                    "metadata has region size {} KiB, {} KiB was asked for",
                    sb.region_size / 1024,
                    rs / 1024
                ));
            }
        }
        if !sb.page_size.is_multiple_of(p.meta.block_size) {
            return mismatch(format!(
                "metadata page size {} does not fit the metadata block size {}",
                sb.page_size, p.meta.block_size
            ));
        }
        let layout = Layout::new(p.meta.block_size, sb.page_size, sb.region_count);
        if layout.total_bytes() > p.meta.bytes() {
            return Err(OpenError::MetaTooSmall {
                need: layout.total_bytes(),
                have: p.meta.bytes(),
            });
        }
        Ok(())
    }

    fn setup(&mut self, geometry: Geometry, page_size: u32, sb: Superblock) {
        let layout = Layout::new(
            self.opening.as_ref().unwrap().params.meta.block_size,
            page_size,
            geometry.region_count,
        );
        self.shared = Arc::new(Shared::new(geometry));
        self.shared.writes_allowed.store(false, Ordering::Release);
        self.committed = vec![0; geometry.region_count.div_ceil(64) as usize];
        self.meta.layout = layout;
        self.meta.nonce = sb.nonce;
        self.meta.uuid = sb.uuid;
        self.meta.seq = sb.seq;
        self.meta.flags = sb.flags;
        self.meta.page_slot = vec![1; layout.page_count as usize];
        self.meta.dirty = vec![false; layout.page_count as usize];
        self.meta.sb_template = sb;
    }

    fn format(&mut self, p: &OpenParams) {
        let Some(source) = p.source else {
            return self.open_failed(OpenError::SourceMissing);
        };
        let region_size = p.region_size.unwrap_or(DEFAULT_REGION_SIZE);
        let geometry = match Geometry::new(source, p.dest, region_size) {
            Ok(g) => g,
            Err(e) => return self.open_failed(OpenError::Geometry(e)),
        };
        let layout = Layout::new(p.meta.block_size, p.page_size, geometry.region_count);
        if layout.total_bytes() > p.meta.bytes() {
            return self.open_failed(OpenError::MetaTooSmall {
                need: layout.total_bytes(),
                have: p.meta.bytes(),
            });
        }
        let sb = Superblock {
            flags: 0,
            uuid: p.uuid,
            nonce: p.nonce,
            seq: 1,
            block_size: geometry.block_size,
            region_size,
            region_count: geometry.region_count,
            source_blocks: geometry.num_blocks,
            dest_blocks: geometry.dest_blocks,
            page_size: p.page_size,
            page_count: layout.page_count,
            regions_hydrated: 0,
            source_id: p.source_id,
            dest_id: p.dest_id,
            source_name: p.source_name.clone(),
            dest_name: p.dest_name.clone(),
        };
        self.setup(geometry, p.page_size, sb.clone());
        let o = self.opening.as_mut().unwrap();
        o.sb = Some(sb);
        o.formatted = true;
        // Slot 1 is zeroed first so that no older superblock there (of this
        // or another clone, maybe with a higher sequence) can win later.
        o.step = OpenStep::ZeroSlot1;
        let sb_area = layout.sb_area;
        self.open_io(DevOpKind::Write, sb_area, sb_area);
    }

    fn load(&mut self, slot: u8, sb: Superblock) {
        let geometry = sb.geometry();
        let page_size = sb.page_size;
        self.setup(geometry, page_size, sb);
        self.meta.sb_slot = slot;
        let layout = self.meta.layout;
        let total = 2 * layout.page_count as u64 * layout.page_size as u64;
        if total == 0 {
            self.opening.as_mut().unwrap().step = OpenStep::FlushLoaded;
            return self.open_flush();
        }
        // Read the page area in chunks of whole page pairs, all at once.
        let chunk = (1u64 << 20).max(2 * layout.page_size as u64);
        let chunk = chunk / (2 * layout.page_size as u64) * (2 * layout.page_size as u64);
        let n = total.div_ceil(chunk) as usize;
        self.opening.as_mut().unwrap().step = OpenStep::ReadPages { outstanding: n };
        let base = layout.page_offset(0, 0);
        for i in 0..n as u64 {
            let len = chunk.min(total - i * chunk);
            self.opening.as_mut().unwrap().step = OpenStep::ReadPages { outstanding: n };
            self.open_io(DevOpKind::Read, base + i * chunk, len);
        }
    }

    fn pages_read(&mut self, buf: BufId, offset: u64, len: u64) {
        let layout = self.meta.layout;
        let ps = layout.page_size as usize;
        let wpp = layout.words_per_page();
        let nwords = self.committed.len();
        let nonce = self.meta.nonce;
        let data = self.backend.buf_mut(buf)[..len as usize].to_vec();
        let first_page = ((offset - layout.page_offset(0, 0)) / (2 * ps as u64)) as u32;
        let pages = (data.len() / (2 * ps)) as u32;
        let mut words = vec![0u64; wpp];
        let mut best_words = vec![0u64; wpp];
        for i in 0..pages {
            let p = first_page + i;
            if p >= layout.page_count {
                break;
            }
            let lo = p as usize * wpp;
            let n = wpp.min(nwords - lo);
            let mut best: Option<(u64, u8)> = None;
            for slot in 0..2u8 {
                let at = (2 * i as usize + slot as usize) * ps;
                if let Some(seq) =
                    metadata::decode_page(&data[at..at + ps], p, nonce, &mut words[..n])
                {
                    if best.is_none_or(|(s, _)| seq > s) {
                        best = Some((seq, slot));
                        best_words[..n].copy_from_slice(&words[..n]);
                    }
                }
            }
            if let Some((seq, slot)) = best {
                self.meta.page_slot[p as usize] = slot;
                self.meta.seq = self.meta.seq.max(seq);
                for (j, &w) in best_words[..n].iter().enumerate() {
                    let w = w & self.valid_mask(lo + j);
                    self.shared.map.set_word(lo + j, w);
                    self.committed[lo + j] = w;
                }
            }
        }
    }

    /// Every region the superblock counted as hydrated must be in the pages
    /// read (bits only go from 0 to 1, and pages are written and flushed
    /// before their superblock). Fewer means a bitmap page was damaged or
    /// lost: loading it would read the source where the user wrote.
    fn pages_loaded(&mut self) {
        let loaded = self.shared.map.count_hydrated();
        let counted = self.meta.sb_template.regions_hydrated;
        if loaded < counted {
            let p = self.opening.as_ref().unwrap().params.clone();
            if p.format {
                return self.format(&p);
            }
            return self.open_failed(OpenError::Corrupt(format!(
                "the bitmap pages name {loaded} hydrated regions, the superblock {counted}: \
                 a bitmap page is damaged or lost"
            )));
        }
        self.opening.as_mut().unwrap().step = OpenStep::FlushLoaded;
        self.open_flush();
    }

    /// Bits of word `i` that name real regions.
    fn valid_mask(&self, i: usize) -> u64 {
        let n = self.shared.geometry.region_count;
        let first = i as u64 * 64;
        if first + 64 <= n {
            u64::MAX
        } else {
            (1u64 << (n - first)) - 1
        }
    }

    fn open_done(&mut self) {
        let o = self.opening.take().unwrap();
        let hydrated = self.shared.map.count_hydrated();
        let released = self.meta.flags & metadata::FLAG_SOURCE_RELEASED != 0;
        self.shared.writes_allowed.store(true, Ordering::Release);
        self.tick_hydration_clock();
        self.state = if released {
            CloneState::SourceReleased
        } else if hydrated == self.shared.geometry.region_count {
            CloneState::Hydrated
        } else if self.settings.hydration_enabled {
            CloneState::Hydrating
        } else {
            CloneState::Paused
        };
        self.last_commit_ns = self.backend.now_ns();
        self.note_hydrating();
        self.backend.notify(Notice::Opened(Ok(OpenInfo {
            geometry: self.shared.geometry,
            formatted: o.formatted,
            uuid: self.meta.uuid,
            regions_hydrated: hydrated,
            source_released: released,
        })));
        if self.stopping {
            self.poll();
        }
    }

    fn open_failed(&mut self, e: OpenError) {
        self.opening = None;
        self.state = CloneState::Failed;
        self.error = Some(e.to_string());
        self.stopping = true;
        self.backend.notify(Notice::Opened(Err(e)));
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DevOpKind {
    Read,
    Write,
}

fn sb_len_bytes(layout: &Layout, meta_bs: u32) -> u64 {
    let bs = meta_bs as u64;
    ((metadata::SB_LEN as u64).div_ceil(bs) * bs).min(layout.sb_area)
}

fn empty_sb() -> Superblock {
    Superblock {
        flags: 0,
        uuid: [0; 16],
        nonce: 0,
        seq: 0,
        block_size: 0,
        region_size: 0,
        region_count: 0,
        source_blocks: 0,
        dest_blocks: 0,
        page_size: 0,
        page_count: 0,
        regions_hydrated: 0,
        source_id: [0; 16],
        dest_id: [0; 16],
        source_name: String::new(),
        dest_name: String::new(),
    }
}
