//! A small io_uring wrapper for the CLI's backend (the `io-uring` crate):
//! reads, writes and `fdatasync`s are queued when the engine submits them and
//! run overlapped in the kernel; the driver loop reaps their completions.
//!
//! The one unsafe operation is queueing a read or write: the kernel uses the
//! buffer until the completion is reaped. `Uring::push` is `unsafe` and states
//! that contract; `Drop` waits for everything still in the kernel so that no
//! buffer is freed under it.

use io_uring::{opcode, types, IoUring, Probe};
use std::io;
use std::os::unix::io::RawFd;

/// Submission queue size. The completion queue is twice as large, and no
/// more than that many requests are ever in the kernel at once, so no
/// completion can be dropped (whatever the kernel's overflow handling).
const ENTRIES: u32 = 128;

/// One request, as the kernel sees it.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Read {
        fd: RawFd,
        ptr: *mut u8,
        len: u32,
        at: u64,
    },
    Write {
        fd: RawFd,
        ptr: *const u8,
        len: u32,
        at: u64,
    },
    /// `fdatasync`.
    DataSync { fd: RawFd },
}

pub struct Uring {
    ring: IoUring,
    /// Pushed and not yet reaped.
    in_kernel: usize,
    cap: usize,
}

impl Uring {
    /// A ring, when the kernel offers one with the operations used here
    /// (fails on kernels before 5.6, with `io_uring_disabled`, or under a
    /// seccomp filter that refuses `io_uring_setup`).
    pub fn new() -> io::Result<Uring> {
        let ring = IoUring::new(ENTRIES)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (code, name) in [
            (opcode::Read::CODE, "READ"),
            (opcode::Write::CODE, "WRITE"),
            (opcode::Fsync::CODE, "FSYNC"),
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("the kernel's io_uring lacks IORING_OP_{name}"),
                ));
            }
        }
        let cap = ring.params().cq_entries() as usize;
        Ok(Uring {
            ring,
            in_kernel: 0,
            cap,
        })
    }

    /// Whether another request may be pushed now.
    pub fn has_room(&self) -> bool {
        self.in_kernel < self.cap
    }

    /// Queues `op` (the kernel sees it at the next `submit`); its completion
    /// carries `user_data`. Call only when `has_room`.
    ///
    /// # Safety
    ///
    /// For a read or write, `ptr..ptr + len` must stay allocated, and must not
    /// be read or written by anything else (for a write: not written), until
    /// the completion carrying `user_data` has been reaped by `reap`, or until
    /// this ring has been dropped. `fd` must stay open as long.
    pub unsafe fn push(&mut self, op: Op, user_data: u64) -> io::Result<()> {
        debug_assert!(self.has_room());
        let entry = match op {
            Op::Read { fd, ptr, len, at } => opcode::Read::new(types::Fd(fd), ptr, len)
                .offset(at)
                .build(),
            Op::Write { fd, ptr, len, at } => opcode::Write::new(types::Fd(fd), ptr, len)
                .offset(at)
                .build(),
            Op::DataSync { fd } => opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(user_data);
        loop {
            // SAFETY: the caller keeps the memory and the descriptor valid
            // until the completion is reaped (this function's contract).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                break;
            }
            // The submission queue is full: hand it to the kernel.
            self.submit(false)?;
        }
        self.in_kernel += 1;
        Ok(())
    }

    /// Hands the queued requests to the kernel; with `wait`, also blocks
    /// until at least one completion is available (when anything is in the
    /// kernel). A signal only cuts the wait short.
    pub fn submit(&mut self, wait: bool) -> io::Result<()> {
        let want = usize::from(wait && self.in_kernel > 0);
        if want == 0 && self.ring.submission().is_empty() {
            return Ok(());
        }
        match self.ring.submit_and_wait(want) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Calls `f(user_data, result)` for every available completion (`result`
    /// is the byte count, or a negative errno).
    pub fn reap(&mut self, mut f: impl FnMut(u64, i32)) {
        for cqe in self.ring.completion() {
            self.in_kernel -= 1;
            f(cqe.user_data(), cqe.result());
        }
    }

    /// Waits until nothing is in the kernel. False when that cannot be
    /// established (the ring failed): the caller must then leak the buffers.
    pub fn drain(&mut self) -> bool {
        while self.in_kernel > 0 {
            if self.submit(true).is_err() {
                return false;
            }
            self.reap(|_, _| {});
        }
        true
    }
}
