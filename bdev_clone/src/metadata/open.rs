//! Opening a clone's metadata: read both superblock slots, then either format
//! (blank metadata, or `format` asked for) or load the bitmap pages.
//!
//! Format: zero superblock slot 1 and flush (no older superblock may win
//! later), write slot 0 and flush. Load: take the valid superblock with the
//! highest sequence, read every page pair and keep per page the valid slot
//! with the highest sequence, check that the pages hold at least the regions
//! the superblock counted, and flush what was read (it may still sit in the
//! device's cache after a format whose flush failed).

use super::commit::reserve_for;
use super::{
    decode_slots, newest_valid, valid_page_size, Layout, MetaPort, MetaReq, Metadata, SbError,
    Superblock, DEFAULT_PAGE_SIZE,
};
use crate::buffers::{class_of, DEFAULT_CAP};
use crate::engine::Settings;
use crate::geometry::{DeviceInfo, Geometry, GeometryError, DEFAULT_REGION_SIZE};
use crate::io::{BufId, Data, Dev, DevOp, IoError, IoResult};
use crate::region_map::RegionMap;
use std::fmt;

/// What `Engine::open` needs to know.
#[derive(Clone, Debug)]
pub struct OpenParams {
    /// None when the source is gone; accepted only if the metadata says it was
    /// released.
    pub source: Option<DeviceInfo>,
    pub dest: DeviceInfo,
    pub meta: DeviceInfo,
    /// None: the stored size when resuming, the default when formatting.
    pub region_size: Option<u32>,
    pub page_size: u32,
    /// Replace metadata that belongs to other devices or is corrupt.
    pub format: bool,
    /// The clone's UUID when formatting (the stored one is kept when
    /// resuming).
    pub uuid: [u8; 16],
    /// `uuid` was asked for: refuse metadata of a clone with another UUID.
    pub require_uuid: bool,
    /// The clone's name, stored with its settings so that it can be
    /// assembled from the metadata alone.
    pub name: String,
    /// Random per format; keeps pages of earlier formats out.
    pub nonce: u64,
    /// Host identities of the devices (bdev UUIDs); all-zero = unknown.
    pub source_id: [u8; 16],
    pub dest_id: [u8; 16],
    pub source_name: String,
    pub dest_name: String,
    pub settings: Settings,
    /// Cap of the clone's buffers (see [`crate::buffers`]).
    pub buffer_cap: usize,
}

impl OpenParams {
    pub fn new(source: DeviceInfo, dest: DeviceInfo, meta: DeviceInfo, nonce: u64) -> Self {
        OpenParams {
            source: Some(source),
            dest,
            meta,
            region_size: None,
            page_size: DEFAULT_PAGE_SIZE,
            format: false,
            uuid: [0; 16],
            require_uuid: false,
            name: String::new(),
            nonce,
            source_id: [0; 16],
            dest_id: [0; 16],
            source_name: String::new(),
            dest_name: String::new(),
            settings: Settings::default(),
            buffer_cap: DEFAULT_CAP,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenInfo {
    pub geometry: Geometry,
    pub formatted: bool,
    pub uuid: [u8; 16],
    pub regions_hydrated: u64,
    pub source_released: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenError {
    Geometry(GeometryError),
    MetaTooSmall {
        need: u64,
        have: u64,
    },
    BadPageSize(u32),
    /// Valid metadata of other devices or another geometry.
    Mismatch(String),
    Corrupt(String),
    Io(Dev, IoError),
    SourceMissing,
    /// The host's buffer pool could not lend the buffers opening needs.
    NoMemory,
    /// Opening was abandoned after an internal error.
    Internal(String),
    /// One region's copy needs a buffer larger than the buffer cap leaves
    /// to copies.
    RegionTooLarge {
        region_size: u32,
        copy_budget: usize,
    },
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Geometry(e) => e.fmt(f),
            OpenError::MetaTooSmall { need, have } => write!(
                f,
                "metadata device too small: needs {need} bytes, has {have}"
            ),
            OpenError::BadPageSize(p) => write!(
                f,
                "metadata page size {p} must be a power of two from 64 and a multiple of the \
                 metadata block size"
            ),
            OpenError::Mismatch(m) => write!(f, "{m}; pass format to overwrite it"),
            OpenError::Corrupt(m) => write!(
                f,
                "metadata corrupt: {m}; pass format to reformat (this forgets hydration progress \
                 and any data written to the clone)"
            ),
            OpenError::Io(dev, e) => write!(f, "{e} on the {dev} device while opening"),
            OpenError::SourceMissing => {
                write!(
                    f,
                    "no source given and the metadata does not say it was released"
                )
            }
            OpenError::NoMemory => write!(f, "out of buffers while opening"),
            OpenError::Internal(m) => f.write_str(m),
            OpenError::RegionTooLarge {
                region_size,
                copy_budget,
            } => write!(
                f,
                "region size {} KiB needs copy buffers of {} KiB, more than the {} KiB the \
                 clone's buffer cap leaves to copies; use a smaller region_size_kb",
                region_size / 1024,
                class_of(*region_size as usize) / 1024,
                copy_budget / 1024
            ),
        }
    }
}

impl std::error::Error for OpenError {}

enum Step {
    ReadSuperblocks,
    ZeroSlot1,
    FlushZero,
    WriteSlot0,
    FlushSlot0,
    /// Chunks of page pairs are read through a window: at most
    /// [`LOAD_WINDOW`] in flight, so that any clone size opens within the
    /// buffer cap.
    ReadPages {
        outstanding: usize,
        next: u64,
    },
    /// What was read may still sit in the device's volatile cache (a format
    /// whose flush failed, say): make it durable before building on it.
    FlushLoaded,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

/// Bitmap chunks read at once while loading.
pub const LOAD_WINDOW: u64 = 4;
/// Largest bitmap chunk read at once.
pub const LOAD_CHUNK: u64 = 1 << 20;

/// What opening came to.
pub(crate) enum OpenProgress {
    Pending,
    Done(Box<Opened>),
    Failed(OpenError),
}

/// An opened clone's metadata, and the in-memory bitmap it loaded.
pub(crate) struct Opened {
    pub geometry: Geometry,
    pub map: RegionMap,
    pub meta: Metadata,
    pub formatted: bool,
}

/// The open state machine; the engine feeds it the completions of the
/// requests it sends.
pub(crate) struct Opener {
    params: OpenParams,
    step: Step,
    /// The superblock being written (format).
    sb: Option<Superblock>,
    formatted: bool,
    error: Option<OpenError>,
    /// Built by format or load.
    loaded: Option<(Geometry, RegionMap, Metadata)>,
}

impl Opener {
    /// Checks what can be checked at once and reads both superblock slots.
    pub fn start(params: OpenParams, port: &mut impl MetaPort) -> (Opener, OpenProgress) {
        let meta_bs = params.meta.block_size;
        let page_size = params.page_size;
        let meta_bytes = params.meta.bytes();
        let mut o = Opener {
            params,
            step: Step::ReadSuperblocks,
            sb: None,
            formatted: false,
            error: None,
            loaded: None,
        };
        if !valid_page_size(page_size) || meta_bs == 0 || !page_size.is_multiple_of(meta_bs) {
            return (o, OpenProgress::Failed(OpenError::BadPageSize(page_size)));
        }
        let need = 2 * Layout::new(meta_bs, page_size, 0).sb_area;
        if meta_bytes < need {
            let e = OpenError::MetaTooSmall {
                need,
                have: meta_bytes,
            };
            return (o, OpenProgress::Failed(e));
        }
        let progress = o.io(port, Kind::Read, 0, need);
        (o, progress)
    }

    fn meta(&mut self) -> &mut Metadata {
        &mut self.loaded.as_mut().expect("formatted or loaded").2
    }

    fn io(&mut self, port: &mut impl MetaPort, kind: Kind, offset: u64, len: u64) -> OpenProgress {
        let bs = self.params.meta.block_size as u64;
        let Some(buf) = port.alloc_buf(len as usize) else {
            return OpenProgress::Failed(OpenError::NoMemory);
        };
        let data = Data::Buf { buf, offset: 0 };
        let op = match kind {
            Kind::Read => DevOp::Read {
                offset_blocks: offset / bs,
                num_blocks: len / bs,
                data,
            },
            Kind::Write => {
                let b = port.buf_mut(buf);
                b.fill(0);
                if let (Step::WriteSlot0, Some(sb)) = (&self.step, &self.sb) {
                    sb.encode(&mut b[..]);
                }
                DevOp::Write {
                    offset_blocks: offset / bs,
                    num_blocks: len / bs,
                    data,
                    fua: false,
                }
            }
        };
        let req = MetaReq::Open {
            buf: Some(buf),
            offset,
            len,
        };
        port.send(Dev::Meta, op, req);
        OpenProgress::Pending
    }

    fn flush(&mut self, port: &mut impl MetaPort) -> OpenProgress {
        let req = MetaReq::Open {
            buf: None,
            offset: 0,
            len: 0,
        };
        port.send(Dev::Meta, DevOp::Flush, req);
        OpenProgress::Pending
    }

    /// A request of the opener completed.
    pub fn io_done(
        &mut self,
        port: &mut impl MetaPort,
        buf: Option<BufId>,
        offset: u64,
        len: u64,
        result: IoResult,
    ) -> OpenProgress {
        if let Err(e) = result {
            if let Some(buf) = buf {
                port.free_buf(buf);
            }
            self.error.get_or_insert(OpenError::Io(Dev::Meta, e));
            if let Step::ReadPages { outstanding, .. } = &mut self.step {
                *outstanding -= 1;
                if *outstanding > 0 {
                    return OpenProgress::Pending;
                }
            }
            return OpenProgress::Failed(self.error.clone().unwrap());
        }
        // Only flush steps come without a buffer.
        let data_buf = || buf.expect("a read or write step carries its buffer");
        match std::mem::replace(&mut self.step, Step::ReadSuperblocks) {
            Step::ReadSuperblocks => {
                // Only what was read: a pool may hand out larger buffers.
                let data = port.buf_mut(data_buf())[..len as usize].to_vec();
                port.free_buf(data_buf());
                self.superblocks_read(port, &data)
            }
            Step::ZeroSlot1 => {
                port.free_buf(data_buf());
                self.step = Step::FlushZero;
                self.flush(port)
            }
            Step::FlushZero => {
                let sb_area = self.meta().layout.sb_area;
                self.step = Step::WriteSlot0;
                self.io(port, Kind::Write, 0, sb_area)
            }
            Step::WriteSlot0 => {
                port.free_buf(data_buf());
                self.step = Step::FlushSlot0;
                self.flush(port)
            }
            Step::FlushSlot0 => {
                self.meta().sb_slot = 0;
                self.done()
            }
            Step::FlushLoaded => self.done(),
            Step::ReadPages { outstanding, next } => {
                self.pages_read(port, data_buf(), offset, len);
                port.free_buf(data_buf());
                self.step = Step::ReadPages {
                    outstanding: outstanding - 1,
                    next,
                };
                self.read_chunks(port);
                match &self.step {
                    Step::ReadPages { outstanding, .. } if *outstanding > 0 => {
                        OpenProgress::Pending
                    }
                    _ => match self.error.clone() {
                        Some(e) => OpenProgress::Failed(e),
                        None => self.pages_loaded(port),
                    },
                }
            }
        }
    }

    fn done(&mut self) -> OpenProgress {
        let (geometry, map, meta) = self.loaded.take().expect("formatted or loaded");
        OpenProgress::Done(Box::new(Opened {
            geometry,
            map,
            meta,
            formatted: self.formatted,
        }))
    }

    fn superblocks_read(&mut self, port: &mut impl MetaPort, data: &[u8]) -> OpenProgress {
        let p = &self.params;
        let sb_area = Layout::new(p.meta.block_size, p.page_size, 0).sb_area as usize;
        let slots = decode_slots(data, sb_area);
        match newest_valid(&slots) {
            Some((slot, sb)) => match check_compatible(p, &sb) {
                Ok(()) => self.load(port, slot, sb),
                Err(_) if p.format => self.format(port),
                Err(e) => OpenProgress::Failed(e),
            },
            None => {
                let blank = slots.iter().all(|s| *s == Err(SbError::Blank));
                if blank || p.format {
                    return self.format(port);
                }
                let why = |s: &Result<Superblock, SbError>| match s {
                    Err(e) => e.to_string(),
                    Ok(_) => "valid".into(),
                };
                let foreign = slots.contains(&Err(SbError::Foreign));
                OpenProgress::Failed(if foreign && slots.iter().all(|s| s.is_err()) {
                    OpenError::Mismatch(
                        "the metadata device holds data that is not bdev_clone metadata".into(),
                    )
                } else {
                    OpenError::Corrupt(format!(
                        "superblock slot 0: {}, slot 1: {}",
                        why(&slots[0]),
                        why(&slots[1])
                    ))
                })
            }
        }
    }

    /// The metadata's in-memory state for `sb`, nothing loaded yet.
    fn setup(&mut self, geometry: Geometry, page_size: u32, sb: Superblock) {
        let meta_bs = self.params.meta.block_size;
        let layout = Layout::new(meta_bs, page_size, geometry.region_count);
        let words = geometry.region_count.div_ceil(64) as usize;
        let meta = Metadata::new(layout, meta_bs.max(1), sb, words);
        self.loaded = Some((geometry, RegionMap::new(geometry.region_count), meta));
    }

    fn format(&mut self, port: &mut impl MetaPort) -> OpenProgress {
        let p = &self.params;
        let Some(source) = p.source else {
            return OpenProgress::Failed(OpenError::SourceMissing);
        };
        let region_size = p.region_size.unwrap_or(DEFAULT_REGION_SIZE);
        let geometry = match Geometry::new(source, p.dest, region_size) {
            Ok(g) => g,
            Err(e) => return OpenProgress::Failed(OpenError::Geometry(e)),
        };
        let layout = Layout::new(p.meta.block_size, p.page_size, geometry.region_count);
        if layout.total_bytes() > p.meta.bytes() {
            return OpenProgress::Failed(OpenError::MetaTooSmall {
                need: layout.total_bytes(),
                have: p.meta.bytes(),
            });
        }
        if let Err(e) = check_buffers(p, region_size, &layout) {
            return OpenProgress::Failed(e);
        }
        let sb = Superblock {
            flags: 0,
            uuid: p.uuid,
            nonce: p.nonce,
            seq: 1,
            block_size: geometry.block_size,
            region_size,
            region_count: geometry.region_count,
            source_blocks: geometry.num_blocks,
            dest_blocks: geometry.dest_blocks,
            page_size: p.page_size,
            page_count: layout.page_count,
            regions_hydrated: 0,
            source_id: p.source_id,
            dest_id: p.dest_id,
            source_name: p.source_name.clone(),
            dest_name: p.dest_name.clone(),
            name: p.name.clone(),
            settings: Some(p.settings.clone()),
        };
        let page_size = p.page_size;
        self.setup(geometry, page_size, sb.clone());
        self.sb = Some(sb);
        self.formatted = true;
        // Slot 1 is zeroed first so that no older superblock there (of this
        // or another clone, maybe with a higher sequence) can win later.
        self.step = Step::ZeroSlot1;
        let sb_area = layout.sb_area;
        self.io(port, Kind::Write, sb_area, sb_area)
    }

    fn load(&mut self, port: &mut impl MetaPort, slot: u8, sb: Superblock) -> OpenProgress {
        let geometry = sb.geometry();
        let page_size = sb.page_size;
        self.setup(geometry, page_size, sb);
        let meta = self.meta();
        meta.sb_slot = slot;
        let layout = meta.layout;
        let total = 2 * layout.page_count as u64 * layout.page_size as u64;
        if total == 0 {
            self.step = Step::FlushLoaded;
            return self.flush(port);
        }
        self.step = Step::ReadPages {
            outstanding: 0,
            next: 0,
        };
        self.read_chunks(port);
        match (&self.step, &self.error) {
            (Step::ReadPages { outstanding: 0, .. }, Some(e)) => OpenProgress::Failed(e.clone()),
            _ => OpenProgress::Pending,
        }
    }

    /// Bytes of one bitmap chunk: whole page pairs, small enough that the
    /// window fits the buffer cap.
    fn chunk_bytes(&self, layout: &Layout) -> u64 {
        let pair = 2 * layout.page_size as u64;
        let fit = (self.params.buffer_cap as u64 / LOAD_WINDOW).min(LOAD_CHUNK);
        (fit / pair).max(1) * pair
    }

    /// Keeps the window of bitmap reads full (none after an error, which it
    /// records: the open fails once nothing is in flight).
    fn read_chunks(&mut self, port: &mut impl MetaPort) {
        let layout = *self.meta().layout();
        let total = 2 * layout.page_count as u64 * layout.page_size as u64;
        let chunk = self.chunk_bytes(&layout);
        let base = layout.page_offset(0, 0);
        while let Step::ReadPages { outstanding, next } = self.step {
            if self.error.is_some() || outstanding as u64 >= LOAD_WINDOW || next * chunk >= total {
                break;
            }
            self.step = Step::ReadPages {
                outstanding: outstanding + 1,
                next: next + 1,
            };
            let len = chunk.min(total - next * chunk);
            if let OpenProgress::Failed(e) = self.io(port, Kind::Read, base + next * chunk, len) {
                self.step = Step::ReadPages { outstanding, next };
                self.error = Some(e);
            }
        }
    }

    fn pages_read(&mut self, port: &mut impl MetaPort, buf: BufId, offset: u64, len: u64) {
        let data = port.buf_mut(buf)[..len as usize].to_vec();
        let (geometry, map, meta) = self.loaded.as_mut().expect("loading");
        let layout = meta.layout;
        let ps = layout.page_size as usize;
        let wpp = layout.words_per_page();
        let nwords = meta.committed.len();
        let nonce = meta.nonce;
        let first_page = ((offset - layout.page_offset(0, 0)) / (2 * ps as u64)) as u32;
        let pages = (data.len() / (2 * ps)) as u32;
        let mut words = vec![0u64; wpp];
        let mut best_words = vec![0u64; wpp];
        for i in 0..pages {
            let p = first_page + i;
            if p >= layout.page_count {
                break;
            }
            let lo = p as usize * wpp;
            let n = wpp.min(nwords - lo);
            let mut best: Option<(u64, u8)> = None;
            for slot in 0..2u8 {
                let at = (2 * i as usize + slot as usize) * ps;
                if let Some(seq) = super::decode_page(&data[at..at + ps], p, nonce, &mut words[..n])
                {
                    if best.is_none_or(|(s, _)| seq > s) {
                        best = Some((seq, slot));
                        best_words[..n].copy_from_slice(&words[..n]);
                    }
                }
            }
            if let Some((seq, slot)) = best {
                meta.page_slot[p as usize] = slot;
                meta.seq = meta.seq.max(seq);
                for (j, w) in best_words[..n].iter_mut().enumerate() {
                    *w &= valid_mask(geometry.region_count, lo + j);
                    map.set_word(lo + j, *w);
                }
                meta.load_words(lo, &best_words[..n]);
            }
        }
    }

    /// Every region the superblock counted as hydrated must be in the pages
    /// read (bits only go from 0 to 1, and pages are written and flushed
    /// before their superblock). Fewer means a bitmap page was damaged or
    /// lost: loading it would read the source where the user wrote.
    fn pages_loaded(&mut self, port: &mut impl MetaPort) -> OpenProgress {
        let meta = self.meta();
        let loaded = meta.committed_regions();
        let counted = meta.sb_template.regions_hydrated;
        if loaded < counted {
            if self.params.format {
                return self.format(port);
            }
            return OpenProgress::Failed(OpenError::Corrupt(format!(
                "the bitmap pages name {loaded} hydrated regions, the superblock {counted}: \
                 a bitmap page is damaged or lost"
            )));
        }
        self.step = Step::FlushLoaded;
        self.flush(port)
    }
}

/// Bits of word `i` that name real regions.
fn valid_mask(region_count: u64, i: usize) -> u64 {
    let first = i as u64 * 64;
    if first + 64 <= region_count {
        u64::MAX
    } else {
        (1u64 << (region_count - first)) - 1
    }
}

fn check_compatible(p: &OpenParams, sb: &Superblock) -> Result<(), OpenError> {
    let mismatch = |what: String| Err(OpenError::Mismatch(what));
    if p.dest.block_size != sb.block_size {
        return mismatch(format!(
            "metadata is for block size {}, the destination has {}",
            sb.block_size, p.dest.block_size
        ));
    }
    match p.source {
        Some(src) if src.block_size != sb.block_size || src.num_blocks != sb.source_blocks => {
            return mismatch(format!(
                "metadata is for a source of {} blocks of {} bytes, this source has {} of {}",
                sb.source_blocks, sb.block_size, src.num_blocks, src.block_size
            ));
        }
        Some(_) => {}
        None if !sb.source_released() => return Err(OpenError::SourceMissing),
        None => {}
    }
    if p.dest.num_blocks < sb.source_blocks {
        return Err(OpenError::Geometry(GeometryError::DestTooSmall {
            source_bytes: sb.source_blocks * sb.block_size as u64,
            dest_bytes: p.dest.bytes(),
        }));
    }
    // A device is "another" only if neither its identity (UUID) nor its
    // name matches: some hosts regenerate UUIDs at every start (SPDK aio
    // and malloc bdevs without a configured UUID), some rename devices.
    let known = |id: &[u8; 16]| id.iter().any(|&b| b != 0);
    let other = |id: &[u8; 16], stored: &[u8; 16], name: &str, stored_name: &str| {
        known(id) && known(stored) && id != stored && name != stored_name
    };
    if other(&p.source_id, &sb.source_id, &p.source_name, &sb.source_name) {
        return mismatch(format!(
            "metadata belongs to source '{}', not '{}'",
            sb.source_name, p.source_name
        ));
    }
    if other(&p.dest_id, &sb.dest_id, &p.dest_name, &sb.dest_name) {
        return mismatch(format!(
            "metadata belongs to destination '{}', not '{}'",
            sb.dest_name, p.dest_name
        ));
    }
    if p.require_uuid && p.uuid != sb.uuid {
        return mismatch(format!(
            "metadata belongs to the clone with UUID {}, not {} (omit uuid to keep the stored one)",
            uuid_text(&sb.uuid),
            uuid_text(&p.uuid)
        ));
    }
    if let Some(rs) = p.region_size {
        if rs != sb.region_size {
            return mismatch(format!(
                "metadata has region size {} KiB, {} KiB was asked for",
                sb.region_size / 1024,
                rs / 1024
            ));
        }
    }
    if !sb.page_size.is_multiple_of(p.meta.block_size) {
        return mismatch(format!(
            "metadata page size {} does not fit the metadata block size {}",
            sb.page_size, p.meta.block_size
        ));
    }
    let layout = Layout::new(p.meta.block_size, sb.page_size, sb.region_count);
    if layout.total_bytes() > p.meta.bytes() {
        return Err(OpenError::MetaTooSmall {
            need: layout.total_bytes(),
            have: p.meta.bytes(),
        });
    }
    check_buffers(p, sb.region_size, &layout)
}

/// A clone whose one-region copy cannot get a buffer would hang its first
/// partial write: refuse it up front.
fn check_buffers(p: &OpenParams, region_size: u32, layout: &Layout) -> Result<(), OpenError> {
    let copy_budget = p.buffer_cap.saturating_sub(reserve_for(layout));
    if class_of(region_size as usize) > copy_budget {
        return Err(OpenError::RegionTooLarge {
            region_size,
            copy_budget,
        });
    }
    Ok(())
}

/// A UUID in its usual text form.
pub fn uuid_text(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}
