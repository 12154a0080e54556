//! The commit protocol: the sequence DESIGN.md fixes, in one place.
//!
//! 1. snapshot the bitmap pages changed since the last commit (their words as
//!    they are in memory now: every bit set there names data already written
//!    to the destination);
//! 2. **flush the destination** and wait for it;
//! 3. write each changed page into the slot not holding its current version,
//!    then flush the metadata device;
//! 4. write the superblock into the other slot, then flush the metadata device;
//! 5. only then is the commit done: the engine completes the user flushes and
//!    FUA writes that waited for it.
//!
//! A commit with nothing new sends only the destination flush (a user flush
//! still needs it) and writes no metadata. Any failed step fails the commit:
//! nothing it carried counts as durable, and the engine fails the clone.

use super::{MetaPort, MetaReq, Metadata, FLAG_SOURCE_RELEASED, SB_LEN};
use crate::io::{BufId, Data, Dev, DevOp, IoError, IoResult};
use crate::region_map::RegionMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    DestFlush,
    Pages,
    MetaFlush,
    Superblock,
    FinalFlush,
}

/// One page in a commit: where it goes and what it says.
struct PageWrite {
    page: u32,
    slot: u8,
    buf: BufId,
    words: Vec<u64>,
}

pub(super) struct Commit {
    seq: u64,
    pages: Vec<PageWrite>,
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
    /// Starts a commit of everything marked so far (step 1 and 2). False when
    /// the buffers it needs cannot be had now: nothing changed, try again at
    /// the next poll.
    pub fn begin_commit(&mut self, port: &mut impl MetaPort, map: &RegionMap) -> bool {
        debug_assert!(self.commit.is_none());
        let layout = self.layout;
        let seq = self.seq + 1;
        let wpp = layout.words_per_page();
        let nwords = self.committed.len();
        let mut pages = Vec::with_capacity(self.dirty_list.len());
        for &page in &self.dirty_list {
            let Some(buf) = port.alloc_buf(layout.page_size as usize) else {
                free_pages(port, pages);
                return false;
            };
            let lo = page as usize * wpp;
            let words: Vec<u64> = (lo..(lo + wpp).min(nwords)).map(|i| map.word(i)).collect();
            super::encode_page(port.buf_mut(buf), page, seq, self.nonce, &words);
            pages.push(PageWrite {
                page,
                slot: 1 - self.page_slot[page as usize],
                buf,
                words,
            });
        }
        let write_sb = !pages.is_empty() || self.sb_dirty;
        let sb_buf = if write_sb {
            let Some(buf) = port.alloc_buf(layout.sb_area as usize) else {
                free_pages(port, pages);
                return false;
            };
            Some(buf)
        } else {
            None
        };
        for page in std::mem::take(&mut self.dirty_list) {
            self.dirty[page as usize] = false;
        }
        self.sb_dirty = false;
        self.commit = Some(Commit {
            seq,
            pages,
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
        port.send(Dev::Dest, DevOp::Flush, MetaReq::Commit);
        true
    }

    /// A request of the commit in flight completed; returns how the commit
    /// ended once it has.
    pub fn commit_io_done(
        &mut self,
        port: &mut impl MetaPort,
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
        c.outstanding -= 1;
        if c.outstanding > 0 {
            return None;
        }
        if let Some((dev, error)) = c.error {
            let c = self.commit.take().unwrap();
            free_pages(port, c.pages);
            if let Some(buf) = c.sb_buf {
                port.free_buf(buf);
            }
            return Some(CommitEnd::Failed { dev, error });
        }
        let layout = self.layout;
        match c.step {
            Step::DestFlush if !c.write_sb => return Some(self.commit_done(port)),
            Step::DestFlush if !c.pages.is_empty() => {
                c.step = Step::Pages;
                c.outstanding = c.pages.len();
                let writes: Vec<_> = c
                    .pages
                    .iter()
                    .map(|p| (layout.page_offset(p.page, p.slot), p.buf))
                    .collect();
                for (offset, buf) in writes {
                    self.meta_write(port, offset, layout.page_size as u64, buf);
                }
            }
            Step::DestFlush | Step::MetaFlush => self.write_superblock(port),
            Step::Pages => {
                c.step = Step::MetaFlush;
                c.outstanding = 1;
                port.send(Dev::Meta, DevOp::Flush, MetaReq::Commit);
            }
            Step::Superblock => {
                c.step = Step::FinalFlush;
                c.outstanding = 1;
                port.send(Dev::Meta, DevOp::Flush, MetaReq::Commit);
            }
            Step::FinalFlush => return Some(self.commit_done(port)),
        }
        None
    }

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
        sb.encode(port.buf_mut(buf));
        let offset = self.layout.sb_offset(1 - self.sb_slot);
        let bs = self.meta_bs as u64;
        let len = ((SB_LEN as u64).div_ceil(bs) * bs).min(self.layout.sb_area);
        self.meta_write(port, offset, len, buf);
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

    fn meta_write(&mut self, port: &mut impl MetaPort, offset: u64, len: u64, buf: BufId) {
        let bs = self.meta_bs as u64;
        self.stats.meta_bytes_written += len;
        port.send(
            Dev::Meta,
            DevOp::Write {
                offset_blocks: offset / bs,
                num_blocks: len / bs,
                data: Data::Buf { buf, offset: 0 },
                fua: false,
            },
            MetaReq::Commit,
        );
    }

    /// Step 5: what the commit carried is durable; the committed view moves on.
    fn commit_done(&mut self, port: &mut impl MetaPort) -> CommitEnd {
        let c = self.commit.take().unwrap();
        let wpp = self.layout.words_per_page();
        for p in c.pages {
            self.page_slot[p.page as usize] = p.slot;
            self.load_words(p.page as usize * wpp, &p.words);
            port.free_buf(p.buf);
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

fn free_pages(port: &mut impl MetaPort, pages: Vec<PageWrite>) {
    for p in pages {
        port.free_buf(p.buf);
    }
}
