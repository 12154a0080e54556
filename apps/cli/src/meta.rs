//! Reading the metadata without the engine: both superblock slots, every page
//! slot, and the newest valid bitmap (what the engine would load).

use crate::dev::{FileDev, OpenHow};
use anyhow::{bail, Result};
use bdev_clone::metadata::{self, Layout, SbError, Superblock};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotState {
    Valid(u64),
    Blank,
    /// A consistent page of an earlier format (another nonce): ignored.
    Stale,
    Bad(String),
}

pub struct MetaReport {
    pub path: String,
    pub sb_slots: [Result<Superblock, SbError>; 2],
    /// The superblock the engine would load, and its slot.
    pub sb: Superblock,
    pub sb_slot: u8,
    pub page_slots: Vec<[SlotState; 2]>,
    /// The newest valid bitmap, one bit per region.
    pub bitmap: Vec<u64>,
    pub hydrated: u64,
    /// Damage found (the metadata is not clean).
    pub problems: Vec<String>,
    /// Another process holds the metadata (a hydration is running).
    pub running: bool,
}

impl MetaReport {
    pub fn is_hydrated(&self, region: u64) -> bool {
        self.bitmap[(region / 64) as usize] & (1 << (region % 64)) != 0
    }

    pub fn state(&self) -> &'static str {
        if self.sb.source_released() {
            "source_released"
        } else if self.hydrated == self.sb.region_count {
            "hydrated"
        } else {
            "hydrating"
        }
    }
}

fn classify_page(buf: &[u8], index: u32, nonce: u64, words: &mut [u64]) -> SlotState {
    if let Some(seq) = metadata::decode_page(buf, index, nonce, words) {
        return SlotState::Valid(seq);
    }
    if buf.iter().all(|&b| b == 0) {
        return SlotState::Blank;
    }
    if buf.len() >= metadata::PAGE_HEADER {
        let magic = u32::from_le_bytes(buf[0..4].try_into().unwrap());
        let other_nonce = u64::from_le_bytes(buf[16..24].try_into().unwrap());
        if magic == metadata::PAGE_MAGIC && other_nonce != nonce {
            let mut scratch = vec![0u64; words.len()];
            if metadata::decode_page(buf, index, other_nonce, &mut scratch).is_some() {
                return SlotState::Stale;
            }
        }
        if magic != metadata::PAGE_MAGIC {
            return SlotState::Bad("not a bitmap page".into());
        }
        let stored = u32::from_le_bytes(buf[4..8].try_into().unwrap());
        if stored != index {
            return SlotState::Bad(format!("holds page {stored}"));
        }
    }
    SlotState::Bad("checksum mismatch".into())
}

/// Reads and validates the metadata at `path` (read-only).
pub fn read(path: &Path) -> Result<MetaReport> {
    let dev = FileDev::open(
        path,
        "metadata",
        OpenHow {
            write: false,
            direct: false,
            block_size: None,
        },
    )?;
    let running = !dev.lock(false)?;
    let shown = dev.shown.clone();
    let sb_area = Layout::new(dev.block_size, metadata::DEFAULT_PAGE_SIZE, 0).sb_area;
    if dev.size < 2 * sb_area {
        bail!(
            "metadata '{shown}' is {} bytes, too small to hold bdev_clone metadata",
            dev.size
        );
    }
    let mut head = vec![0u8; 2 * sb_area as usize];
    dev.read_at(&mut head, 0)?;
    let sb_slots = [
        Superblock::decode(&head[..sb_area as usize]),
        Superblock::decode(&head[sb_area as usize..]),
    ];
    let best = (0..2u8)
        .filter_map(|i| sb_slots[i as usize].as_ref().ok().map(|sb| (i, sb.clone())))
        .max_by_key(|(_, sb)| sb.seq);
    let Some((sb_slot, sb)) = best else {
        if sb_slots.iter().all(|s| *s == Err(SbError::Blank)) {
            bail!("metadata '{shown}' is blank: no clone was created with it yet");
        }
        let why = |s: &Result<Superblock, SbError>| match s {
            Err(e) => e.to_string(),
            Ok(_) => "valid".into(),
        };
        bail!(
            "metadata '{shown}' has no valid superblock (slot 0: {}, slot 1: {})",
            why(&sb_slots[0]),
            why(&sb_slots[1])
        );
    };
    let mut problems = Vec::new();
    for (i, s) in sb_slots.iter().enumerate() {
        match s {
            Ok(other) if other.nonce != sb.nonce || other.uuid != sb.uuid => problems.push(
                format!("superblock slot {i} belongs to another format of this metadata"),
            ),
            Ok(_) | Err(SbError::Blank) => {}
            Err(e) => problems.push(format!("superblock slot {i}: {e}")),
        }
    }
    let layout = Layout::new(dev.block_size, sb.page_size, sb.region_count);
    if sb.page_size % dev.block_size != 0 {
        bail!(
            "metadata '{shown}': page size {} does not fit its block size {}",
            sb.page_size,
            dev.block_size
        );
    }
    let total = layout.total_bytes();
    let nwords = sb.region_count.div_ceil(64) as usize;
    let mut bitmap = vec![0u64; nwords];
    let mut page_slots = Vec::with_capacity(layout.page_count as usize);
    if dev.size < total {
        problems.push(format!(
            "metadata is {} bytes, the clone's layout needs {total}",
            dev.size
        ));
    } else {
        let ps = layout.page_size as usize;
        let wpp = layout.words_per_page();
        let mut pair = vec![0u8; 2 * ps];
        let mut words = vec![0u64; wpp];
        for p in 0..layout.page_count {
            dev.read_at(&mut pair, layout.page_offset(p, 0))?;
            let lo = p as usize * wpp;
            let n = wpp.min(nwords - lo);
            let mut best: Option<u64> = None;
            let mut slots = [SlotState::Blank, SlotState::Blank];
            for slot in 0..2 {
                let st = classify_page(
                    &pair[slot * ps..(slot + 1) * ps],
                    p,
                    sb.nonce,
                    &mut words[..n],
                );
                if let SlotState::Valid(seq) = st {
                    if best.is_none_or(|s| seq > s) {
                        best = Some(seq);
                        bitmap[lo..lo + n].copy_from_slice(&words[..n]);
                    }
                }
                if let SlotState::Bad(why) = &st {
                    problems.push(format!("bitmap page {p} slot {slot}: {why}"));
                }
                slots[slot] = st;
            }
            page_slots.push(slots);
        }
        // Bits past the last region mean nothing (the engine masks them).
        let tail = sb.region_count % 64;
        if tail != 0 {
            if let Some(last) = bitmap.last_mut() {
                *last &= (1u64 << tail) - 1;
            }
        }
    }
    let hydrated = bitmap.iter().map(|w| w.count_ones() as u64).sum();
    Ok(MetaReport {
        path: shown,
        sb_slots,
        sb,
        sb_slot,
        page_slots,
        bitmap,
        hydrated,
        problems,
        running,
    })
}
