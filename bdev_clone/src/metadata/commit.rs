//! The commit protocol: the sequence DESIGN.md fixes, in one place.
//!
//! 1. snapshot the bitmap pages changed since the last commit (their words as
//!    they are in memory now: every bit set there names data already written
//!    to the destination);
//! 2. **flush the destination** and wait for it;
//! 3. write each changed page into the slot not holding its current version
//!    (through a window of [`PAGE_WINDOW`] buffers, so that a commit of any
//!    size needs a fixed amount of memory), then flush the metadata device;
//! 4. write the superblock into the other slot, then flush the metadata device;
//! 5. only then is the commit done: the engine completes the user flushes and
//!    FUA writes that waited for it.
//!
//! A commit with nothing new sends only the destination flush (a user flush
//! still needs it) and writes no metadata. Any failed step fails the commit:
//! nothing it carried counts as durable, and the engine fails the clone.

use super::{Layout, MetaPort, MetaReq, Metadata, FLAG_SOURCE_RELEASED, SB_LEN};
use crate::buffers::class_of;
use crate::io::{BufId, Data, Dev, DevOp, IoError, IoResult};
use crate::region_map::RegionMap;

/// Page writes of one commit in flight at once.
pub const PAGE_WINDOW: usize = 16;

/// The memory a commit needs: a window of page buffers and a superblock
/// buffer. The buffer policy keeps this much out of the copies' reach.
pub fn reserve_for(layout: &Layout) -> usize {
    PAGE_WINDOW * class_of(layout.page_size as usize) + class_of(layout.sb_area as usize)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    DestFlush,
    Pages,
    MetaFlush,
    Superblock,
    FinalFlush,
}

/// One page in a commit: where it goes and what it says (the words as they
/// were when the commit started, before the destination flush).
struct PageWrite {
    page: u32,
    slot: u8,
    words: Vec<u64>,
}

pub(super) struct Commit {
    seq: u64,
    pages: Vec<PageWrite>,
    /// Next page to write, page writes in flight, and their buffers once free.
    next_page: usize,
    pages_in_flight: usize,
    spare: Vec<BufId>,
    write_sb: bool,
    sb_buf: Option<BufId>,
    flags: u32,
    step: Step,
    outstanding: usize,
    error: Option<(Dev, IoError)>,
}

/// How a commit ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CommitEnd {
    /// Durable; `source_released` when its superblock said so.
    Done { source_released: bool },
    /// Nothing it carried is durable.
    Failed { dev: Dev, error: IoError },
}

impl Metadata {
    /// Starts a commit of everything marked so far (steps 1 and 2). False when
    /// the superblock buffer cannot be had now: nothing changed, try again at
    /// the next poll.
    pub fn begin_commit(&mut self, port: &mut impl MetaPort, map: &RegionMap) -> bool {
        debug_assert!(self.commit.is_none());
        let layout = self.layout;
        let write_sb = !self.dirty_list.is_empty() || self.sb_dirty;
        let sb_buf = if write_sb {
            let Some(buf) = port.alloc_buf(layout.sb_area as usize) else {
                return false;
            };
            Some(buf)
        } else {
            None
        };
        let wpp = layout.words_per_page();
        let nwords = self.committed.len();
        let mut pages = Vec::with_capacity(self.dirty_list.len());
        for page in std::mem::take(&mut self.dirty_list) {
            self.dirty[page as usize] = false;
            let lo = page as usize * wpp;
            pages.push(PageWrite {
                page,
                slot: 1 - self.page_slot[page as usize],
                words: (lo..(lo + wpp).min(nwords)).map(|i| map.word(i)).collect(),
            });
        }
        self.sb_dirty = false;
        self.commit = Some(Commit {
            seq: self.seq + 1,
            pages,
            next_page: 0,
            pages_in_flight: 0,
            spare: Vec::new(),
            write_sb,
            sb_buf,
            flags: self.flags,
            step: Step::DestFlush,
            outstanding: 1,
            error: None,
        });
        self.stats.dest_flushes += 1;
        // The rule this project exists for: the destination is flushed before
        // any metadata that could name its data is written.
        port.send(Dev::Dest, DevOp::Flush, MetaReq::Commit { buf: None });
        true
    }

    /// A request of the commit in flight completed (`buf`: the page buffer
    /// of a page write); returns how the commit ended once it has.
    pub fn commit_io_done(
        &mut self,
        port: &mut impl MetaPort,
        buf: Option<BufId>,
        result: IoResult,
    ) -> Option<CommitEnd> {
        let c = self.commit.as_mut().expect("commit in flight");
        if let Err(e) = result {
            let dev = if c.step == Step::DestFlush {
                Dev::Dest
            } else {
                Dev::Meta
            };
            c.error.get_or_insert((dev, e));
        }
        if c.step == Step::Pages {
            c.pages_in_flight -= 1;
            c.spare.extend(buf);
            if c.error.is_none() && c.next_page < c.pages.len() {
                self.write_pages(port);
                return None;
            }
            if c.pages_in_flight > 0 {
                return None;
            }
        } else {
            c.outstanding -= 1;
            if c.outstanding > 0 {
                return None;
            }
        }
        if let Some((dev, error)) = c.error {
            let c = self.commit.take().unwrap();
            for buf in c.spare.into_iter().chain(c.sb_buf) {
                port.free_buf(buf);
            }
            return Some(CommitEnd::Failed { dev, error });
        }
        match c.step {
            Step::DestFlush if !c.write_sb => return Some(self.commit_done(port)),
            Step::DestFlush if !c.pages.is_empty() => {
                c.step = Step::Pages;
                self.write_pages(port);
            }
            Step::DestFlush | Step::MetaFlush => self.write_superblock(port),
            Step::Pages => {
                for buf in std::mem::take(&mut c.spare) {
                    port.free_buf(buf);
                }
                c.step = Step::MetaFlush;
                c.outstanding = 1;
                port.send(Dev::Meta, DevOp::Flush, MetaReq::Commit { buf: None });
            }
            Step::Superblock => {
                c.step = Step::FinalFlush;
                c.outstanding = 1;
                port.send(Dev::Meta, DevOp::Flush, MetaReq::Commit { buf: None });
            }
            Step::FinalFlush => return Some(self.commit_done(port)),
        }
        None
    }

    /// Restarts page writes that found no buffer (called at every poll).
    pub fn resume_commit(&mut self, port: &mut impl MetaPort) {
        if self.commit.as_ref().is_some_and(|c| {
            c.step == Step::Pages && c.pages_in_flight == 0 && c.next_page < c.pages.len()
        }) {
            self.write_pages(port);
        }
    }

    /// Step 3: fills the window of page writes.
    fn write_pages(&mut self, port: &mut impl MetaPort) {
        let layout = self.layout;
        let ps = layout.page_size as usize;
        let bs = self.meta_bs as u64;
        let nonce = self.nonce;
        let c = self.commit.as_mut().unwrap();
        while c.pages_in_flight < PAGE_WINDOW && c.next_page < c.pages.len() {
            let Some(buf) = c.spare.pop().or_else(|| port.alloc_buf(ps)) else {
                break; // resume_commit tries again
            };
            let p = &c.pages[c.next_page];
            super::encode_page(&mut port.buf_mut(buf)[..ps], p.page, c.seq, nonce, &p.words);
            let offset = layout.page_offset(p.page, p.slot);
            self.stats.meta_bytes_written += ps as u64;
            port.send(
                Dev::Meta,
                DevOp::Write {
                    offset_blocks: offset / bs,
                    num_blocks: ps as u64 / bs,
                    data: Data::Buf { buf, offset: 0 },
                    fua: false,
                },
                MetaReq::Commit { buf: Some(buf) },
            );
            c.next_page += 1;
            c.pages_in_flight += 1;
        }
    }

    /// Step 4.
    fn write_superblock(&mut self, port: &mut impl MetaPort) {
        let hydrated = self.committed_count_after(self.commit.as_ref().unwrap());
        let c = self.commit.as_mut().unwrap();
        let buf = c.sb_buf.expect("allocated when the commit started");
        let mut sb = self.sb_template.clone();
        sb.seq = c.seq;
        sb.flags = c.flags;
        sb.regions_hydrated = hydrated;
        c.step = Step::Superblock;
        c.outstanding = 1;
        let area = self.layout.sb_area as usize;
        sb.encode(&mut port.buf_mut(buf)[..area]);
        let offset = self.layout.sb_offset(1 - self.sb_slot);
        let bs = self.meta_bs as u64;
        let len = ((SB_LEN as u64).div_ceil(bs) * bs).min(self.layout.sb_area);
        self.stats.meta_bytes_written += len;
        port.send(
            Dev::Meta,
            DevOp::Write {
                offset_blocks: offset / bs,
                num_blocks: len / bs,
                data: Data::Buf { buf, offset: 0 },
                fua: false,
            },
            MetaReq::Commit { buf: None },
        );
    }

    /// Regions hydrated once commit `c` lands (the superblock records it, so
    /// that loading can tell a lost bitmap page).
    fn committed_count_after(&self, c: &Commit) -> u64 {
        let wpp = self.layout.words_per_page();
        let mut n = self.committed_count;
        for p in &c.pages {
            let lo = p.page as usize * wpp;
            for (i, w) in p.words.iter().enumerate() {
                n += w.count_ones() as u64;
                n -= self.committed[lo + i].count_ones() as u64;
            }
        }
        n
    }

    /// Step 5: what the commit carried is durable; the committed view moves on.
    fn commit_done(&mut self, port: &mut impl MetaPort) -> CommitEnd {
        let c = self.commit.take().unwrap();
        let wpp = self.layout.words_per_page();
        for p in c.pages {
            self.page_slot[p.page as usize] = p.slot;
            self.load_words(p.page as usize * wpp, &p.words);
        }
        if let Some(buf) = c.sb_buf {
            port.free_buf(buf);
            self.seq = c.seq;
            self.sb_slot = 1 - self.sb_slot;
        }
        self.stats.commits += 1;
        CommitEnd::Done {
            source_released: c.flags & FLAG_SOURCE_RELEASED != 0,
        }
    }
}
