//! The routing decision, made on any thread without a lock: the SPDK glue
//! sends reads and writes of hydrated regions straight to a base bdev with
//! it, and everything else to the engine's thread.

use crate::geometry::Geometry;
use crate::io::{IoError, UserIo, UserOp};
use crate::region_map::RegionMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
    pub(super) user_ios: AtomicU64,
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

    /// Routing state over a bitmap loaded from the metadata; writes are
    /// refused until the engine allows them.
    pub(crate) fn with_map(geometry: Geometry, map: RegionMap) -> Shared {
        Shared {
            map,
            geometry,
            writes_allowed: AtomicBool::new(false),
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
