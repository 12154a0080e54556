//! bdev_clone's engine: everything that decides where an I/O goes, what is
//! copied and when metadata is committed. No SPDK here: the engine talks to
//! block devices through [`io::Backend`], so the same code runs inside SPDK,
//! in the deterministic simulator and over plain files.

pub mod buffers;
pub mod engine;
pub mod geometry;
pub mod io;
pub mod metadata;
pub mod params;
pub mod plan;
pub mod region_map;
pub mod stack;

pub use engine::{
    CloneState, Engine, HydrationOrder, OpenError, OpenInfo, OpenParams, Settings, Shared, Status,
};
pub use geometry::{DeviceInfo, Geometry, DEFAULT_REGION_SIZE};
pub use io::*;
