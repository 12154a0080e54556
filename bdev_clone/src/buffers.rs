//! The engine's buffer policy: what memory may be lent to whom, and when it
//! goes back to the host. Hosts only supply memory (DMA-capable in SPDK,
//! aligned for O_DIRECT in the CLI); every host runs this same policy, so the
//! simulator tests the policy SPDK runs.
//!
//! - **Size classes.** A request is served from a buffer of the next power of
//!   two (at least [`MIN_CLASS`]); freed buffers are kept by class for reuse.
//! - **A hard cap** on everything held (lent and kept), per clone.
//! - **A reserve for metadata.** Copies may hold at most `cap - reserve`;
//!   commits (a window of page buffers and a superblock buffer) always find
//!   theirs, however many copies are in flight: copies wait, commits don't.
//! - **Returned when idle.** Kept buffers go back to the host after
//!   [`IDLE_NS`] without a request, and whenever room is needed for another
//!   class.

use crate::io::{Backend, BufId};
use std::collections::{BTreeMap, HashMap};

/// Smallest size class.
pub const MIN_CLASS: usize = 512;
/// Default cap of one clone's buffers.
pub const DEFAULT_CAP: usize = 64 << 20;
/// Kept buffers go back to the host after this long without a request.
pub const IDLE_NS: u64 = 1_000_000_000;

/// Who asks: copies are limited to what the reserve leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Copy,
    Metadata,
}

/// Bytes a buffer of `len` bytes takes.
pub fn class_of(len: usize) -> usize {
    len.next_power_of_two().max(MIN_CLASS)
}

/// What the pool holds, for status reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufferStats {
    /// Bytes lent out now.
    pub lent: usize,
    /// Bytes kept for reuse (held from the host, not lent).
    pub kept: usize,
    pub cap: usize,
    pub reserve: usize,
}

#[derive(Debug)]
pub(crate) struct Buffers {
    cap: usize,
    reserve: usize,
    lent: usize,
    lent_to_copies: usize,
    kept: usize,
    /// Kept buffers by class.
    free: BTreeMap<usize, Vec<BufId>>,
    /// Class and purpose of every lent buffer.
    live: HashMap<BufId, (usize, Purpose)>,
    last_request_ns: u64,
}

impl Buffers {
    pub fn new(cap: usize) -> Buffers {
        Buffers {
            cap,
            reserve: 0,
            lent: 0,
            lent_to_copies: 0,
            kept: 0,
            free: BTreeMap::new(),
            live: HashMap::new(),
            last_request_ns: 0,
        }
    }

    /// What copies may never take (set once the metadata's needs are known).
    pub fn set_reserve(&mut self, reserve: usize) {
        self.reserve = reserve.min(self.cap);
    }

    pub fn stats(&self) -> BufferStats {
        BufferStats {
            lent: self.lent,
            kept: self.kept,
            cap: self.cap,
            reserve: self.reserve,
        }
    }

    /// A buffer of at least `len` bytes, or None: the caller retries later
    /// (a copy when another finishes, a commit at the next poll).
    pub fn alloc(
        &mut self,
        host: &mut impl Backend,
        len: usize,
        purpose: Purpose,
        now: u64,
    ) -> Option<BufId> {
        self.last_request_ns = now;
        let class = class_of(len);
        let fits = match purpose {
            Purpose::Copy => self.lent_to_copies + class <= self.cap - self.reserve,
            Purpose::Metadata => self.lent + class <= self.cap,
        };
        if !fits {
            return None;
        }
        let buf = match self.take_kept(class) {
            Some(buf) => buf,
            None => {
                // Room under the cap first: give kept buffers of other
                // classes back.
                while self.lent + self.kept + class > self.cap && self.release_one(host) {}
                match host.alloc_buf(class) {
                    Some(buf) => buf,
                    None => {
                        // The host is short of memory: give back all we keep.
                        while self.release_one(host) {}
                        host.alloc_buf(class)?
                    }
                }
            }
        };
        self.lent += class;
        if purpose == Purpose::Copy {
            self.lent_to_copies += class;
        }
        self.live.insert(buf, (class, purpose));
        Some(buf)
    }

    pub fn free(&mut self, buf: BufId) {
        let (class, purpose) = self.live.remove(&buf).expect("freeing a lent buffer");
        self.lent -= class;
        if purpose == Purpose::Copy {
            self.lent_to_copies -= class;
        }
        self.kept += class;
        self.free.entry(class).or_default().push(buf);
    }

    /// Gives kept buffers back to the host once no request came for a while.
    pub fn trim(&mut self, host: &mut impl Backend, now: u64) {
        if self.kept > 0 && now.saturating_sub(self.last_request_ns) >= IDLE_NS {
            while self.release_one(host) {}
        }
    }

    /// Gives every kept buffer back (the engine stops).
    pub fn release_all(&mut self, host: &mut impl Backend) {
        while self.release_one(host) {}
    }

    /// A kept buffer of `class`, if there is one (no class list stays empty).
    fn take_kept(&mut self, class: usize) -> Option<BufId> {
        let list = self.free.get_mut(&class)?;
        let buf = list.pop().expect("no empty class lists");
        if list.is_empty() {
            self.free.remove(&class);
        }
        self.kept -= class;
        Some(buf)
    }

    /// Gives one kept buffer, of the largest class, back to the host.
    fn release_one(&mut self, host: &mut impl Backend) -> bool {
        let Some(mut entry) = self.free.last_entry() else {
            return false;
        };
        let class = *entry.key();
        let buf = entry.get_mut().pop().expect("no empty class lists");
        if entry.get().is_empty() {
            entry.remove();
        }
        self.kept -= class;
        host.free_buf(buf);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::*;

    /// Counts what the host lent.
    #[derive(Default)]
    struct CountingHost {
        next: u64,
        held: HashMap<u64, usize>,
        limit: Option<usize>,
    }

    impl Backend for CountingHost {
        fn submit(&mut self, _: ReqId, _: Dev, _: DevOp) {}
        fn complete_user(&mut self, _: UserIoId, _: IoResult) {}
        fn alloc_buf(&mut self, len: usize) -> Option<BufId> {
            let held: usize = self.held.values().sum();
            if self.limit.is_some_and(|l| held + len > l) {
                return None;
            }
            self.next += 1;
            self.held.insert(self.next, len);
            Some(BufId(self.next))
        }
        fn buf_mut(&mut self, _: BufId) -> &mut [u8] {
            unimplemented!()
        }
        fn free_buf(&mut self, buf: BufId) {
            self.held.remove(&buf.0).expect("host freed twice");
        }
        fn copy_user_data(&mut self, _: UserIoId, _: usize, _: BufId, _: usize) {}
        fn now_ns(&self) -> u64 {
            0
        }
        fn notify(&mut self, _: Notice) {}
    }

    #[test]
    fn classes_reuse_and_cap() {
        let mut host = CountingHost::default();
        let mut b = Buffers::new(1 << 20);
        let a = b.alloc(&mut host, 65_000, Purpose::Copy, 0).unwrap();
        assert_eq!(host.held[&a.0], 65_536);
        b.free(a);
        let again = b.alloc(&mut host, 40_000, Purpose::Copy, 1).unwrap();
        assert_eq!(again, a, "a kept buffer of the same class is reused");
        b.free(again);
        // 16 x 64 KiB fill the cap; the 17th is refused.
        let bufs: Vec<_> = (0..16)
            .map(|_| b.alloc(&mut host, 65_536, Purpose::Copy, 2).unwrap())
            .collect();
        assert!(b.alloc(&mut host, 65_536, Purpose::Copy, 2).is_none());
        assert_eq!(host.held.values().sum::<usize>(), 1 << 20);
        for x in bufs {
            b.free(x);
        }
        // Another class: kept buffers are given back to make room.
        let big = b.alloc(&mut host, 1 << 20, Purpose::Copy, 3).unwrap();
        assert_eq!(host.held.len(), 1);
        assert_eq!(host.held[&big.0], 1 << 20);
    }

    #[test]
    fn copies_never_take_the_reserve() {
        let mut host = CountingHost::default();
        let mut b = Buffers::new(1 << 20);
        b.set_reserve(64 << 10);
        let mut copies = Vec::new();
        while let Some(x) = b.alloc(&mut host, 64 << 10, Purpose::Copy, 0) {
            copies.push(x);
        }
        assert_eq!(copies.len(), 15, "copies stop short of the reserve");
        for _ in 0..16 {
            let page = b.alloc(&mut host, 4096, Purpose::Metadata, 0).unwrap();
            assert_eq!(class_of(4096), 4096);
            b.free(page);
        }
        let pages: Vec<_> = (0..16)
            .map(|_| b.alloc(&mut host, 4096, Purpose::Metadata, 0).unwrap())
            .collect();
        assert!(b.alloc(&mut host, 4096, Purpose::Metadata, 0).is_none());
        for p in pages {
            b.free(p);
        }
        assert!(b.alloc(&mut host, 64 << 10, Purpose::Copy, 0).is_none());
    }

    #[test]
    fn idle_memory_goes_back_to_the_host() {
        let mut host = CountingHost::default();
        let mut b = Buffers::new(1 << 20);
        let x = b.alloc(&mut host, 4096, Purpose::Copy, 10).unwrap();
        b.free(x);
        b.trim(&mut host, 10 + IDLE_NS - 1);
        assert_eq!(host.held.len(), 1, "kept while recently used");
        b.trim(&mut host, 10 + IDLE_NS);
        assert!(host.held.is_empty(), "returned when idle");
        assert_eq!(b.stats().kept, 0);
    }

    #[test]
    fn a_short_host_gets_kept_memory_back_first() {
        let mut host = CountingHost {
            limit: Some(128 << 10),
            ..Default::default()
        };
        let mut b = Buffers::new(1 << 20);
        let x = b.alloc(&mut host, 64 << 10, Purpose::Copy, 0).unwrap();
        let y = b.alloc(&mut host, 64 << 10, Purpose::Copy, 0).unwrap();
        b.free(x);
        b.free(y);
        let z = b.alloc(&mut host, 128 << 10, Purpose::Copy, 0).unwrap();
        assert_eq!(host.held.len(), 1);
        assert_eq!(host.held[&z.0], 128 << 10);
    }
}
