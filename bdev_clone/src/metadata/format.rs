//! On-disk metadata format: superblock slots, bitmap page slots, CRCs.
//!
//! ```text
//! byte 0              superblock slot 0   (SB_AREA bytes)
//! byte SB_AREA        superblock slot 1
//! byte 2*SB_AREA      page 0 slot 0, page 0 slot 1, page 1 slot 0, ...
//! ```
//!
//! Every structure carries a CRC32C. The superblock alternates between its two
//! slots, so a torn superblock write leaves the previous one valid. Each bitmap
//! page also has two slots: a commit writes the new version of a changed page
//! into the slot that does not hold its current version, so a torn page write
//! leaves the previous version valid too. Loading takes, per page, the valid
//! slot with the highest sequence number. That is safe even for a page written
//! by a commit whose superblock never landed: hydrated bits only ever go from 0
//! to 1, and the destination was flushed before any page was written.
//!
//! Pages carry the format's random `nonce`, so pages left by an earlier format
//! of the same device are never taken for this one's.

use crate::engine::{HydrationOrder, Settings};
use crate::geometry::Geometry;
use std::fmt;

pub const SB_MAGIC: [u8; 8] = *b"BDVCLONE";
/// Version 2 adds the clone's name and settings (so that a clone can be
/// assembled from its metadata alone); version 1 is still read.
pub const SB_VERSION: u32 = 2;
/// Bytes of a superblock slot (rounded up to the metadata block size).
pub const SB_AREA: u64 = 4096;
/// Encoded superblock length, CRC included.
pub const SB_LEN: usize = SB_LEN_V1 - 4 + CLONE_NAME_LEN + SETTINGS_LEN + 4;
/// Length of a version-1 superblock.
pub const SB_LEN_V1: usize = 260;
/// Bytes of the clone's name: the longest clone name accepted, so that a
/// superblock fits one 512-byte sector (a commit writes one sector).
pub const CLONE_NAME_LEN: usize = 208;
const SETTINGS_LEN: usize = 40;
const _: () = assert!(SB_LEN <= 512);
const SETTING_HYDRATION_ENABLED: u32 = 1;
const SETTING_DISCARD_PASSDOWN: u32 = 2;
/// The settings' `hydration_order`, in the word version 2 first wrote as
/// zero: 0 = not stored (a superblock from before the setting existed: the
/// default), 1 = sequential, 2 = hot_first.
const ORDER_SEQUENTIAL: u32 = 1;
const ORDER_HOT_FIRST: u32 = 2;

fn order_code(o: HydrationOrder) -> u32 {
    match o {
        HydrationOrder::Sequential => ORDER_SEQUENTIAL,
        HydrationOrder::HotFirst => ORDER_HOT_FIRST,
    }
}

/// The stored order; the default for a superblock that stored none (or a
/// code from a later version: a setting, never a reason to refuse the
/// metadata).
fn order_of(code: u32) -> HydrationOrder {
    match code {
        ORDER_SEQUENTIAL => HydrationOrder::Sequential,
        ORDER_HOT_FIRST => HydrationOrder::HotFirst,
        _ => HydrationOrder::default(), // 0 (not stored), or a later code
    }
}
pub const PAGE_MAGIC: u32 = 0x5043_4442; // "BDCP"
pub const PAGE_HEADER: usize = 32;
pub const DEFAULT_PAGE_SIZE: u32 = 4096;
pub const NAME_LEN: usize = 64;

pub const FLAG_SOURCE_RELEASED: u32 = 1;

/// Where the parts of the metadata live, in bytes from the start of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub sb_area: u64,
    pub page_size: u32,
    pub page_count: u32,
}

impl Layout {
    pub fn new(meta_block_size: u32, page_size: u32, region_count: u64) -> Layout {
        let sb_area = SB_AREA.div_ceil(meta_block_size as u64) * meta_block_size as u64;
        Layout {
            sb_area,
            page_size,
            page_count: region_count.div_ceil(regions_per_page(page_size)) as u32,
        }
    }
    pub fn sb_offset(&self, slot: u8) -> u64 {
        slot as u64 * self.sb_area
    }
    pub fn page_offset(&self, page: u32, slot: u8) -> u64 {
        2 * self.sb_area + (2 * page as u64 + slot as u64) * self.page_size as u64
    }
    pub fn total_bytes(&self) -> u64 {
        self.page_offset(self.page_count, 0)
    }
    pub fn words_per_page(&self) -> usize {
        words_per_page(self.page_size)
    }
}

pub fn words_per_page(page_size: u32) -> usize {
    (page_size as usize - PAGE_HEADER) / 8
}

pub fn regions_per_page(page_size: u32) -> u64 {
    words_per_page(page_size) as u64 * 64
}

/// Page sizes the format accepts: a power of two with room for a header and
/// at least one 64-region word. 4 KiB in production; the simulator uses small
/// pages so that small devices still span many pages.
pub fn valid_page_size(page_size: u32) -> bool {
    page_size.is_power_of_two() && (64..=1 << 20).contains(&page_size)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub flags: u32,
    pub uuid: [u8; 16],
    pub nonce: u64,
    pub seq: u64,
    pub block_size: u32,
    pub region_size: u32,
    pub region_count: u64,
    pub source_blocks: u64,
    pub dest_blocks: u64,
    pub page_size: u32,
    pub page_count: u32,
    pub regions_hydrated: u64,
    pub source_id: [u8; 16],
    pub dest_id: [u8; 16],
    pub source_name: String,
    pub dest_name: String,
    /// The clone's name and settings (empty and None in version 1).
    pub name: String,
    pub settings: Option<Settings>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SbError {
    /// All zeroes: never written.
    Blank,
    /// Not bdev_clone metadata at all.
    Foreign,
    UnsupportedVersion(u32),
    BadChecksum,
    BadField(&'static str),
}

impl fmt::Display for SbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SbError::Blank => write!(f, "blank"),
            SbError::Foreign => write!(f, "not bdev_clone metadata"),
            SbError::UnsupportedVersion(v) => write!(f, "unsupported format version {v}"),
            SbError::BadChecksum => write!(f, "checksum mismatch"),
            SbError::BadField(name) => write!(f, "invalid field {name}"),
        }
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}
impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
    fn u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes())
    }
    fn name(&mut self, s: &str) {
        self.text::<NAME_LEN>(s)
    }
    fn text<const N: usize>(&mut self, s: &str) {
        let mut field = [0u8; N];
        let b = truncate_utf8(s, N).as_bytes();
        field[..b.len()].copy_from_slice(b);
        self.put(&field)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}
impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let out = self.buf[self.at..self.at + N].try_into().unwrap();
        self.at += N;
        out
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn name(&mut self) -> String {
        self.text::<NAME_LEN>()
    }
    fn text<const N: usize>(&mut self) -> String {
        let raw: [u8; N] = self.take();
        let end = raw.iter().position(|&b| b == 0).unwrap_or(N);
        String::from_utf8_lossy(&raw[..end]).into_owned()
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Superblock {
    /// Writes the superblock into the first `SB_LEN` bytes of `buf` and zeroes
    /// the rest of it.
    pub fn encode(&self, buf: &mut [u8]) {
        buf.fill(0);
        let mut w = Writer { buf, at: 0 };
        w.put(&SB_MAGIC);
        w.u32(SB_VERSION);
        w.u32(self.flags);
        w.put(&self.uuid);
        w.u64(self.nonce);
        w.u64(self.seq);
        w.u32(self.block_size);
        w.u32(self.region_size);
        w.u64(self.region_count);
        w.u64(self.source_blocks);
        w.u64(self.dest_blocks);
        w.u32(self.page_size);
        w.u32(self.page_count);
        w.u64(self.regions_hydrated);
        w.put(&self.source_id);
        w.put(&self.dest_id);
        w.name(&self.source_name);
        w.name(&self.dest_name);
        w.text::<CLONE_NAME_LEN>(&self.name);
        let s = self.settings.clone().unwrap_or_default();
        let stored = u32::from(self.settings.is_some()) << 31;
        w.u32(
            stored
                | if s.hydration_enabled {
                    SETTING_HYDRATION_ENABLED
                } else {
                    0
                }
                | if s.discard_passdown {
                    SETTING_DISCARD_PASSDOWN
                } else {
                    0
                },
        );
        w.u32(s.hydration_threshold);
        w.u32(s.hydration_batch_size);
        w.u32(order_code(s.hydration_order));
        w.u64(s.max_bandwidth_mb_sec);
        w.u64(s.max_bandwidth_busy_mb_sec);
        w.u64(s.commit_interval_ms);
        debug_assert_eq!(w.at, SB_LEN - 4);
        let crc = crc32c::crc32c(&w.buf[..SB_LEN - 4]);
        w.u32(crc);
    }

    /// Decodes and validates a superblock. Never panics on any input.
    pub fn decode(buf: &[u8]) -> Result<Superblock, SbError> {
        if buf.len() < SB_LEN_V1 {
            return Err(SbError::BadField("length"));
        }
        if buf[..SB_LEN_V1].iter().all(|&b| b == 0) {
            return Err(SbError::Blank);
        }
        if buf[..8] != SB_MAGIC {
            return Err(SbError::Foreign);
        }
        let version = u32::from_le_bytes(buf[8..12].try_into().unwrap());
        let len = match version {
            1 => SB_LEN_V1,
            SB_VERSION => SB_LEN,
            v => return Err(SbError::UnsupportedVersion(v)),
        };
        if buf.len() < len {
            return Err(SbError::BadField("length"));
        }
        let stored = u32::from_le_bytes(buf[len - 4..len].try_into().unwrap());
        if crc32c::crc32c(&buf[..len - 4]) != stored {
            return Err(SbError::BadChecksum);
        }
        let mut r = Reader { buf, at: 12 };
        let mut sb = Superblock {
            flags: r.u32(),
            uuid: r.take(),
            nonce: r.u64(),
            seq: r.u64(),
            block_size: r.u32(),
            region_size: r.u32(),
            region_count: r.u64(),
            source_blocks: r.u64(),
            dest_blocks: r.u64(),
            page_size: r.u32(),
            page_count: r.u32(),
            regions_hydrated: r.u64(),
            source_id: r.take(),
            dest_id: r.take(),
            source_name: r.name(),
            dest_name: r.name(),
            name: String::new(),
            settings: None,
        };
        if version >= 2 {
            sb.name = r.text::<CLONE_NAME_LEN>();
            let flags = r.u32();
            let s = Settings {
                hydration_enabled: flags & SETTING_HYDRATION_ENABLED != 0,
                discard_passdown: flags & SETTING_DISCARD_PASSDOWN != 0,
                hydration_threshold: r.u32(),
                hydration_batch_size: r.u32(),
                hydration_order: order_of(r.u32()),
                max_bandwidth_mb_sec: r.u64(),
                max_bandwidth_busy_mb_sec: r.u64(),
                commit_interval_ms: r.u64(),
            };
            sb.settings = (flags >> 31 == 1).then_some(s);
        }
        sb.validate()?;
        Ok(sb)
    }

    fn validate(&self) -> Result<(), SbError> {
        let bs = self.block_size;
        if !bs.is_power_of_two() || bs < 512 {
            return Err(SbError::BadField("block_size"));
        }
        if !self.region_size.is_power_of_two()
            || self.region_size < bs
            || self.region_size > crate::geometry::MAX_REGION_SIZE
        {
            return Err(SbError::BadField("region_size"));
        }
        let region_blocks = (self.region_size / bs) as u64;
        if self.source_blocks == 0
            || self.source_blocks.div_ceil(region_blocks) != self.region_count
        {
            return Err(SbError::BadField("region_count"));
        }
        if self.dest_blocks < self.source_blocks {
            return Err(SbError::BadField("dest_blocks"));
        }
        if !valid_page_size(self.page_size) {
            return Err(SbError::BadField("page_size"));
        }
        if self.region_count.div_ceil(regions_per_page(self.page_size)) != self.page_count as u64 {
            return Err(SbError::BadField("page_count"));
        }
        if self.regions_hydrated > self.region_count {
            return Err(SbError::BadField("regions_hydrated"));
        }
        Ok(())
    }

    pub fn geometry(&self) -> Geometry {
        Geometry {
            block_size: self.block_size,
            region_size: self.region_size,
            num_blocks: self.source_blocks,
            dest_blocks: self.dest_blocks,
            region_count: self.region_count,
        }
    }

    pub fn source_released(&self) -> bool {
        self.flags & FLAG_SOURCE_RELEASED != 0
    }

    /// A superblock of nothing: the template before anything was loaded.
    pub fn empty() -> Superblock {
        Superblock {
            flags: 0,
            uuid: [0; 16],
            nonce: 0,
            seq: 0,
            block_size: 0,
            region_size: 0,
            region_count: 0,
            source_blocks: 0,
            dest_blocks: 0,
            page_size: 0,
            page_count: 0,
            regions_hydrated: 0,
            source_id: [0; 16],
            dest_id: [0; 16],
            source_name: String::new(),
            dest_name: String::new(),
            name: String::new(),
            settings: None,
        }
    }
}

/// Both superblock slots decoded from the first `2 * sb_area` bytes of a
/// metadata device.
pub fn decode_slots(data: &[u8], sb_area: usize) -> [Result<Superblock, SbError>; 2] {
    [
        Superblock::decode(&data[..sb_area]),
        Superblock::decode(&data[sb_area..2 * sb_area]),
    ]
}

/// The slot holding the valid superblock with the highest sequence, and it.
pub fn newest_valid(slots: &[Result<Superblock, SbError>; 2]) -> Option<(u8, Superblock)> {
    (0..2u8)
        .filter_map(|i| slots[i as usize].as_ref().ok().map(|sb| (i, sb.clone())))
        .max_by_key(|(_, sb)| sb.seq)
}

/// Encodes bitmap page `index` holding `words` (as many as fit; missing words
/// are zero) into `buf` (one page).
pub fn encode_page(buf: &mut [u8], index: u32, seq: u64, nonce: u64, words: &[u64]) {
    buf.fill(0);
    buf[0..4].copy_from_slice(&PAGE_MAGIC.to_le_bytes());
    buf[4..8].copy_from_slice(&index.to_le_bytes());
    buf[8..16].copy_from_slice(&seq.to_le_bytes());
    buf[16..24].copy_from_slice(&nonce.to_le_bytes());
    for (i, w) in words.iter().enumerate() {
        let at = PAGE_HEADER + 8 * i;
        buf[at..at + 8].copy_from_slice(&w.to_le_bytes());
    }
    let crc = page_crc(buf);
    buf[24..28].copy_from_slice(&crc.to_le_bytes());
}

fn page_crc(buf: &[u8]) -> u32 {
    let c = crc32c::crc32c(&buf[..24]);
    crc32c::crc32c_append(c, &buf[28..])
}

/// Decodes one page slot. Returns its sequence number and fills `words`, or
/// None when the slot does not hold a valid version of page `index` of the
/// format `nonce`. Never panics on any input.
pub fn decode_page(buf: &[u8], index: u32, nonce: u64, words: &mut [u64]) -> Option<u64> {
    if buf.len() < PAGE_HEADER + 8 * words.len() {
        return None;
    }
    let u32_at = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(buf[at..at + 8].try_into().unwrap());
    if u32_at(0) != PAGE_MAGIC || u32_at(4) != index || u64_at(16) != nonce {
        return None;
    }
    if page_crc(buf) != u32_at(24) {
        return None;
    }
    for (i, w) in words.iter_mut().enumerate() {
        *w = u64_at(PAGE_HEADER + 8 * i);
    }
    Some(u64_at(8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample_sb() -> Superblock {
        Superblock {
            flags: 0,
            uuid: [7; 16],
            nonce: 0x1234_5678_9abc_def0,
            seq: 42,
            block_size: 512,
            region_size: 4096,
            region_count: 125,
            source_blocks: 1000,
            dest_blocks: 1200,
            page_size: 4096,
            page_count: 1,
            regions_hydrated: 3,
            source_id: [1; 16],
            dest_id: [2; 16],
            source_name: "Nvme0n1".into(),
            dest_name: "Malloc0".into(),
            name: "clone0".into(),
            settings: Some(Settings::default()),
        }
    }

    #[test]
    fn layout_offsets() {
        let l = Layout::new(512, 4096, 100_000);
        assert_eq!(l.page_count, 4); // 32512 regions per page
        assert_eq!(l.page_offset(0, 0), 8192);
        assert_eq!(l.page_offset(0, 1), 12288);
        assert_eq!(l.page_offset(1, 0), 16384);
        assert_eq!(l.total_bytes(), 8192 + 8 * 4096);
        let l = Layout::new(8192, 8192, 1);
        assert_eq!(l.sb_area, 8192);
    }

    #[test]
    fn version_1_superblocks_still_load() {
        // A version-1 superblock: the same first fields, the CRC right after.
        let mut buf = vec![0u8; 512];
        sample_sb().encode(&mut buf);
        buf[8..12].copy_from_slice(&1u32.to_le_bytes());
        buf[SB_LEN_V1 - 4..].fill(0);
        let crc = crc32c::crc32c(&buf[..SB_LEN_V1 - 4]);
        buf[SB_LEN_V1 - 4..SB_LEN_V1].copy_from_slice(&crc.to_le_bytes());
        let sb = Superblock::decode(&buf).expect("version 1 decodes");
        assert_eq!(sb.name, "");
        assert_eq!(sb.settings, None);
        assert_eq!(sb.source_name, "Nvme0n1");
        // Version 2 keeps the name and settings.
        let mut buf = vec![0u8; 512];
        sample_sb().encode(&mut buf);
        assert_eq!(Superblock::decode(&buf), Ok(sample_sb()));
    }

    #[test]
    fn hydration_order_is_stored_and_old_superblocks_load_the_default() {
        for order in [HydrationOrder::Sequential, HydrationOrder::HotFirst] {
            let mut sb = sample_sb();
            sb.settings.as_mut().unwrap().hydration_order = order;
            let mut buf = vec![0u8; 512];
            sb.encode(&mut buf);
            assert_eq!(Superblock::decode(&buf), Ok(sb));
        }
        // A version-2 superblock written before the setting existed has a
        // zero where the order is now: it loads with the default order.
        let mut sb = sample_sb();
        sb.settings.as_mut().unwrap().hydration_order = HydrationOrder::Sequential;
        let mut buf = vec![0u8; 512];
        sb.encode(&mut buf);
        let at = SB_LEN_V1 - 4 + CLONE_NAME_LEN + 12; // flags, threshold, batch
        assert_eq!(buf[at..at + 4], ORDER_SEQUENTIAL.to_le_bytes());
        buf[at..at + 4].fill(0);
        let crc = crc32c::crc32c(&buf[..SB_LEN - 4]);
        buf[SB_LEN - 4..SB_LEN].copy_from_slice(&crc.to_le_bytes());
        let old = Superblock::decode(&buf).expect("an old version 2 decodes");
        assert_eq!(
            old.settings.unwrap().hydration_order,
            HydrationOrder::default()
        );
    }

    #[test]
    fn blank_and_foreign() {
        assert_eq!(Superblock::decode(&[0u8; 512]), Err(SbError::Blank));
        let mut b = [0u8; 512];
        b[3] = 1;
        assert_eq!(Superblock::decode(&b), Err(SbError::Foreign));
    }

    #[test]
    fn page_rejects_other_nonce_and_index() {
        let mut buf = vec![0u8; 64];
        encode_page(&mut buf, 3, 9, 77, &[1, 2, 3, 4]);
        let mut w = [0u64; 4];
        assert_eq!(decode_page(&buf, 3, 77, &mut w), Some(9));
        assert_eq!(w, [1, 2, 3, 4]);
        assert_eq!(decode_page(&buf, 2, 77, &mut w), None);
        assert_eq!(decode_page(&buf, 3, 78, &mut w), None);
    }

    proptest! {
        #[test]
        fn superblock_roundtrip(seq in any::<u64>(), flags in 0u32..2, hyd in 0u64..126,
                                name in "\\PC{0,80}", bs_shift in 0u32..4) {
            let mut sb = sample_sb();
            sb.seq = seq;
            sb.flags = flags;
            sb.regions_hydrated = hyd;
            sb.block_size = 512 << bs_shift;
            sb.region_size = 4096 << bs_shift;
            sb.source_name = truncate_utf8(&name, NAME_LEN).to_string();
            let mut buf = vec![0xAAu8; 4096];
            sb.encode(&mut buf);
            prop_assert_eq!(Superblock::decode(&buf), Ok(sb));
        }

        #[test]
        fn any_corruption_of_superblock_is_detected(byte in 0usize..SB_LEN, bit in 0u8..8) {
            let mut buf = vec![0u8; 512];
            sample_sb().encode(&mut buf);
            buf[byte] ^= 1 << bit;
            prop_assert!(Superblock::decode(&buf).is_err());
        }

        #[test]
        fn torn_superblock_is_detected(cut in 1usize..SB_LEN, old_seq in any::<u64>()) {
            // A write torn at a byte boundary: new bytes up to `cut`, old after.
            let mut old = sample_sb();
            old.seq = old_seq;
            let mut a = vec![0u8; 512];
            old.encode(&mut a);
            let mut new = sample_sb();
            new.seq = old_seq.wrapping_add(1);
            new.regions_hydrated = 100;
            let mut b = vec![0u8; 512];
            new.encode(&mut b);
            let mut torn = b[..cut].to_vec();
            torn.extend_from_slice(&a[cut..]);
            if torn != a && torn != b {
                prop_assert!(Superblock::decode(&torn).is_err());
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Superblock::decode(&bytes);
            let mut w = [0u64; 8];
            let _ = decode_page(&bytes, 0, 0, &mut w);
        }

        #[test]
        fn page_roundtrip_and_corruption(words in proptest::collection::vec(any::<u64>(), 4),
                                         seq in any::<u64>(), byte in 0usize..64, bit in 0u8..8) {
            let mut buf = vec![0u8; 64];
            encode_page(&mut buf, 1, seq, 5, &words);
            let mut out = [0u64; 4];
            prop_assert_eq!(decode_page(&buf, 1, 5, &mut out), Some(seq));
            prop_assert_eq!(&out[..], &words[..]);
            buf[byte] ^= 1 << bit;
            prop_assert_eq!(decode_page(&buf, 1, 5, &mut out), None);
        }
    }
}
