//! The clone's metadata, as `dm-clone-metadata.c` is to dm-clone: the on-disk
//! format ([`format`]), the dirty bitmap pages, the commit protocol
//! ([`commit`]) and opening: format or load ([`open`]).
//!
//! What the engine sees is small:
//! - [`open::Opener`]: reads the superblocks, formats or loads, and hands over
//!   the in-memory bitmap and a [`Metadata`];
//! - [`Metadata::mark_hydrated`]: a region's bit was set in memory (its data is
//!   on the destination);
//! - [`Metadata::begin_commit`] / [`Metadata::commit_io_done`]: make what was
//!   marked durable, destination first;
//! - the committed view: [`Metadata::is_committed`], [`Metadata::committed_regions`].
//!
//! The metadata does I/O through a [`MetaPort`] that the engine lends it; it
//! knows nothing of user I/O or hydration.

pub mod commit;
pub mod format;
pub mod open;

pub use format::*;

use crate::io::{BufId, Dev, DevOp};
use commit::Commit;

/// The I/O the metadata may do, lent by the engine for one call.
pub(crate) trait MetaPort {
    /// Sends a request; its completion comes back through the engine to
    /// [`Metadata::commit_io_done`] or [`open::Opener::io_done`] with `req`.
    fn send(&mut self, dev: Dev, op: DevOp, req: MetaReq);
    /// A buffer for metadata I/O (commits draw on a reserve: they never wait
    /// behind copies).
    fn alloc_buf(&mut self, len: usize) -> Option<BufId>;
    fn buf_mut(&mut self, buf: BufId) -> &mut [u8];
    fn free_buf(&mut self, buf: BufId);
}

/// What a metadata request was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MetaReq {
    /// A step of the commit in flight; `buf` is the page buffer of a page
    /// write (reused for the next page).
    Commit { buf: Option<BufId> },
    /// A request of the opener; `buf` is None for a flush.
    Open {
        buf: Option<BufId>,
        offset: u64,
        len: u64,
    },
}

/// Counters of the metadata's own work.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaStats {
    pub commits: u64,
    pub dest_flushes: u64,
    pub meta_bytes_written: u64,
}

/// The loaded metadata of an open clone: where things are on disk, what is
/// durable there, and what changed since.
pub(crate) struct Metadata {
    layout: Layout,
    meta_bs: u32,
    nonce: u64,
    uuid: [u8; 16],
    /// Sequence of the last durable superblock.
    seq: u64,
    sb_slot: u8,
    /// Per page, the slot holding its current version.
    page_slot: Vec<u8>,
    flags: u32,
    sb_template: Superblock,
    /// The bitmap as it is durable in the metadata (word per 64 regions).
    committed: Vec<u64>,
    /// Regions whose bit is set in `committed`.
    committed_count: u64,
    dirty: Vec<bool>,
    dirty_list: Vec<u32>,
    /// The superblock must be written even if no page changed.
    sb_dirty: bool,
    commit: Option<Commit>,
    stats: MetaStats,
}

impl Metadata {
    /// A page of bitmap words was read at open: what is durable now.
    fn load_words(&mut self, first_word: usize, words: &[u64]) {
        for (i, &w) in words.iter().enumerate() {
            let old = std::mem::replace(&mut self.committed[first_word + i], w);
            self.committed_count += w.count_ones() as u64;
            self.committed_count -= old.count_ones() as u64;
        }
    }

    /// Region `region`'s bit was set in memory: its page must be written at
    /// the next commit.
    pub fn mark_hydrated(&mut self, region: u64) {
        let page = (region / regions_per_page(self.layout.page_size)) as u32;
        if !self.dirty[page as usize] {
            self.dirty[page as usize] = true;
            self.dirty_list.push(page);
        }
    }

    /// Asks for the superblock to say the source was released at the next
    /// commit.
    pub fn mark_source_released(&mut self) {
        self.flags |= FLAG_SOURCE_RELEASED;
        self.sb_dirty = true;
    }

    /// The clone's name and settings as the superblock should store them;
    /// written at the next commit when they changed.
    pub fn set_identity(&mut self, name: &str, settings: &crate::engine::Settings) {
        let t = &mut self.sb_template;
        if t.name != name || t.settings.as_ref() != Some(settings) {
            t.name = name.to_string();
            t.settings = Some(settings.clone());
            self.sb_dirty = true;
        }
    }

    pub fn source_released(&self) -> bool {
        self.flags & FLAG_SOURCE_RELEASED != 0
    }

    /// Something was marked that no commit has taken yet.
    pub fn has_changes(&self) -> bool {
        self.sb_dirty || !self.dirty_list.is_empty()
    }

    /// Bitmap pages changed since the last commit started.
    pub fn has_dirty_pages(&self) -> bool {
        !self.dirty_list.is_empty()
    }

    pub fn sb_dirty(&self) -> bool {
        self.sb_dirty
    }

    /// A metadata device of `num_blocks` still holds this metadata.
    pub fn fits(&self, num_blocks: u64) -> bool {
        num_blocks * self.meta_bs as u64 >= self.layout.total_bytes()
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn commit_in_flight(&self) -> bool {
        self.commit.is_some()
    }

    pub fn is_committed(&self, region: u64) -> bool {
        self.committed[(region / 64) as usize] & (1 << (region % 64)) != 0
    }

    /// Regions whose hydration is durable in the metadata.
    pub fn committed_regions(&self) -> u64 {
        self.committed_count
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn uuid(&self) -> [u8; 16] {
        self.uuid
    }

    /// Bytes of memory the loaded metadata holds.
    pub fn memory_bytes(&self) -> u64 {
        (self.committed.len() * 8
            + self.page_slot.len()
            + self.dirty.len()
            + self.dirty_list.capacity() * 4) as u64
    }

    pub fn stats(&self) -> &MetaStats {
        &self.stats
    }

    /// Placeholder while the clone opens: nothing loaded, nothing to commit.
    pub fn empty(meta_bs: u32) -> Metadata {
        Metadata::new(
            Layout::new(meta_bs.max(1), DEFAULT_PAGE_SIZE, 0),
            meta_bs.max(1),
            Superblock::empty(),
            0,
        )
    }

    fn new(layout: Layout, meta_bs: u32, sb: Superblock, words: usize) -> Metadata {
        Metadata {
            layout,
            meta_bs,
            nonce: sb.nonce,
            uuid: sb.uuid,
            seq: sb.seq,
            sb_slot: 0,
            page_slot: vec![1; layout.page_count as usize],
            flags: sb.flags,
            sb_template: sb,
            committed: vec![0; words],
            committed_count: 0,
            dirty: vec![false; layout.page_count as usize],
            dirty_list: Vec::new(),
            sb_dirty: false,
            commit: None,
            stats: MetaStats::default(),
        }
    }
}
