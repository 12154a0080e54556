//! User I/O that needs the engine: writes into unhydrated regions (copy
//! first, or a whole-region overwrite), FUA writes, flushes, unmaps and
//! write-zeroes (split per region), with one lock per region being filled.

use super::{Engine, Req, Route};
use crate::io::*;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Parent {
    User(UserIoId),
    Fanout(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RegionOpKind {
    Write { fua: bool },
    WriteZeroes,
    Unmap,
}

/// A write-like operation inside one region.
#[derive(Clone, Copy, Debug)]
pub(super) struct RegionOp {
    pub(super) parent: Parent,
    pub(super) kind: RegionOpKind,
    pub(super) region: u64,
    pub(super) offset: u64,
    pub(super) blocks: u64,
}

pub(super) struct RegionLock {
    /// Set while a copy or a whole-region overwrite fills the region.
    pub(super) waiters: VecDeque<RegionOp>,
    /// Part of a copy in flight (false for a whole-region overwrite, or a copy
    /// still waiting for a buffer).
    pub(super) copying: bool,
}

pub(super) struct Fanout {
    pub(super) io: UserIoId,
    pub(super) remaining: usize,
    pub(super) result: IoResult,
}

impl<B: Backend> Engine<B> {
    pub fn submit(&mut self, io: UserIo) {
        if self.opening.is_some() || self.stopping {
            self.complete_user(io.id, Err(IoError::NoDevice));
            return;
        }
        if self.shared.counting() {
            self.user_ios += 1;
        }
        match self.shared.route(&io) {
            Route::Reject(e) => self.complete_user(io.id, Err(e)),
            Route::Dest => {
                if io.kind == UserOp::Read {
                    self.reads_dest += 1;
                }
                self.submit_user_passthrough(io, Dev::Dest)
            }
            Route::Source => {
                // Only reads go to the source.
                self.reads_source += 1;
                self.shared.source_read(&io);
                self.submit_user_passthrough(io, Dev::Source)
            }
            Route::Engine => self.submit_slow(io),
        }
    }

    pub(super) fn submit_user_passthrough(&mut self, io: UserIo, dev: Dev) {
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

    pub(super) fn submit_slow(&mut self, io: UserIo) {
        let g = self.shared.geometry;
        let writable = self.shared.writes_allowed.load(Ordering::Acquire);
        match io.kind {
            UserOp::Read => unreachable!("reads always route"),
            UserOp::Flush => {
                if !writable {
                    self.complete_user(io.id, Err(IoError::ReadOnly));
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
                    self.complete_user(io.id, Err(IoError::ReadOnly));
                    return;
                }
                let kind = if io.kind == UserOp::Unmap {
                    RegionOpKind::Unmap
                } else {
                    RegionOpKind::WriteZeroes
                };
                let regions = g.regions_touched(io.offset_blocks, io.num_blocks);
                if regions.is_empty() {
                    self.complete_user(io.id, Ok(()));
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

    pub(super) fn dispatch_region_op(&mut self, op: RegionOp) {
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
            // A partial write needs the region's copy: no source, no copy.
            (_, false) if self.source_gone => self.finish(op.parent, Err(IoError::Io)),
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

    pub(super) fn send_region_op(&mut self, op: RegionOp, fills: bool) {
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

    pub(super) fn region_op_done(&mut self, op: RegionOp, fills: bool, mut result: IoResult) {
        if fills {
            // A whole-region write that cannot be marked (the clone failed
            // meanwhile) must not be acknowledged: reads would go to the source.
            if result.is_ok() && !self.mark_hydrated(op.region) {
                result = Err(IoError::ReadOnly);
            }
            self.unlock(op.region, result.is_ok());
        }
        let fua = matches!(op.kind, RegionOpKind::Write { fua: true });
        if fua && result.is_ok() && !self.meta.is_committed(op.region) {
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

    pub(super) fn finish(&mut self, parent: Parent, result: IoResult) {
        match parent {
            Parent::User(id) => self.complete_user(id, result),
            Parent::Fanout(k) => {
                let f = &mut self.fanouts[k];
                if f.result.is_ok() {
                    f.result = result;
                }
                f.remaining -= 1;
                if f.remaining == 0 {
                    let f = self.fanouts.remove(k);
                    self.complete_user(f.io, f.result);
                }
            }
        }
    }

    pub(super) fn unlock(&mut self, region: u64, filled: bool) {
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
    pub(super) fn mark_hydrated(&mut self, region: u64) -> bool {
        if !self.shared.writes_allowed.load(Ordering::Acquire) {
            return false;
        }
        if self.shared.map.set(region) {
            self.hydrated += 1;
            self.meta.mark_hydrated(region);
            // Whole-region writes can hydrate the last region too.
            self.check_hydrated();
            self.stats.bytes_hydrated += self.shared.geometry.region_extent(region).1
                * self.shared.geometry.block_size as u64;
        }
        true
    }
}
