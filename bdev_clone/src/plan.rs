//! Creating a clone, decided before anything is opened: the parameters of
//! `bdev_clone_create` plus what the host knows of the base devices become
//! one [`CreatePlan`] (which devices to open and claim, how to open the
//! engine) or a refusal whose message names the bad parameter. The host (the
//! SPDK glue) only gathers the [`Facts`], opens and claims the bases the plan
//! lists and registers the clone once the engine has opened; everything it
//! would otherwise have to decide is here, and tested without SPDK.
//!
//! What needs the metadata (resume or format, region size of a resumed
//! clone, whether the devices are those the metadata belongs to, whether it
//! is large enough) is the engine's, at open.

use crate::buffers::{class_of, DEFAULT_CAP};
use crate::geometry::{DeviceInfo, Geometry, GeometryError, MAX_REGION_SIZE};
use crate::io::Dev;
use crate::metadata::commit::reserve_for;
use crate::metadata::{decode_slots, newest_valid, Layout, Superblock, DEFAULT_PAGE_SIZE};
use crate::params::CreateParams;
use crate::{OpenError, OpenParams};

/// A refusal: errno (positive, as in libc) and a message naming the bad
/// parameter.
pub type Refusal = (i32, String);

/// What the host knows of one base bdev.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BaseFacts {
    pub exists: bool,
    pub block_size: u32,
    pub num_blocks: u64,
    /// The device's identity (the bdev's UUID); all-zero = unknown.
    pub uuid: [u8; 16],
    /// It has a volatile write cache: a write is durable only after a flush.
    pub write_cache: bool,
    /// It takes flush requests.
    pub flush_supported: bool,
    /// The flushes it takes reach the device. False for SPDK's NVMe bdev
    /// without `bdev_nvme_set_options --enable-flush`, which completes FLUSH
    /// without sending it.
    pub flush_reaches_device: bool,
    /// Where and why flushes are lost, when the host could tell (a walk down
    /// the stack: `crate::stack`).
    pub flush_dropped: Option<String>,
    pub unmap_supported: bool,
}

impl BaseFacts {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            block_size: self.block_size,
            num_blocks: self.num_blocks,
        }
    }

    /// A flush request does something on this device.
    fn flush_needed(&self) -> bool {
        self.write_cache && self.flush_supported
    }

    /// What is written is durable once flushed: no volatile cache, or one
    /// whose flushes reach the device.
    fn flush_sent(&self) -> bool {
        !self.write_cache || (self.flush_supported && self.flush_reaches_device)
    }

    /// " (dropped at X: why)" when the host said where.
    fn dropped_detail(&self) -> String {
        self.flush_dropped
            .as_ref()
            .map_or(String::new(), |d| format!(" ({d})"))
    }
}

/// What the host knows when it is asked to create a clone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// A bdev or clone of the clone's name exists.
    pub name_taken: bool,
    pub source: BaseFacts,
    pub dest: BaseFacts,
    pub meta: BaseFacts,
    /// Fresh random bytes: the clone's UUID when none is given.
    pub random_uuid: [u8; 16],
    /// Fresh random: the nonce of a new format.
    pub nonce: u64,
}

/// One base bdev to open and claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseOpen {
    pub dev: Dev,
    /// The create parameter that named it (`source_bdev`, ...): the host's
    /// messages name it.
    pub param: &'static str,
    pub name: String,
    /// Open for writing with an exclusive-write claim (destination,
    /// metadata); otherwise read-only with a shared claim, so that many
    /// clones can share one source.
    pub write: bool,
    /// Flushes do something on it; otherwise the host completes them at once.
    pub flush_needed: bool,
}

/// A create that can go ahead.
#[derive(Clone, Debug)]
pub struct CreatePlan {
    /// The clone's UUID: the one given, or a new one.
    pub uuid: [u8; 16],
    /// Source (unless released), destination, metadata, in this order.
    pub bases: Vec<BaseOpen>,
    /// How to open the engine; `settings` holds discard passdown.
    pub open: OpenParams,
    /// Shown by get_clones.
    pub dest_write_cache: bool,
    pub dest_flush_sent: bool,
}

fn einval(msg: impl Into<String>) -> Refusal {
    (libc::EINVAL, msg.into())
}

/// Decides a create: every check that needs no metadata, in this order:
/// the parameters, the name, the bases exist, the UUID, the destination's
/// and the metadata's flushes reach their devices, then the geometry.
pub fn plan(p: &CreateParams, f: &Facts) -> Result<CreatePlan, Refusal> {
    p.validate().map_err(einval)?;
    if f.name_taken {
        return Err((
            libc::EEXIST,
            format!("a bdev named '{}' already exists", p.name),
        ));
    }
    // A released source is not opened (it may be gone); the engine checks
    // that the metadata says it was released.
    let released = p.source_released;
    let bases = [
        (Dev::Source, "source_bdev", &p.source_bdev, &f.source),
        (Dev::Dest, "destination_bdev", &p.destination_bdev, &f.dest),
        (Dev::Meta, "metadata_bdev", &p.metadata_bdev, &f.meta),
    ];
    let bases = if released { &bases[1..] } else { &bases[..] };
    for (_, param, name, facts) in bases {
        if !facts.exists {
            return Err((libc::ENODEV, format!("{param} '{name}' does not exist")));
        }
    }
    let uuid = match &p.uuid {
        Some(s) => parse_uuid(s).ok_or_else(|| einval(format!("uuid '{s}' is not a UUID")))?,
        None => f.random_uuid,
    };
    if !f.dest.flush_sent() && !p.allow_unflushed_destination {
        return Err(einval(format!(
            "destination_bdev '{}' has a volatile write cache but its flushes are not sent to \
             the device{}, so no commit could be made durable. For an NVMe bdev run \
             `bdev_nvme_set_options --enable-flush` before attaching the controller; or pass \
             allow_unflushed_destination to accept the risk",
            p.destination_bdev,
            f.dest.dropped_detail()
        )));
    }
    if !f.meta.flush_sent() && !p.allow_unflushed_destination {
        return Err(einval(format!(
            "metadata_bdev '{}' has a volatile write cache but its flushes are not sent to the \
             device{}. For an NVMe bdev run `bdev_nvme_set_options --enable-flush` before \
             attaching the controller; or pass allow_unflushed_destination to accept the risk",
            p.metadata_bdev,
            f.meta.dropped_detail()
        )));
    }
    let (dst, meta) = (f.dest.info(), f.meta.info());
    // Without the source, the engine checks the destination against the
    // source's size and block size recorded in the metadata.
    let src = if released { dst } else { f.source.info() };
    let region_size = p.region_size_kb.map(|kb| kb * 1024);
    // The geometry's own rules. Without a region size (the stored one when
    // resuming, the default when formatting) the smallest region, one block,
    // checks everything else.
    Geometry::new(src, dst, region_size.unwrap_or(src.block_size))
        .map_err(|e| geometry_refusal(p, e))?;
    // One region's copy must fit what the buffer cap leaves to copies, or
    // the first partial write into it would wait forever.
    let page_size = DEFAULT_PAGE_SIZE.max(meta.block_size);
    if let Some(rs) = region_size {
        let copy_budget = DEFAULT_CAP - reserve_for(&Layout::new(meta.block_size, page_size, 0));
        if class_of(rs as usize) > copy_budget {
            return Err(einval(format!(
                "region_size_kb {} needs {} KiB copy buffers, more than the {} KiB a clone's \
                 buffer cap leaves to copies; use a region_size_kb of at most {}",
                rs / 1024,
                class_of(rs as usize) / 1024,
                copy_budget / 1024,
                (copy_budget + 1).next_power_of_two() / 2 / 1024
            )));
        }
    }

    let discard_passdown = !p.no_discard_passdown && f.dest.unmap_supported;
    let mut open = OpenParams::new(src, dst, meta, f.nonce);
    open.region_size = region_size;
    open.page_size = page_size;
    open.format = p.format;
    open.uuid = uuid;
    open.require_uuid = p.uuid.is_some();
    open.name = p.name.clone();
    if released {
        open.source = None;
    } else {
        open.source_id = f.source.uuid;
    }
    open.dest_id = f.dest.uuid;
    open.source_name = p.source_bdev.clone();
    open.dest_name = p.destination_bdev.clone();
    open.settings = p.settings(discard_passdown);
    Ok(CreatePlan {
        uuid,
        bases: bases
            .iter()
            .map(|(dev, param, name, facts)| BaseOpen {
                dev: *dev,
                param,
                name: name.to_string(),
                write: *dev != Dev::Source,
                flush_needed: facts.flush_needed(),
            })
            .collect(),
        open,
        dest_write_cache: f.dest.write_cache,
        dest_flush_sent: f.dest.flush_sent(),
    })
}

/// The geometry's refusal, naming the parameter it is about.
fn geometry_refusal(p: &CreateParams, e: GeometryError) -> Refusal {
    let (s, d) = (&p.source_bdev, &p.destination_bdev);
    einval(match e {
        GeometryError::BlockSizeMismatch { .. } => format!("destination_bdev '{d}': {e}"),
        GeometryError::BadBlockSize(_) if p.source_released => {
            format!("destination_bdev '{d}': {e}")
        }
        GeometryError::BadBlockSize(_) => format!("source_bdev '{s}': {e}"),
        // Parameters passed validation: a region size given is a power of two
        // no larger than the largest region.
        GeometryError::BadRegionSize { block_size, .. } => match p.region_size_kb {
            Some(kb) => format!("region_size_kb {kb} is smaller than the block size {block_size}"),
            None => format!(
                "the block size {block_size} is larger than the largest region \
                 ({MAX_REGION_SIZE} bytes)"
            ),
        },
        GeometryError::DestTooSmall {
            source_bytes,
            dest_bytes,
        } => format!(
            "destination_bdev '{d}' ({dest_bytes} bytes) is smaller than source_bdev '{s}' \
             ({source_bytes} bytes)"
        ),
        GeometryError::EmptySource => format!("source_bdev '{s}' has no blocks"),
    })
}

/// The bases a `wait_for_bases` create waits for are all there (a released
/// source is not waited for).
pub fn bases_ready(p: &CreateParams, exists: impl Fn(&str) -> bool) -> bool {
    (p.source_released || exists(&p.source_bdev))
        && exists(&p.destination_bdev)
        && exists(&p.metadata_bdev)
}

/// How many bytes from the start of a bdev examine reads: both superblock
/// slots.
pub fn examine_len(block_size: u32) -> u64 {
    2 * Layout::new(block_size, DEFAULT_PAGE_SIZE, 0).sb_area
}

/// The newest valid superblock in the first [`examine_len`] bytes of a bdev,
/// or None: blank, another format, or corrupt. Examine claims a bdev only
/// when this finds one.
pub fn examined_superblock(data: &[u8], block_size: u32) -> Option<Superblock> {
    let sb_area = (examine_len(block_size) / 2) as usize;
    if data.len() < 2 * sb_area {
        return None;
    }
    newest_valid(&decode_slots(data, sb_area)).map(|(_, sb)| sb)
}

/// The create that assembles the clone whose metadata (superblock `sb`) is
/// on `metadata_bdev`: its stored name, bases and settings; the stored UUID
/// and region size are kept by the engine when it resumes. Err when the
/// superblock predates stored names (format version 1).
pub fn assembly_params(sb: &Superblock, metadata_bdev: &str) -> Result<CreateParams, String> {
    if sb.name.is_empty() {
        return Err(
            "the metadata predates stored clone names (format version 1); \
                    create the clone with bdev_clone_create once to store it"
                .into(),
        );
    }
    let s = sb.settings.clone().unwrap_or_default();
    let p = CreateParams {
        name: sb.name.clone(),
        source_bdev: sb.source_name.clone(),
        destination_bdev: sb.dest_name.clone(),
        metadata_bdev: metadata_bdev.to_string(),
        region_size_kb: None,
        uuid: None,
        no_hydration: !s.hydration_enabled,
        hydration_threshold: Some(s.hydration_threshold),
        hydration_batch_size: Some(s.hydration_batch_size),
        max_bandwidth_mb_sec: Some(s.max_bandwidth_mb_sec),
        max_bandwidth_busy_mb_sec: Some(s.max_bandwidth_busy_mb_sec),
        commit_interval_ms: Some(s.commit_interval_ms),
        hydration_order: Some(s.hydration_order),
        no_discard_passdown: !s.discard_passdown,
        format: false,
        allow_unflushed_destination: false,
        wait_for_bases: true,
        source_released: sb.source_released(),
    };
    p.validate()
        .map_err(|e| format!("the stored settings are invalid: {e}"))?;
    Ok(p)
}

/// The errno a create answers when the engine could not open the clone.
pub fn open_errno(e: &OpenError) -> i32 {
    // RegionTooLarge, Mismatch, Corrupt, ...: the parameters or the metadata
    // do not fit; Internal: a panic was caught (README, panic policy).
    match e {
        OpenError::MetaTooSmall { .. } => libc::ENOSPC,
        OpenError::Io(..) | OpenError::Internal(_) => libc::EIO,
        OpenError::NoMemory => libc::ENOMEM,
        _ => libc::EINVAL,
    }
}

/// A UUID in its usual text form (36 characters, hex digits of either case,
/// dashes at 8, 13, 18 and 23), as bytes in text order: what SPDK's
/// spdk_uuid_parse accepts.
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut digits = Vec::with_capacity(32);
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        digits.push((c as char).to_digit(16)? as u8);
    }
    for (i, pair) in digits.chunks(2).enumerate() {
        out[i] = pair[0] << 4 | pair[1];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::decode;
    use crate::Settings;
    use serde_json::{json, Value};

    fn params(extra: Value) -> CreateParams {
        let mut v = json!({"name": "c", "source_bdev": "s", "destination_bdev": "d",
            "metadata_bdev": "m"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        decode(Some(v)).unwrap()
    }

    fn base(block_size: u32, num_blocks: u64, id: u8) -> BaseFacts {
        BaseFacts {
            exists: true,
            block_size,
            num_blocks,
            uuid: [id; 16],
            write_cache: false,
            flush_supported: true,
            flush_reaches_device: true,
            flush_dropped: None,
            unmap_supported: true,
        }
    }

    fn facts() -> Facts {
        Facts {
            name_taken: false,
            source: base(512, 1000, 1),
            dest: base(512, 2000, 2),
            meta: base(4096, 100, 3),
            random_uuid: [9; 16],
            nonce: 77,
        }
    }

    /// The refusal of `p` with `f`: its errno and message.
    fn refused(p: Value, f: &Facts) -> (i32, String) {
        plan(&params(p), f).map(|_| ()).unwrap_err()
    }

    #[test]
    fn a_plan_opens_all_three_and_says_how_to_open_the_engine() {
        let p = params(json!({"region_size_kb": 4, "hydration_threshold": 3,
            "commit_interval_ms": 500, "format": true}));
        let plan = plan(&p, &facts()).unwrap();
        let bases: Vec<_> = plan
            .bases
            .iter()
            .map(|b| (b.dev, b.param, b.name.as_str(), b.write))
            .collect();
        assert_eq!(
            bases,
            [
                (Dev::Source, "source_bdev", "s", false),
                (Dev::Dest, "destination_bdev", "d", true),
                (Dev::Meta, "metadata_bdev", "m", true),
            ]
        );
        assert!(plan.bases.iter().all(|b| !b.flush_needed));
        assert_eq!(plan.uuid, [9; 16]);
        let o = &plan.open;
        assert_eq!(o.source, Some(facts().source.info()));
        assert_eq!(o.dest, facts().dest.info());
        assert_eq!(o.meta, facts().meta.info());
        assert_eq!(o.region_size, Some(4096));
        assert_eq!(o.page_size, DEFAULT_PAGE_SIZE.max(4096));
        assert!(o.format);
        assert_eq!((o.uuid, o.nonce), ([9; 16], 77));
        assert_eq!((o.source_id, o.dest_id), ([1; 16], [2; 16]));
        assert_eq!((o.source_name.as_str(), o.dest_name.as_str()), ("s", "d"));
        assert_eq!(o.settings.hydration_threshold, 3);
        assert_eq!(o.settings.commit_interval_ms, 500);
        assert!(o.settings.discard_passdown);
        assert_eq!(
            o.settings.hydration_batch_size,
            Settings::default().hydration_batch_size
        );
        assert!(!plan.dest_write_cache && plan.dest_flush_sent);
    }

    #[test]
    fn a_region_whose_copy_cannot_get_a_buffer_is_refused() {
        let mut f = facts();
        f.source.num_blocks = 1 << 20;
        f.dest.num_blocks = 1 << 20;
        let (errno, msg) = refused(json!({"region_size_kb": 65536}), &f);
        assert_eq!(errno, libc::EINVAL);
        assert!(
            msg.starts_with("region_size_kb 65536 needs 65536 KiB copy buffers")
                && msg.ends_with("at most 32768"),
            "{msg}"
        );
        // The largest it names is accepted.
        let p = params(json!({"region_size_kb": 32768}));
        assert!(plan(&p, &f).is_ok());
    }

    #[test]
    fn require_uuid_only_when_one_is_asked_for() {
        let p = params(json!({}));
        assert!(!plan(&p, &facts()).unwrap().open.require_uuid);
        let p = params(json!({"uuid": "01234567-89ab-cdef-0123-456789abcdef"}));
        let o = plan(&p, &facts()).unwrap().open;
        assert!(o.require_uuid);
        assert_eq!(o.name, "c");
    }

    #[test]
    fn a_given_uuid_is_used_in_text_order() {
        let p = json!({"uuid": "0123456789AB-cdef"});
        assert_eq!(
            refused(p, &facts()),
            (
                libc::EINVAL,
                "uuid '0123456789AB-cdef' is not a UUID".into()
            )
        );
        let p = params(json!({"uuid": "01234567-89ab-CDEF-0123-456789abcdef"}));
        let plan = plan(&p, &facts()).unwrap();
        let want = [
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        assert_eq!((plan.uuid, plan.open.uuid), (want, want));
        for bad in [
            "",
            "01234567-89ab-cdef-0123-456789abcdeg",
            "01234567-89ab-cdef-0123-456789abcdef0",
            "0123456789abcdef0123456789abcdef",
            "01234567+89ab-cdef-0123-456789abcdef",
            "01234567-89ab-cdef-0123-456789abcde\0",
            "01234567-89ab-cdef-0123-456789abcdé",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_parameters_are_refused_before_the_devices_are_looked_at() {
        let mut f = facts();
        f.name_taken = true;
        f.source.exists = false;
        assert_eq!(
            refused(json!({"region_size_kb": 48}), &f),
            (
                libc::EINVAL,
                "region_size_kb must be a power of two from the block size up to 65536 KiB, \
                 got 48"
                    .into()
            )
        );
        assert_eq!(
            refused(json!({"destination_bdev": "s"}), &f).0,
            libc::EINVAL
        );
    }

    #[test]
    fn a_taken_name_is_refused() {
        let mut f = facts();
        f.name_taken = true;
        f.source.exists = false;
        assert_eq!(
            refused(json!({}), &f),
            (libc::EEXIST, "a bdev named 'c' already exists".into())
        );
    }

    #[test]
    fn a_missing_base_is_refused_by_its_parameter() {
        for (which, msg) in [
            (0, "source_bdev 's' does not exist"),
            (1, "destination_bdev 'd' does not exist"),
            (2, "metadata_bdev 'm' does not exist"),
        ] {
            let mut f = facts();
            [&mut f.source, &mut f.dest, &mut f.meta][which].exists = false;
            // Before the UUID is looked at.
            assert_eq!(
                refused(json!({"uuid": "x"}), &f),
                (libc::ENODEV, msg.into())
            );
        }
    }

    #[test]
    fn a_released_source_is_neither_needed_nor_opened() {
        let mut f = facts();
        f.source.exists = false;
        let p = params(json!({"source_released": true}));
        let plan = plan(&p, &f).unwrap();
        assert_eq!(
            plan.bases.iter().map(|b| b.dev).collect::<Vec<_>>(),
            [Dev::Dest, Dev::Meta]
        );
        assert_eq!(plan.open.source, None);
        assert_eq!(plan.open.source_id, [0; 16]);
        // The destination stands in for the source in the geometry check.
        f.dest.block_size = 520;
        assert_eq!(
            refused(json!({"source_released": true}), &f),
            (
                libc::EINVAL,
                "destination_bdev 'd': block size 520 is not a power of two of at least 512".into()
            )
        );
        assert!(bases_ready(&p, |n| n != "s"));
        assert!(!bases_ready(&params(json!({})), |n| n != "s"));
        assert!(!bases_ready(&p, |n| n != "m"));
        assert!(bases_ready(&params(json!({})), |_| true));
    }

    #[test]
    fn a_destination_whose_flushes_are_dropped_is_refused_unless_allowed() {
        let mut f = facts();
        f.dest.write_cache = true;
        f.dest.flush_reaches_device = false;
        let (errno, msg) = refused(json!({}), &f);
        assert_eq!(errno, libc::EINVAL);
        assert!(msg.starts_with("destination_bdev 'd' has a volatile write cache"));
        assert!(msg.contains("--enable-flush") && msg.contains("allow_unflushed_destination"));
        // Where the walk found it, when the host says.
        f.dest.flush_dropped = Some("dropped at Nvme0n1: a bdev above it takes no flushes".into());
        let (_, msg) = refused(json!({}), &f);
        assert!(
            msg.contains(
                "not sent to the device (dropped at Nvme0n1: a bdev above it takes no flushes)"
            ),
            "{msg}"
        );
        let p = params(json!({"allow_unflushed_destination": true}));
        let plan = plan(&p, &f).unwrap();
        assert!(plan.dest_write_cache && !plan.dest_flush_sent);
        assert!(plan.bases[1].flush_needed);
        // A cache that takes no flushes at all: the same.
        f.dest.flush_reaches_device = true;
        f.dest.flush_supported = false;
        assert!(refused(json!({}), &f).1.starts_with("destination_bdev 'd'"));
        let plan = super::plan(&p, &f).unwrap();
        assert!(!plan.dest_flush_sent && !plan.bases[1].flush_needed);
        // A cache whose flushes are sent: flushes are needed, and accepted.
        f.dest.flush_supported = true;
        let plan = super::plan(&params(json!({})), &f).unwrap();
        assert!(plan.dest_write_cache && plan.dest_flush_sent && plan.bases[1].flush_needed);
    }

    #[test]
    fn a_metadata_bdev_whose_flushes_are_dropped_is_refused_unless_allowed() {
        let mut f = facts();
        f.meta.write_cache = true;
        f.meta.flush_reaches_device = false;
        let (errno, msg) = refused(json!({}), &f);
        assert_eq!(errno, libc::EINVAL);
        assert!(msg.starts_with("metadata_bdev 'm' has a volatile write cache"));
        assert!(msg.contains("--enable-flush") && msg.contains("allow_unflushed_destination"));
        assert!(plan(&params(json!({"allow_unflushed_destination": true})), &f).is_ok());
        // The source's cache does not matter: it is only read.
        let mut f = facts();
        f.source.write_cache = true;
        f.source.flush_reaches_device = false;
        assert!(plan(&params(json!({})), &f).is_ok());
    }

    #[test]
    fn the_geometry_is_refused_by_the_parameter_it_is_about() {
        let with = |g: fn(&mut Facts)| {
            let mut f = facts();
            g(&mut f);
            f
        };
        let cases: [(Value, Facts, &str); 6] = [
            (
                json!({}),
                with(|f| f.dest.block_size = 4096),
                "destination_bdev 'd': source block size 512 differs from destination block \
                 size 4096",
            ),
            (
                json!({}),
                with(|f| f.dest.num_blocks = 999),
                "destination_bdev 'd' (511488 bytes) is smaller than source_bdev 's' (512000 \
                 bytes)",
            ),
            (
                json!({"region_size_kb": 4}),
                with(|f| {
                    f.source.block_size = 8192;
                    f.dest.block_size = 8192;
                }),
                "region_size_kb 4 is smaller than the block size 8192",
            ),
            (
                json!({}),
                with(|f| {
                    f.source.block_size = 520;
                    f.dest.block_size = 520;
                }),
                "source_bdev 's': block size 520 is not a power of two of at least 512",
            ),
            (
                json!({}),
                with(|f| {
                    f.source.block_size = 128 << 20;
                    f.dest.block_size = 128 << 20;
                }),
                "the block size 134217728 is larger than the largest region (67108864 bytes)",
            ),
            (
                json!({}),
                with(|f| f.source.num_blocks = 0),
                "source_bdev 's' has no blocks",
            ),
        ];
        for (p, f, msg) in cases {
            assert_eq!(refused(p, &f), (libc::EINVAL, msg.into()));
        }
        // The flush checks come first.
        let mut f = with(|f| f.dest.block_size = 4096);
        f.dest.write_cache = true;
        f.dest.flush_supported = false;
        assert!(refused(json!({}), &f).1.contains("volatile write cache"));
    }

    #[test]
    fn discard_passdown_needs_a_destination_that_unmaps() {
        let mut f = facts();
        let on = |p: Value, f: &Facts| plan(&params(p), f).unwrap().open.settings.discard_passdown;
        assert!(on(json!({}), &f));
        assert!(!on(json!({"no_discard_passdown": true}), &f));
        f.dest.unmap_supported = false;
        assert!(!on(json!({}), &f));
    }

    #[test]
    fn a_failed_open_answers_its_errno() {
        assert_eq!(
            open_errno(&OpenError::MetaTooSmall { need: 2, have: 1 }),
            libc::ENOSPC
        );
        assert_eq!(
            open_errno(&OpenError::Io(Dev::Meta, crate::IoError::Io)),
            libc::EIO
        );
        assert_eq!(open_errno(&OpenError::SourceMissing), libc::EINVAL);
        assert_eq!(open_errno(&OpenError::Mismatch("x".into())), libc::EINVAL);
    }

    fn stored_superblock(name: &str) -> Superblock {
        Superblock {
            uuid: [7; 16],
            seq: 3,
            block_size: 512,
            region_size: 4096,
            region_count: 8,
            source_blocks: 64,
            dest_blocks: 64,
            page_size: 4096,
            page_count: 1,
            source_name: "golden".into(),
            dest_name: "nvme0n1".into(),
            name: name.into(),
            settings: Some(Settings {
                hydration_threshold: 5,
                max_bandwidth_mb_sec: 40,
                discard_passdown: false,
                hydration_order: crate::engine::HydrationOrder::Sequential,
                ..Settings::default()
            }),
            ..Superblock::empty()
        }
    }

    /// Two slots as a metadata device holds them: `slot` written, the other
    /// `other`.
    fn device_start(bs: u32, slot: usize, sb: &Superblock, other: u8) -> Vec<u8> {
        let len = examine_len(bs) as usize;
        let mut data = vec![other; len];
        sb.encode(&mut data[slot * len / 2..(slot + 1) * len / 2]);
        data
    }

    #[test]
    fn examine_claims_only_valid_superblocks() {
        let sb = stored_superblock("c0");
        for bs in [512, 4096] {
            assert_eq!(examine_len(bs), 8192);
            // Blank, foreign and corrupt: not ours.
            assert_eq!(examined_superblock(&vec![0; 8192], bs), None);
            assert_eq!(examined_superblock(&vec![0xa5; 8192], bs), None);
            let mut torn = device_start(bs, 0, &sb, 0);
            torn[100] ^= 1;
            assert_eq!(examined_superblock(&torn, bs), None);
            // Too short to hold both slots.
            assert_eq!(examined_superblock(&torn[..4096], bs), None);
            // Either slot; the newer wins.
            for slot in 0..2 {
                let data = device_start(bs, slot, &sb, 0);
                assert_eq!(examined_superblock(&data, bs), Some(sb.clone()));
            }
            let mut newer = sb.clone();
            newer.seq = 4;
            newer.regions_hydrated = 2;
            let mut data = device_start(bs, 0, &sb, 0);
            newer.encode(&mut data[4096..]);
            assert_eq!(examined_superblock(&data, bs), Some(newer));
        }
    }

    #[test]
    fn assembly_recreates_the_stored_clone() {
        let p = assembly_params(&stored_superblock("c0"), "meta0").unwrap();
        assert_eq!((p.name.as_str(), p.source_bdev.as_str()), ("c0", "golden"));
        assert_eq!(
            (p.destination_bdev.as_str(), p.metadata_bdev.as_str()),
            ("nvme0n1", "meta0")
        );
        // The stored UUID and region size are the engine's to keep.
        assert_eq!((p.uuid, p.region_size_kb), (None, None));
        assert!(p.wait_for_bases && !p.format && !p.source_released);
        assert_eq!(p.hydration_threshold, Some(5));
        assert_eq!(p.max_bandwidth_mb_sec, Some(40));
        assert_eq!(
            p.hydration_order,
            Some(crate::engine::HydrationOrder::Sequential)
        );
        assert!(p.no_discard_passdown && !p.no_hydration);
        let mut released = stored_superblock("c0");
        released.flags = crate::metadata::FLAG_SOURCE_RELEASED;
        assert!(assembly_params(&released, "meta0").unwrap().source_released);
        // Version 1 stored no name: nothing to assemble.
        assert!(assembly_params(&stored_superblock(""), "meta0")
            .unwrap_err()
            .contains("version 1"));
    }
}
