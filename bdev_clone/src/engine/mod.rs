//! The clone engine, as `dm-clone-target.c` is to dm-clone: routes user I/O,
//! hydrates regions, and asks the metadata to commit. Single-threaded and
//! polled; it talks to devices only through [`Backend`].
//!
//! - [`route`]: the lock-free routing decision every thread makes;
//! - [`user_io`]: writes, flushes, unmaps and write-zeroes that need the
//!   engine, serialised per region;
//! - [`hydration`]: region copies and the background sweep;
//! - this file: the engine's state, its public interface, polling,
//!   completions, and the glue to [`crate::metadata`] (open and commit).
//!
//! Invariants (checked by the simulator's oracle):
//! - a region's bit is set in memory only after its data is on the destination
//!   (copy written, or a write that covers the whole region completed);
//! - a commit snapshots the dirty pages *before* it flushes the destination,
//!   and writes them only after that flush completed, so a persisted bit always
//!   names data that was durable first;
//! - a user write is acknowledged only after its region's bit is set, so a
//!   flush that completes after the ack also commits the region.

mod hydration;
pub mod route;
mod user_io;

pub use crate::metadata::open::{OpenError, OpenInfo, OpenParams};
pub use route::{HotHints, IoCounter, Route, Shared, Totals, HINT_SLOTS};

use crate::buffers::{BufferStats, Buffers, Purpose};
use crate::geometry::Geometry;
use crate::io::*;
use crate::metadata::commit::{self, CommitEnd};
use crate::metadata::open::{OpenProgress, Opened, Opener};
use crate::metadata::{MetaPort, MetaReq, Metadata};
use hydration::Copy;
use slab::Slab;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use user_io::{Fanout, RegionLock, RegionOp};

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
    /// Which unhydrated regions the background hydrator copies first.
    pub hydration_order: HydrationOrder,
}

/// The order in which background hydration copies regions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HydrationOrder {
    /// In address order, from where the sweep stands (dm-clone's order).
    Sequential,
    /// Regions users read from the source (and, for sequential readers, the
    /// regions after them) first, then the sweep in address order.
    #[default]
    HotFirst,
}

impl HydrationOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            HydrationOrder::Sequential => "sequential",
            HydrationOrder::HotFirst => "hot_first",
        }
    }
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
            hydration_order: HydrationOrder::default(),
        }
    }
}

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
    /// Regions copied ahead of the sweep because users read them
    /// (hot-first hydration), since the clone was opened.
    pub regions_hydrated_hot: u64,
    /// User reads served from the source (their region was not hydrated)
    /// and from the destination, since the clone was opened.
    pub user_reads_from_source: u64,
    pub user_reads_from_destination: u64,
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

/// What a request the engine sent was for.
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
    /// A request of the metadata (a commit step, or opening).
    Meta(MetaReq),
}

/// The engine's request path and buffers, lent to the metadata for one call.
struct Port<'a, B: Backend> {
    backend: &'a mut B,
    reqs: &'a mut Slab<Req>,
    buffers: &'a mut Buffers,
}

impl<B: Backend> MetaPort for Port<'_, B> {
    fn send(&mut self, dev: Dev, op: DevOp, req: MetaReq) {
        let id = ReqId(self.reqs.insert(Req::Meta(req)) as u64);
        self.backend.submit(id, dev, op);
    }
    fn alloc_buf(&mut self, len: usize) -> Option<BufId> {
        let now = self.backend.now_ns();
        self.buffers
            .alloc(self.backend, len, Purpose::Metadata, now)
    }
    fn buf_mut(&mut self, buf: BufId) -> &mut [u8] {
        self.backend.buf_mut(buf)
    }
    fn free_buf(&mut self, buf: BufId) {
        self.buffers.free(buf)
    }
}

pub struct Engine<B: Backend> {
    backend: B,
    shared: Arc<Shared>,
    settings: Settings,
    /// The clone's name, as the superblock stores it.
    name: String,
    meta: Metadata,
    buffers: Buffers,
    /// Regions whose bit is set in memory (kept as bits flip: nothing per
    /// copy or per I/O scans the bitmap).
    hydrated: u64,
    state: CloneState,
    error: Option<String>,
    opening: Option<Opener>,
    reqs: Slab<Req>,
    copies: Slab<Copy>,
    fanouts: Slab<Fanout>,
    locks: HashMap<u64, RegionLock>,
    /// Regions locked for a user write whose copy waits for a buffer.
    copy_backlog: VecDeque<u64>,
    /// User flushes and FUA writes the next commit completes.
    flush_waiters: Vec<UserIoId>,
    /// Those the commit in flight completes.
    commit_waiters: Vec<UserIoId>,
    commit_wanted: bool,
    last_commit_ns: u64,
    cursor: u64,
    background_in_flight: u64,
    tokens: f64,
    last_refill_ns: u64,
    retry_after_ns: u64,
    releasing: bool,
    stopping: bool,
    /// The source went away before everything was hydrated: unhydrated
    /// regions cannot be read or copied any more.
    source_gone: bool,
    /// A base device went away while opening: the open fails when done.
    lost_while_opening: Option<Dev>,
    stats: Stats,
    rate_window: (u64, u64),
    /// When `stats.hydration_ns` was last brought up to date.
    hydration_clock_ns: u64,
    user_in_flight: u64,
    /// User I/Os submitted to the engine itself while hydrating (those the
    /// host routes itself it counts in `Shared::io_counter`s).
    user_ios: u64,
    /// User reads the engine itself routed (the host counts those it routes
    /// itself in its `IoCounter`s): to the source, to the destination.
    reads_source: u64,
    reads_dest: u64,
    /// The hint slot the hot-first pass looks at next.
    hint_pos: usize,
    /// User I/Os completed by `abort_after_panic`: never completed again.
    aborted: HashSet<UserIoId>,
    /// A panic was caught: the engine's own accounting may be off, so
    /// stopping does not wait for it (the host waits for its requests).
    panicked: bool,
    /// User I/O count at the last sample, and until when the clone counts as busy.
    busy_sample: (u64, u64),
    /// The routing threads' count at the last sample, and when to sample again.
    routed_ios: (u64, u64),
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
            name: params.name.clone(),
            meta: Metadata::empty(params.meta.block_size),
            buffers: Buffers::new(params.buffer_cap),
            hydrated: 0,
            state: CloneState::Opening,
            error: None,
            opening: None,
            reqs: Slab::new(),
            copies: Slab::new(),
            fanouts: Slab::new(),
            locks: HashMap::new(),
            copy_backlog: VecDeque::new(),
            flush_waiters: Vec::new(),
            commit_waiters: Vec::new(),
            commit_wanted: false,
            last_commit_ns: now,
            cursor: 0,
            background_in_flight: 0,
            tokens: 0.0,
            last_refill_ns: now,
            retry_after_ns: 0,
            releasing: false,
            stopping: false,
            source_gone: false,
            lost_while_opening: None,
            stats: Stats::default(),
            rate_window: (now, 0),
            hydration_clock_ns: now,
            user_in_flight: 0,
            user_ios: 0,
            reads_source: 0,
            reads_dest: 0,
            hint_pos: 0,
            aborted: HashSet::new(),
            panicked: false,
            busy_sample: (0, 0),
            routed_ios: (0, 0),
        };
        let (opener, progress) = Opener::start(params, &mut e.port());
        e.opening = Some(opener);
        e.open_progress(progress);
        e
    }

    fn port(&mut self) -> Port<'_, B> {
        Port {
            backend: &mut self.backend,
            reqs: &mut self.reqs,
            buffers: &mut self.buffers,
        }
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
        self.reqs.is_empty() && !self.meta.commit_in_flight()
    }

    pub fn status(&self) -> Status {
        let g = self.shared.geometry;
        let mut stats = self.stats.clone();
        stats.regions_hydrated = self.hydrated;
        stats.regions_hydrating = self.locks.values().filter(|l| l.copying).count() as u64;
        stats.hydration_ns = self.hydration_ns_at(self.backend.now_ns());
        let routed = self.shared.totals();
        stats.user_reads_from_source = self.reads_source + routed.reads_source;
        stats.user_reads_from_destination = self.reads_dest + routed.reads_dest;
        let m = self.meta.stats();
        (stats.commits, stats.dest_flushes, stats.meta_bytes_written) =
            (m.commits, m.dest_flushes, m.meta_bytes_written);
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
            committed_seq: self.meta.seq(),
        }
    }

    /// Changes run-time settings; takes effect at the next poll.
    pub fn set_settings(&mut self, settings: Settings) {
        self.tick_hydration_clock();
        self.settings = settings;
        if self.opening.is_none() && self.writable() {
            self.meta.set_identity(&self.name, &self.settings);
        }
        if matches!(self.state, CloneState::Hydrating | CloneState::Paused) {
            self.state = if self.settings.hydration_enabled && !self.source_gone {
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
        self.meta.mark_source_released();
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
        self.commit_wanted = self.meta.has_changes();
        self.poll();
    }

    // ---------------------------------------------------------------- commits

    fn start_commit(&mut self) {
        if self.meta.commit_in_flight() || self.opening.is_some() || !self.commit_wanted {
            return;
        }
        if !self.writable() && !self.meta.sb_dirty() {
            for id in std::mem::take(&mut self.flush_waiters) {
                self.complete_user(id, Err(IoError::ReadOnly));
            }
            self.commit_wanted = false;
            return;
        }
        let mut port = Port {
            backend: &mut self.backend,
            reqs: &mut self.reqs,
            buffers: &mut self.buffers,
        };
        if self.meta.begin_commit(&mut port, &self.shared.map) {
            self.commit_wanted = false;
            self.commit_waiters = std::mem::take(&mut self.flush_waiters);
        } // else: no buffers now, retried at the next poll
    }

    fn commit_io_done(&mut self, buf: Option<BufId>, result: IoResult) {
        let mut port = Port {
            backend: &mut self.backend,
            reqs: &mut self.reqs,
            buffers: &mut self.buffers,
        };
        match self.meta.commit_io_done(&mut port, buf, result) {
            None => {}
            Some(CommitEnd::Done { source_released }) => self.commit_done(source_released),
            Some(CommitEnd::Failed { dev, error }) => self.commit_failed(dev, error),
        }
    }

    fn commit_done(&mut self, source_released: bool) {
        self.last_commit_ns = self.backend.now_ns();
        for id in std::mem::take(&mut self.commit_waiters) {
            self.complete_user(id, Ok(()));
        }
        if self.releasing && source_released {
            self.releasing = false;
            self.state = CloneState::SourceReleased;
            self.backend.notify(Notice::SourceReleased(Ok(())));
        } else if self.state == CloneState::Hydrated
            && !self.meta.has_dirty_pages()
            && self.meta.committed_regions() == self.shared.geometry.region_count
        {
            self.backend.notify(Notice::Hydrated);
        }
        if !self.flush_waiters.is_empty() {
            self.commit_wanted = true;
        }
        self.start_commit();
    }

    /// What the engine's buffer pool holds.
    pub fn buffer_stats(&self) -> BufferStats {
        self.buffers.stats()
    }

    /// Memory the clone holds: the in-memory and committed bitmaps, the
    /// metadata's page tables and the buffer pool (lent and kept).
    pub fn memory_bytes(&self) -> u64 {
        let b = self.buffers.stats();
        self.shared.map.memory_bytes() + self.meta.memory_bytes() + (b.lent + b.kept) as u64
    }

    /// Regions whose hydration is durable in the metadata.
    pub fn committed_regions(&self) -> u64 {
        self.meta.committed_regions()
    }

    fn commit_failed(&mut self, dev: Dev, err: IoError) {
        let msg = format!("commit failed: {err} on the {dev} device");
        self.fail(
            if dev == Dev::Dest {
                CloneState::Failed
            } else {
                CloneState::ReadOnly
            },
            msg,
        );
        for id in std::mem::take(&mut self.commit_waiters) {
            self.complete_user(id, Err(IoError::Io));
        }
        for id in std::mem::take(&mut self.flush_waiters) {
            self.complete_user(id, Err(IoError::Io));
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

    /// Every user I/O completes here, once.
    fn complete_user(&mut self, io: UserIoId, result: IoResult) {
        if self.aborted.is_empty() || !self.aborted.contains(&io) {
            self.backend.complete_user(io, result);
        }
    }

    /// After a panic inside the engine or its host (caught at the FFI
    /// boundary): the engine's state may be half-updated, so the clone goes to
    /// `failed` with `msg` as its error, every user I/O it holds completes
    /// with an error now (later completions of requests sent for them are
    /// dropped), a pending release is answered, and new I/O is refused.
    /// Requests already sent to devices may still complete into the engine;
    /// `shutdown` then stops without waiting for them, and the host must not
    /// free what they reference until its own count of them is zero.
    pub fn abort_after_panic(&mut self, msg: &str) {
        self.panicked = true;
        let mut held: Vec<UserIoId> = Vec::new();
        let parent_io = |p: user_io::Parent, fanouts: &Slab<Fanout>| match p {
            user_io::Parent::User(id) => Some(id),
            user_io::Parent::Fanout(k) => fanouts.get(k).map(|f| f.io),
        };
        for (_, r) in &self.reqs {
            match r {
                Req::User(io) => held.push(*io),
                Req::Region { op, .. } => held.extend(parent_io(op.parent, &self.fanouts)),
                _ => {}
            }
        }
        for (_, c) in &self.copies {
            held.extend(c.merged.and_then(|op| parent_io(op.parent, &self.fanouts)));
        }
        for lock in self.locks.values() {
            for op in &lock.waiters {
                held.extend(parent_io(op.parent, &self.fanouts));
            }
        }
        held.extend(self.fanouts.iter().map(|(_, f)| f.io));
        held.append(&mut self.flush_waiters);
        held.append(&mut self.commit_waiters);
        let why = format!("internal error: {msg}");
        if self.opening.is_some() {
            self.open_failed(OpenError::Internal(why.clone()));
        }
        self.fail(CloneState::Failed, why.clone());
        self.state = CloneState::Failed;
        self.error = Some(why);
        for io in held {
            if self.aborted.insert(io) {
                self.backend.complete_user(io, Err(IoError::Io));
            }
        }
        if self.releasing {
            self.releasing = false;
            self.backend.notify(Notice::SourceReleased(Err(format!(
                "internal error: {msg}"
            ))));
        }
    }

    /// A base device went away (hot-removal). What it means:
    /// - while opening: the open fails once its requests are done;
    /// - the source of a fully hydrated clone: the clone releases it (a
    ///   commit says so) and carries on from the destination;
    /// - the source of a clone not fully hydrated: hydration stops, reads of
    ///   unhydrated regions and partial writes into them fail; hydrated
    ///   regions stay readable and writable (whole-region writes too);
    /// - the destination or the metadata: the clone fails (writes refused).
    ///
    /// Returns whether the clone carries on (else the host unregisters it).
    pub fn device_lost(&mut self, dev: Dev) -> bool {
        if self.opening.is_some() {
            self.lost_while_opening.get_or_insert(dev);
            return false;
        }
        match (dev, self.state) {
            (Dev::Source, CloneState::SourceReleased) => true,
            (Dev::Source, CloneState::Hydrated) => {
                if !self.releasing {
                    let _ = self.release_source();
                }
                true
            }
            (Dev::Source, CloneState::Hydrating | CloneState::Paused) => {
                self.tick_hydration_clock();
                self.source_gone = true;
                self.shared.source_gone.store(true, Ordering::Relaxed);
                // Writes waiting for a buffer to copy their region: no copy
                // will come (whole-region writes among their waiters go on).
                for r in std::mem::take(&mut self.copy_backlog) {
                    self.unlock(r, false);
                }
                self.state = CloneState::Paused;
                self.error = Some(
                    "the source device was removed before the clone was fully hydrated: \
                     unhydrated regions cannot be read"
                        .into(),
                );
                self.note_hydrating();
                true
            }
            (Dev::Source, _) => true,
            (Dev::Meta, _) => {
                self.fail(
                    CloneState::ReadOnly,
                    format!("the {dev} device was removed"),
                );
                false
            }
            _ => {
                self.fail(CloneState::Failed, format!("the {dev} device was removed"));
                false
            }
        }
    }

    /// A base device changed size. The source must not (the clone is as
    /// large as it was); the destination must stay at least as large as the
    /// source, the metadata as large as its layout. Anything else fails the
    /// clone. Returns whether the clone carries on.
    pub fn device_resized(&mut self, dev: Dev, num_blocks: u64) -> bool {
        let g = self.shared.geometry;
        let why = match dev {
            _ if self.opening.is_some() => {
                self.lost_while_opening.get_or_insert(dev);
                return false;
            }
            Dev::Source if num_blocks != g.num_blocks => format!(
                "the source was resized from {} to {num_blocks} blocks: a clone's source must \
                 not change",
                g.num_blocks
            ),
            Dev::Dest if num_blocks < g.num_blocks => format!(
                "the destination shrank to {num_blocks} blocks, below the source's {}",
                g.num_blocks
            ),
            Dev::Meta if !self.meta.fits(num_blocks) => {
                "the metadata device shrank below the metadata's size".to_string()
            }
            _ => return true,
        };
        let state = if dev == Dev::Meta {
            CloneState::ReadOnly
        } else {
            CloneState::Failed
        };
        self.fail(state, why);
        false
    }

    // ---------------------------------------------------------------- polling

    /// Drives timers: background hydration, periodic commits, retries.
    /// Returns whether it started anything (a poller reports BUSY or IDLE).
    pub fn poll(&mut self) -> bool {
        if self.opening.is_some() {
            return false;
        }
        let started = self.reqs.len();
        while let Some(&r) = self.copy_backlog.front() {
            if !self.start_copy(r, 1, false, None) {
                break;
            }
            self.copy_backlog.pop_front();
        }
        let now = self.backend.now_ns();
        if self.meta.has_changes()
            && now.saturating_sub(self.last_commit_ns)
                >= self.settings.commit_interval_ms * 1_000_000
        {
            self.commit_wanted = true;
        }
        if self.stopping && self.meta.has_changes() {
            self.commit_wanted = true;
        }
        self.start_commit();
        let mut port = Port {
            backend: &mut self.backend,
            reqs: &mut self.reqs,
            buffers: &mut self.buffers,
        };
        self.meta.resume_commit(&mut port);
        self.pump_hydration();
        self.buffers.trim(&mut self.backend, now);
        let (t0, n0) = self.rate_window;
        if now.saturating_sub(t0) >= 1_000_000_000 {
            let bytes = self.stats.bytes_hydrated - n0;
            self.stats.rate_bytes_sec = (bytes as u128 * 1_000_000_000 / (now - t0) as u128) as u64;
            self.rate_window = (now, self.stats.bytes_hydrated);
        }
        if self.stopping
            && (self.reqs.is_empty() || self.panicked)
            && !self.meta.commit_in_flight()
            && (!self.meta.has_changes() || !self.writable())
        {
            self.stopping = false;
            self.buffers.release_all(&mut self.backend);
            self.backend.notify(Notice::Stopped);
            self.stopping = true; // stays refusing I/O
            return true;
        }
        self.reqs.len() > started
    }

    /// Whether anything waits for time to pass (hydration to pace, a commit
    /// interval, buffers to give back, a retry): when not, the host may stop
    /// polling until it next calls the engine. An idle clone costs nothing.
    pub fn wants_poll(&self) -> bool {
        if self.opening.is_some() {
            return false; // completions drive opening
        }
        let hydrating = self.state == CloneState::Hydrating && self.settings.hydration_enabled;
        hydrating
            || self.stopping
            || self.commit_wanted
            || !self.copy_backlog.is_empty()
            || (self.meta.has_changes() && self.writable())
            || self.meta.commit_in_flight()
            || self.buffers.stats().kept > 0
    }

    fn writable(&self) -> bool {
        self.shared.writes_allowed.load(Ordering::Acquire)
    }

    // ---------------------------------------------------------------- completions

    /// Delivers the completion of a request the engine submitted.
    pub fn complete(&mut self, id: ReqId, result: IoResult) {
        let Some(req) = self.reqs.try_remove(id.0 as usize) else {
            // Only after a panic can the engine's book of requests and the
            // host's disagree (the host waits for its own count).
            assert!(self.panicked, "completion of an unknown request {id:?}");
            return;
        };
        match req {
            Req::User(io) => {
                self.user_in_flight -= 1;
                self.complete_user(io, result);
            }
            Req::Region { op, fills } => {
                self.user_in_flight -= 1;
                self.region_op_done(op, fills, result);
            }
            Req::CopyRead(k) => self.copy_step(k, false, result),
            Req::CopyWrite(k) => self.copy_step(k, true, result),
            Req::Meta(MetaReq::Commit { buf }) => self.commit_io_done(buf, result),
            Req::Meta(MetaReq::Open { buf, offset, len }) => {
                let mut port = Port {
                    backend: &mut self.backend,
                    reqs: &mut self.reqs,
                    buffers: &mut self.buffers,
                };
                let Some(opener) = self.opening.as_mut() else {
                    // Opening was abandoned (abort_after_panic).
                    if let Some(buf) = buf {
                        self.buffers.free(buf);
                    }
                    return;
                };
                let progress = opener.io_done(&mut port, buf, offset, len, result);
                self.open_progress(progress);
            }
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

    fn open_progress(&mut self, progress: OpenProgress) {
        match progress {
            OpenProgress::Pending => {}
            OpenProgress::Done(opened) => self.open_done(*opened),
            OpenProgress::Failed(e) => self.open_failed(e),
        }
    }

    fn open_done(&mut self, opened: Opened) {
        self.opening = None;
        if let Some(dev) = self.lost_while_opening {
            return self.open_failed(OpenError::Io(dev, IoError::NoDevice));
        }
        let Opened {
            geometry,
            map,
            meta,
            formatted,
        } = opened;
        self.shared = Arc::new(Shared::with_map(geometry, map));
        self.meta = meta;
        self.buffers
            .set_reserve(commit::reserve_for(self.meta.layout()));
        // Opening reads the bitmap once; from here on the count is kept.
        let hydrated = self.shared.map.count_hydrated();
        self.hydrated = hydrated;
        let released = self.meta.source_released();
        self.shared.writes_allowed.store(true, Ordering::Release);
        // A clone resumed under another name or with other settings stores
        // them at its next commit.
        self.meta.set_identity(&self.name, &self.settings);
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
            formatted,
            uuid: self.meta.uuid(),
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
        self.buffers.release_all(&mut self.backend);
        self.backend.notify(Notice::Opened(Err(e)));
    }
}
