//! The engine's only window on the world: block requests with asynchronous
//! completions, buffers from the host's (DMA) pool, a clock and notices.

use std::fmt;

/// The three devices under a clone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dev {
    Source,
    Dest,
    Meta,
}

impl fmt::Display for Dev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dev::Source => "source",
            Dev::Dest => "destination",
            Dev::Meta => "metadata",
        })
    }
}

/// The host's handle of a user I/O (an `spdk_bdev_io` in SPDK).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UserIoId(pub u64);

/// The host's handle of a buffer it lent the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufId(pub u64);

/// The engine's handle of a device request, returned in the completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReqId(pub u64);

/// Where the data of a read or write lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Data {
    /// The whole data buffer of a user I/O (its iovecs), passed through untouched.
    User(UserIoId),
    /// A buffer of the host's pool, from `offset` bytes on.
    Buf { buf: BufId, offset: usize },
}

/// One request to a device, in that device's blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DevOp {
    Read {
        offset_blocks: u64,
        num_blocks: u64,
        data: Data,
    },
    Write {
        offset_blocks: u64,
        num_blocks: u64,
        data: Data,
        fua: bool,
    },
    Flush,
    Unmap {
        offset_blocks: u64,
        num_blocks: u64,
    },
    WriteZeroes {
        offset_blocks: u64,
        num_blocks: u64,
    },
    Reset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoError {
    /// The device failed the request.
    Io,
    /// The device is gone (hot-removed, closed).
    NoDevice,
    /// The request is malformed (out of range, crosses a region).
    Invalid,
    /// The clone refuses writes in its current state.
    ReadOnly,
    /// The request type is not supported.
    Unsupported,
}

impl IoError {
    /// The positive errno a host reports for this error.
    pub fn errno(self) -> i32 {
        match self {
            IoError::Io => 5,           // EIO
            IoError::NoDevice => 19,    // ENODEV
            IoError::Invalid => 22,     // EINVAL
            IoError::ReadOnly => 30,    // EROFS
            IoError::Unsupported => 95, // EOPNOTSUPP
        }
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoError::Io => "I/O error",
            IoError::NoDevice => "device removed",
            IoError::Invalid => "invalid request",
            IoError::ReadOnly => "clone is read-only",
            IoError::Unsupported => "unsupported request",
        })
    }
}

pub type IoResult = Result<(), IoError>;

/// A user I/O to the clone, in the clone's blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserIo {
    pub id: UserIoId,
    pub kind: UserOp,
    pub offset_blocks: u64,
    pub num_blocks: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserOp {
    /// Must lie inside one region (SPDK splits on the region boundary).
    Read,
    /// Must lie inside one region. `fua`: durable (data and the region's
    /// hydration) when completed.
    Write {
        fua: bool,
    },
    WriteZeroes,
    Unmap,
    Flush,
    Reset,
}

/// Something the host should know about, delivered through `Backend::notify`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// `Engine::open` finished.
    Opened(Result<crate::engine::OpenInfo, crate::engine::OpenError>),
    /// A commit or the destination failed: the clone refuses writes now.
    Failed(String),
    /// Every region is hydrated (and the commit that says so is durable).
    Hydrated,
    /// `release_source` finished: the source is no longer read.
    SourceReleased(Result<(), String>),
    /// `shutdown` finished: nothing in flight, everything committed.
    Stopped,
}

/// What the engine needs from its host. The engine is single-threaded and
/// polled: `submit` must not call back into the engine; the host delivers the
/// completion later through `Engine::complete`.
pub trait Backend {
    fn submit(&mut self, id: ReqId, dev: Dev, op: DevOp);
    fn complete_user(&mut self, io: UserIoId, result: IoResult);
    /// A buffer of at least `len` bytes, DMA-capable where that matters;
    /// None when the pool is exhausted (the engine retries on a later poll).
    fn alloc_buf(&mut self, len: usize) -> Option<BufId>;
    fn buf_mut(&mut self, buf: BufId) -> &mut [u8];
    fn free_buf(&mut self, buf: BufId);
    /// Copies the first `len` bytes of user write `io`'s data into `buf` from
    /// `offset` bytes on: a partial write rides in its region's copy.
    fn copy_user_data(&mut self, io: UserIoId, len: usize, buf: BufId, offset: usize);
    /// Monotonic time in nanoseconds.
    fn now_ns(&self) -> u64;
    fn notify(&mut self, notice: Notice);
}
