//! Do a base bdev's flushes reach its devices? The rule this project exists
//! for (flush the destination before committing) is a lie if a device below
//! the destination has a volatile write cache that never sees the flush:
//! SPDK's NVMe bdev completes FLUSH without sending it unless
//! `bdev_nvme_set_options --enable-flush` was set, and destinations are
//! often lvols, passthru, raid1, delay, split or crypto on NVMe.
//!
//! The host describes the stack as far down as SPDK's modules name their
//! bases (in their driver-specific info); [`check_flushes`] decides.

use serde_json::Value;

/// Modules whose bdevs are devices (nothing below them).
pub const DEVICE_MODULES: &[&str] = &[
    "nvme",
    "malloc",
    "null",
    "aio",
    "uring",
    "rbd",
    "iscsi",
    "virtio_blk",
    "virtio_scsi",
    "xnvme",
    "daos",
];

/// One bdev of a stack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StackNode {
    pub name: String,
    pub module: String,
    /// It reports a volatile write cache.
    pub write_cache: bool,
    /// It takes flush requests.
    pub flush_supported: bool,
    /// Its module completes flushes without sending them (SPDK's NVMe bdev
    /// without `--enable-flush`).
    pub drops_flushes: bool,
    /// What it is built on, as its module names them.
    pub bases: Vec<StackNode>,
}

impl StackNode {
    /// A bdev whose module is not a known device and names no base: the
    /// walk cannot see below it.
    fn opaque(&self) -> bool {
        self.bases.is_empty() && !DEVICE_MODULES.contains(&self.module.as_str())
    }
}

/// What the walk found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlushVerdict {
    /// No device below has a volatile cache: writes are durable when done.
    NoCache,
    /// Every device with a volatile cache gets the flushes.
    Sent,
    /// A device's cache never sees them.
    Dropped { at: String, why: String },
    /// The walk cannot see below `at` (an unknown module); what it saw is fine.
    Unknown { at: String },
}

/// The walk's result: the bdevs it went through (top first) and its verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlushCheck {
    pub path: Vec<String>,
    pub verdict: FlushVerdict,
}

impl FlushCheck {
    /// A device below has a volatile cache (or may have: unknown), so the
    /// clone must send flushes.
    pub fn volatile(&self) -> bool {
        !matches!(self.verdict, FlushVerdict::NoCache)
    }

    /// Flushes sent to the top reach every cache known below.
    pub fn reaches_devices(&self) -> bool {
        !matches!(self.verdict, FlushVerdict::Dropped { .. })
    }

    /// For get_clones: "sent", "no volatile cache", "dropped at X: why", or
    /// "unknown below X".
    pub fn describe(&self) -> String {
        match &self.verdict {
            FlushVerdict::NoCache => "no volatile cache".into(),
            FlushVerdict::Sent => "sent".into(),
            FlushVerdict::Dropped { at, why } => format!("dropped at {at}: {why}"),
            FlushVerdict::Unknown { at } => format!("unknown below {at}"),
        }
    }
}

/// Walks the stack below `top`.
pub fn check_flushes(top: &StackNode) -> FlushCheck {
    let mut path = Vec::new();
    let mut verdict = FlushVerdict::NoCache;
    walk(top, true, &mut path, &mut verdict);
    FlushCheck { path, verdict }
}

/// `carried`: every bdev above (and this one) takes flushes.
fn walk(n: &StackNode, carried: bool, path: &mut Vec<String>, verdict: &mut FlushVerdict) {
    path.push(n.name.clone());
    let carried = carried && n.flush_supported;
    let worse = |v: &FlushVerdict, new: FlushVerdict| -> bool {
        let rank = |v: &FlushVerdict| match v {
            FlushVerdict::NoCache => 0,
            FlushVerdict::Sent => 1,
            FlushVerdict::Unknown { .. } => 2,
            FlushVerdict::Dropped { .. } => 3,
        };
        rank(&new) > rank(v)
    };
    let found = if n.opaque() {
        Some(FlushVerdict::Unknown { at: n.name.clone() })
    } else if n.bases.is_empty() && n.write_cache {
        Some(if n.drops_flushes {
            FlushVerdict::Dropped {
                at: n.name.clone(),
                why: "the NVMe bdev completes flushes without sending them \
                      (bdev_nvme_set_options --enable-flush before attaching)"
                    .into(),
            }
        } else if !carried {
            FlushVerdict::Dropped {
                at: n.name.clone(),
                why: "a bdev above it takes no flushes".into(),
            }
        } else {
            FlushVerdict::Sent
        })
    } else {
        None
    };
    if let Some(v) = found {
        if worse(verdict, v.clone()) {
            *verdict = v;
        }
    }
    for b in &n.bases {
        walk(b, carried, path, verdict);
    }
}

/// The base bdevs a module names in its driver-specific info (the object
/// `bdev_get_bdevs` shows under `driver_specific`): passthru, delay and
/// crypto's `base_bdev_name`, lvol, split and error's `base_bdev`, raid's
/// `base_bdevs`, ocf's cache and core, a clone's destination and metadata.
pub fn base_names(driver_specific: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let Some(modules) = driver_specific.as_object() else {
        return out;
    };
    for (module, info) in modules {
        let Some(info) = info.as_object() else {
            continue;
        };
        let keys: &[&str] = if module == "clone" {
            &["destination_bdev", "metadata_bdev"]
        } else {
            &[
                "base_bdev_name",
                "base_bdev",
                "base_bdevs",
                "cache_bdev_name",
                "core_bdev_name",
            ]
        };
        for k in keys {
            match info.get(*k) {
                Some(Value::String(s)) => out.push(s.clone()),
                Some(Value::Array(a)) => {
                    out.extend(a.iter().filter_map(|v| v.as_str().map(String::from)))
                }
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dev(name: &str, module: &str, cache: bool, drops: bool) -> StackNode {
        StackNode {
            name: name.into(),
            module: module.into(),
            write_cache: cache,
            flush_supported: true,
            drops_flushes: drops,
            bases: vec![],
        }
    }

    fn over(name: &str, module: &str, cache: bool, bases: Vec<StackNode>) -> StackNode {
        StackNode {
            name: name.into(),
            module: module.into(),
            write_cache: cache,
            flush_supported: true,
            drops_flushes: false,
            bases,
        }
    }

    #[test]
    fn an_lvol_on_nvme_without_enable_flush_drops_them() {
        // lvol reports no cache of its own: only the walk sees the NVMe's.
        let nvme = dev("Nvme0n1", "nvme", true, true);
        let lvol = over("lvs0/lvol0", "lvol", false, vec![nvme.clone()]);
        let c = check_flushes(&lvol);
        assert_eq!(c.path, ["lvs0/lvol0", "Nvme0n1"]);
        assert!(c.volatile() && !c.reaches_devices());
        assert!(
            c.describe().starts_with("dropped at Nvme0n1"),
            "{}",
            c.describe()
        );
        // With --enable-flush: sent.
        let ok = over(
            "lvs0/lvol0",
            "lvol",
            false,
            vec![dev("Nvme0n1", "nvme", true, false)],
        );
        let c = check_flushes(&ok);
        assert_eq!(c.verdict, FlushVerdict::Sent);
        assert!(
            c.volatile(),
            "flushes must be sent to an lvol on a cached device"
        );
    }

    #[test]
    fn a_layer_that_takes_no_flushes_drops_them() {
        let mut pt = over(
            "pt0",
            "passthru",
            true,
            vec![dev("Malloc0", "malloc", true, false)],
        );
        pt.flush_supported = false;
        let c = check_flushes(&pt);
        assert_eq!(
            c.verdict,
            FlushVerdict::Dropped {
                at: "Malloc0".into(),
                why: "a bdev above it takes no flushes".into()
            }
        );
    }

    #[test]
    fn raid1_needs_every_leg() {
        let raid = over(
            "r1",
            "raid",
            false,
            vec![
                dev("Nvme0n1", "nvme", true, false),
                dev("Nvme1n1", "nvme", true, true),
            ],
        );
        let c = check_flushes(&raid);
        assert_eq!(c.path, ["r1", "Nvme0n1", "Nvme1n1"]);
        assert!(c.describe().starts_with("dropped at Nvme1n1"));
    }

    #[test]
    fn no_cache_and_unknown_stacks() {
        let null = over(
            "pt",
            "passthru",
            false,
            vec![dev("Null0", "null", false, false)],
        );
        assert_eq!(check_flushes(&null).verdict, FlushVerdict::NoCache);
        assert!(!check_flushes(&null).volatile());
        let odd = over(
            "pt",
            "passthru",
            false,
            vec![dev("x0", "some_vendor", false, false)],
        );
        let c = check_flushes(&odd);
        assert_eq!(c.describe(), "unknown below x0");
        assert!(
            c.volatile() && c.reaches_devices(),
            "unknown: send flushes, warn"
        );
    }

    #[test]
    fn base_names_from_driver_specific_info() {
        let cases = [
            (
                json!({"passthru": {"name": "pt", "base_bdev_name": "Nvme0n1"}}),
                vec!["Nvme0n1"],
            ),
            (
                json!({"lvol": {"base_bdev": "Nvme0n1", "thin_provision": true}}),
                vec!["Nvme0n1"],
            ),
            (
                json!({"raid": {"base_bdevs": ["a", "b"], "raid_level": "raid1"}}),
                vec!["a", "b"],
            ),
            (
                json!({"clone": {"destination_bdev": "d", "metadata_bdev": "m", "source_bdev": "s"}}),
                vec!["d", "m"],
            ),
            (json!({"nvme": [{"trid": {}}]}), vec![]),
            (json!({}), vec![]),
        ];
        for (info, want) in cases {
            assert_eq!(base_names(&info), want, "{info}");
        }
    }
}
