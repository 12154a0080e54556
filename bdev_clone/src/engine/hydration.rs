//! Hydration: region copies (source read into a pool buffer, the same
//! buffer written to the destination), the background sweep with its
//! throttles, and the hydration clock.

use super::route::HINT_SLOTS;
use super::user_io::{Parent, RegionLock, RegionOp};
use super::{CloneState, Engine, HydrationOrder, Req};
use crate::buffers::Purpose;
use crate::io::*;
use std::collections::VecDeque;

pub(super) struct Copy {
    pub(super) first: u64,
    pub(super) count: u64,
    pub(super) blocks: u64,
    pub(super) buf: BufId,
    pub(super) background: bool,
    /// The partial write that needed this copy, its data patched into the
    /// buffer between the source read and the destination write: one
    /// destination write instead of two, and the write completes with the copy.
    pub(super) merged: Option<RegionOp>,
}

/// What trying to start one background copy came to.
enum Start {
    /// A copy of this many regions is in flight.
    Copying(u64),
    /// The rate limit allows no more now.
    NoTokens,
    /// No buffer now.
    NoBuffer,
}

impl<B: Backend> Engine<B> {
    pub(super) fn start_copy(
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
        let now = self.backend.now_ns();
        let len = (blocks * g.block_size as u64) as usize;
        let Some(buf) = self
            .buffers
            .alloc(&mut self.backend, len, Purpose::Copy, now)
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

    pub(super) fn copy_step(&mut self, k: usize, wrote: bool, result: IoResult) {
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
        self.buffers.free(c.buf);
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
    pub(super) fn hydration_ns_at(&self, now: u64) -> u64 {
        let running = if self.state == CloneState::Hydrating {
            now.saturating_sub(self.hydration_clock_ns)
        } else {
            0
        };
        self.stats.hydration_ns + running
    }

    /// Brings `stats.hydration_ns` up to date; called before every change of
    /// state or settings.
    pub(super) fn tick_hydration_clock(&mut self) {
        let now = self.backend.now_ns();
        self.stats.hydration_ns = self.hydration_ns_at(now);
        self.hydration_clock_ns = now;
    }

    pub(super) fn check_hydrated(&mut self) {
        if matches!(self.state, CloneState::Hydrating | CloneState::Paused)
            && self.hydrated == self.shared.geometry.region_count
        {
            self.tick_hydration_clock();
            self.state = CloneState::Hydrated;
            self.commit_wanted = true;
        }
    }

    /// The hydration rate limit in force, in bytes per second (0 = none):
    /// the busy limit while user I/O was seen in the last 50 ms.
    pub(super) fn rate_limit(&mut self, now: u64) -> f64 {
        // The routing threads' counters sit behind a lock: sum them at most
        // once a millisecond, not on every copy completion (the busy window
        // is 50 ms).
        if now >= self.routed_ios.1 {
            self.routed_ios = (self.shared.user_ios(), now + 1_000_000);
        }
        let ios = self.user_ios + self.routed_ios.0;
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
    /// background hydration runs) and whether to leave hints of the regions
    /// it reads from the source (only while hot-first hydration runs).
    pub(super) fn note_hydrating(&self) {
        let active = self.state == CloneState::Hydrating && self.settings.hydration_enabled;
        self.shared.set_counting(active);
        self.shared.set_hinting(
            active
                && !self.source_gone
                && self.settings.hydration_order == HydrationOrder::HotFirst,
        );
    }

    /// Starts a background copy of `first` and of up to `max - 1` regions
    /// after it that are neither hydrated nor locked, if the rate limit and
    /// the buffer pool allow.
    fn start_background(&mut self, first: u64, max: u64, rate: f64) -> Start {
        let g = self.shared.geometry;
        let mut count = 1;
        while count < max
            && first + count < g.region_count
            && !self.shared.map.is_hydrated(first + count)
            && !self.locks.contains_key(&(first + count))
        {
            count += 1;
        }
        if rate > 0.0 {
            let bytes = (count * g.region_size as u64) as f64;
            if self.tokens < bytes {
                return Start::NoTokens;
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
            return Start::NoBuffer;
        }
        Start::Copying(count)
    }

    /// Hot-first: copies the regions users read from the source lately (the
    /// routing threads' hints), before the sweep goes on. A region whose
    /// predecessor is hydrated or being copied is read by a sequential
    /// reader: the copy takes a batch of the regions after it too.
    /// Returns false when the throttles allow nothing more now.
    fn pump_hot(&mut self, rate: f64) -> bool {
        let g = self.shared.geometry;
        let threshold = self.settings.hydration_threshold.max(1) as u64;
        let batch = self.settings.hydration_batch_size.max(1) as u64;
        for _ in 0..HINT_SLOTS {
            if self.background_in_flight >= threshold {
                return false;
            }
            let i = self.hint_pos;
            let Some(r) = self.shared.hints.get(i) else {
                self.hint_pos = (i + 1) % HINT_SLOTS;
                continue;
            };
            if r >= g.region_count || self.shared.map.is_hydrated(r) || self.locks.contains_key(&r)
            {
                // Copied (or being copied, or written) meanwhile.
                self.shared.hints.take(i, r);
                self.hint_pos = (i + 1) % HINT_SLOTS;
                continue;
            }
            let sequential =
                r > 0 && (self.shared.map.is_hydrated(r - 1) || self.locks.contains_key(&(r - 1)));
            let room =
                (threshold - self.background_in_flight).min(if sequential { batch } else { 1 });
            match self.start_background(r, room, rate) {
                Start::Copying(count) => {
                    self.stats.regions_hydrated_hot += count;
                    self.shared.hints.take(i, r);
                    self.hint_pos = (i + 1) % HINT_SLOTS;
                }
                Start::NoTokens | Start::NoBuffer => return false,
            }
        }
        true
    }

    pub(super) fn pump_hydration(&mut self) {
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
            || self.source_gone
            || !self.settings.hydration_enabled
            || self.stopping
            || now < self.retry_after_ns
        {
            return;
        }
        if self.settings.hydration_order == HydrationOrder::HotFirst && !self.pump_hot(rate) {
            return;
        }
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
            match self.start_background(first, room, rate) {
                Start::Copying(count) => self.cursor = first + count,
                Start::NoTokens | Start::NoBuffer => return,
            }
        }
    }
}
