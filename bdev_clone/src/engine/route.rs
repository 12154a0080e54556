//! The routing decision, made on any thread without a lock: the SPDK glue
//! sends reads and writes of hydrated regions straight to a base bdev with
//! it, and everything else to the engine's thread.

use crate::geometry::Geometry;
use crate::io::{IoError, UserIo, UserOp};
use crate::region_map::RegionMap;
use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// User I/Os counted on one thread (an SPDK channel): written only by that
/// thread, summed by the engine now and then. Nothing per I/O touches a cache
/// line that all cores share.
#[derive(Debug, Default)]
pub struct IoCounter(CachePadded<Counts>);

/// One thread's counts, on a cache line of their own.
#[derive(Debug, Default)]
pub struct Counts {
    /// User I/Os while background hydration runs (the busy rate limit).
    ios: AtomicU64,
    /// User reads passed to the source (their region was not hydrated).
    reads_source: AtomicU64,
    /// User reads passed to the destination.
    reads_dest: AtomicU64,
}

/// Adds one to a counter only its owning thread writes (no locked add).
#[inline]
fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

impl IoCounter {
    /// Counts one I/O (only the owning thread calls it: no locked add).
    #[inline]
    pub fn note(&self) {
        bump(&self.0.ios);
    }

    /// Counts one user read by where it went.
    #[inline]
    pub fn note_read(&self, from_source: bool) {
        bump(if from_source {
            &self.0.reads_source
        } else {
            &self.0.reads_dest
        });
    }

    fn totals(&self) -> Totals {
        Totals {
            ios: self.0.ios.load(Ordering::Relaxed),
            reads_source: self.0.reads_source.load(Ordering::Relaxed),
            reads_dest: self.0.reads_dest.load(Ordering::Relaxed),
        }
    }
}

/// The routing threads' counts, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub ios: u64,
    pub reads_source: u64,
    pub reads_dest: u64,
}

impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, o: Totals) {
        self.ios += o.ios;
        self.reads_source += o.reads_source;
        self.reads_dest += o.reads_dest;
    }
}

/// Slots of [`HotHints`]: a fixed 512 bytes whatever the clone's size.
pub const HINT_SLOTS: usize = 64;

/// Regions users read from the source lately, for hot-first hydration: a
/// fixed array of slots, one region each, that routing threads fill without
/// a lock and the engine empties as it copies them. A region always lands in
/// the same slot (a hash of its number), so it is held at most once; another
/// region hashing to a taken slot replaces it (hot regions are read again
/// soon and come back). Only reads routed to the source write here, and only
/// when the slot does not already hold their region: a read of a hydrated
/// region never touches it.
#[derive(Debug)]
pub struct HotHints {
    /// Region + 1; 0 = empty.
    slots: [AtomicU64; HINT_SLOTS],
}

impl Default for HotHints {
    fn default() -> Self {
        HotHints {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl HotHints {
    /// The slot a region always lands in (Fibonacci hashing: neighbouring
    /// regions land in different slots).
    #[inline]
    pub fn slot_of(region: u64) -> usize {
        (region.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - HINT_SLOTS.trailing_zeros())) as usize
    }

    /// Records that `region` was read from the source.
    #[inline]
    pub fn note(&self, region: u64) {
        let slot = &self.slots[Self::slot_of(region)];
        if slot.load(Ordering::Relaxed) != region + 1 {
            slot.store(region + 1, Ordering::Relaxed);
        }
    }

    /// The region in slot `i`, if any.
    pub fn get(&self, i: usize) -> Option<u64> {
        self.slots[i].load(Ordering::Relaxed).checked_sub(1)
    }

    /// Empties slot `i` if it still holds `region` (a routing thread may have
    /// put another one there meanwhile).
    pub fn take(&self, i: usize, region: u64) {
        let _ = self.slots[i].compare_exchange(region + 1, 0, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Regions held (for tests and status).
    pub fn len(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) != 0)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&self) {
        for s in &self.slots {
            s.store(0, Ordering::Relaxed);
        }
    }
}

/// State that threads other than the engine's may read without a lock: the
/// SPDK glue routes reads and hydrated writes with it on every thread.
#[derive(Debug)]
pub struct Shared {
    pub map: RegionMap,
    pub geometry: Geometry,
    pub(super) writes_allowed: AtomicBool,
    /// Set while background hydration runs: only then are user I/Os counted
    /// (for the busy rate limit), so a hydrated clone pays nothing.
    pub(super) hydrating: AtomicBool,
    /// The source went away before everything was hydrated.
    pub(super) source_gone: AtomicBool,
    /// Set while hot-first hydration runs: only then do reads routed to the
    /// source leave a hint.
    pub(super) hinting: AtomicBool,
    /// Regions read from the source lately (hot-first hydration).
    pub hints: HotHints,
    /// One counter per thread that routes I/O, and what the counters of
    /// threads that went away had counted.
    counters: Mutex<(Vec<Arc<IoCounter>>, Totals)>,
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
            source_gone: AtomicBool::new(false),
            hinting: AtomicBool::new(false),
            hints: HotHints::default(),
            counters: Mutex::default(),
        }
    }

    /// Routing state over a bitmap loaded from the metadata; writes are
    /// refused until the engine allows them.
    pub(crate) fn with_map(geometry: Geometry, map: RegionMap) -> Shared {
        Shared {
            map,
            geometry,
            writes_allowed: AtomicBool::new(false),
            hydrating: AtomicBool::new(false),
            source_gone: AtomicBool::new(false),
            hinting: AtomicBool::new(false),
            hints: HotHints::default(),
            counters: Mutex::default(),
        }
    }

    /// Whether routing threads should count their user I/Os now (background
    /// hydration runs and yields to them).
    #[inline]
    pub fn counting(&self) -> bool {
        self.hydrating.load(Ordering::Relaxed)
    }

    /// The engine turns counting on while background hydration runs (tests
    /// and benchmarks may too).
    pub fn set_counting(&self, on: bool) {
        self.hydrating.store(on, Ordering::Relaxed);
    }

    /// Whether reads routed to the source leave hints now (hot-first
    /// hydration runs).
    #[inline]
    pub fn hinting(&self) -> bool {
        self.hinting.load(Ordering::Relaxed)
    }

    /// The engine turns hints on while hot-first hydration runs (tests and
    /// benchmarks may too).
    pub fn set_hinting(&self, on: bool) {
        self.hinting.store(on, Ordering::Relaxed);
    }

    /// The routing decision, counted on this thread's counter: what the
    /// SPDK I/O path calls. Reads are counted by where they go (on this
    /// thread's own cache line); a read routed to the source also leaves a
    /// hot-region hint while hot-first hydration runs.
    #[inline]
    pub fn route_counted(&self, io: &UserIo, counter: &IoCounter) -> Route {
        if self.counting() {
            counter.note();
        }
        let route = self.route(io);
        if matches!(io.kind, UserOp::Read) {
            match route {
                Route::Dest => counter.note_read(false),
                Route::Source => {
                    counter.note_read(true);
                    self.source_read(io);
                }
                _ => {}
            }
        }
        route
    }

    /// A user read is going to the source: leave a hint if hot-first
    /// hydration runs.
    #[inline]
    pub(super) fn source_read(&self, io: &UserIo) {
        if self.hinting() {
            self.hints.note(self.geometry.region_of(io.offset_blocks));
        }
    }

    /// A counter for one routing thread; dropped with its last other holder.
    pub fn io_counter(&self) -> Arc<IoCounter> {
        let c = Arc::new(IoCounter::default());
        self.counters.lock().unwrap().0.push(c.clone());
        c
    }

    /// What all routing threads counted, those gone included.
    pub fn totals(&self) -> Totals {
        let mut guard = self.counters.lock().unwrap();
        let (counters, retired) = &mut *guard;
        counters.retain(|c| {
            let live = Arc::strong_count(c) > 1;
            if !live {
                *retired += c.totals();
            }
            live
        });
        let mut t = *retired;
        for c in counters.iter() {
            t += c.totals();
        }
        t
    }

    /// User I/Os counted by all routing threads.
    pub(super) fn user_ios(&self) -> u64 {
        self.totals().ios
    }

    /// The routing decision for one user I/O; the same rule serves the
    /// engine's own submit and the SPDK fast path.
    #[inline]
    pub fn route(&self, io: &UserIo) -> Route {
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
                } else if self.source_gone.load(Ordering::Relaxed) {
                    Route::Reject(IoError::Io)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::UserIoId;

    fn shared(regions: u64) -> Shared {
        Shared::new(Geometry {
            block_size: 512,
            region_size: 4096,
            num_blocks: regions * 8,
            dest_blocks: regions * 8,
            region_count: regions,
        })
    }

    fn read(region: u64) -> UserIo {
        UserIo {
            id: UserIoId(region),
            kind: UserOp::Read,
            offset_blocks: region * 8,
            num_blocks: 1,
        }
    }

    #[test]
    fn hints_are_a_fixed_size_whatever_the_clone_size_and_hold_a_region_once() {
        // 64 TiB of 64 KiB regions: the same 512 bytes.
        assert_eq!(std::mem::size_of::<HotHints>(), HINT_SLOTS * 8);
        let h = HotHints::default();
        for r in 0..1_000_000u64 {
            h.note(r * 7919);
        }
        assert!(h.len() <= HINT_SLOTS);
        let h = HotHints::default();
        for _ in 0..10 {
            h.note(42);
        }
        assert_eq!(h.len(), 1);
        let i = HotHints::slot_of(42);
        assert_eq!(h.get(i), Some(42));
        // Taking checks the region: a newer hint in the slot stays.
        h.take(i, 41);
        assert_eq!(h.get(i), Some(42));
        h.take(i, 42);
        assert!(h.is_empty());
        // Neighbours land in different slots.
        let slots: std::collections::HashSet<_> =
            (0..HINT_SLOTS as u64).map(HotHints::slot_of).collect();
        assert!(slots.len() > HINT_SLOTS / 2, "{}", slots.len());
    }

    #[test]
    fn only_reads_routed_to_the_source_leave_hints_and_only_while_hinting() {
        let s = shared(100);
        let c = s.io_counter();
        s.map.set(5);
        assert_eq!(s.route_counted(&read(7), &c), Route::Source);
        assert!(s.hints.is_empty(), "hinting is off");
        s.set_hinting(true);
        assert_eq!(s.route_counted(&read(5), &c), Route::Dest);
        assert!(s.hints.is_empty(), "a hydrated read leaves no hint");
        let w = UserIo {
            kind: UserOp::Write { fua: false },
            ..read(9)
        };
        assert_eq!(s.route_counted(&w, &c), Route::Engine);
        assert!(s.hints.is_empty(), "writes leave no hint");
        assert_eq!(s.route_counted(&read(7), &c), Route::Source);
        assert_eq!(s.hints.get(HotHints::slot_of(7)), Some(7));
    }

    #[test]
    fn read_counters_sum_every_thread_even_those_gone() {
        let s = shared(100);
        s.map.set(1);
        let a = s.io_counter();
        let b = s.io_counter();
        for _ in 0..3 {
            s.route_counted(&read(1), &a);
        }
        s.route_counted(&read(2), &b);
        s.route_counted(&read(3), &b);
        let t = s.totals();
        assert_eq!((t.reads_dest, t.reads_source, t.ios), (3, 2, 0));
        drop(b);
        let t = s.totals();
        assert_eq!(
            (t.reads_dest, t.reads_source),
            (3, 2),
            "kept after the thread left"
        );
        s.set_counting(true);
        s.route_counted(&read(2), &a);
        let t = s.totals();
        assert_eq!((t.reads_dest, t.reads_source, t.ios), (3, 3, 1));
    }
}
