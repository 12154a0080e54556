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
pub struct IoCounter(CachePadded<AtomicU64>);

impl IoCounter {
    /// Counts one I/O (only the owning thread calls it: no locked add).
    #[inline]
    pub fn note(&self) {
        self.0
            .store(self.0.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
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
    /// One counter per thread that routes I/O.
    counters: Mutex<Vec<Arc<IoCounter>>>,
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
            counters: Mutex::new(Vec::new()),
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
            counters: Mutex::new(Vec::new()),
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

    /// The routing decision, counted on this thread's counter while the
    /// engine wants user I/O counted: what the SPDK I/O path calls.
    #[inline]
    pub fn route_counted(&self, io: &UserIo, counter: &IoCounter) -> Route {
        if self.counting() {
            counter.note();
        }
        self.route(io)
    }

    /// A counter for one routing thread; dropped with its last other holder.
    pub fn io_counter(&self) -> Arc<IoCounter> {
        let c = Arc::new(IoCounter::default());
        self.counters.lock().unwrap().push(c.clone());
        c
    }

    /// User I/Os counted by all routing threads (goes down when a thread's
    /// counter goes away: only changes matter).
    pub(super) fn user_ios(&self) -> u64 {
        let mut counters = self.counters.lock().unwrap();
        counters.retain(|c| Arc::strong_count(c) > 1);
        counters.iter().map(|c| c.get()).sum()
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
