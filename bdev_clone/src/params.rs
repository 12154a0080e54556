//! The JSON-RPC parameters of bdev_clone's methods and their validation,
//! independent of SPDK (so that they can be fuzzed and tested anywhere).
//! Names are fixed by DESIGN.md.

use crate::engine::Settings;
use crate::geometry::MAX_REGION_SIZE;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

pub const MAX_THRESHOLD: u32 = 4096;
pub const MAX_BATCH: u32 = 1024;
pub const MAX_COMMIT_INTERVAL_MS: u64 = 3_600_000;
pub const MAX_NAME_LEN: usize = 255;

/// `bdev_clone_create`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    pub name: String,
    pub source_bdev: String,
    pub destination_bdev: String,
    pub metadata_bdev: String,
    pub region_size_kb: Option<u32>,
    pub uuid: Option<String>,
    #[serde(default)]
    pub no_hydration: bool,
    pub hydration_threshold: Option<u32>,
    pub hydration_batch_size: Option<u32>,
    pub max_bandwidth_mb_sec: Option<u64>,
    pub max_bandwidth_busy_mb_sec: Option<u64>,
    pub commit_interval_ms: Option<u64>,
    #[serde(default)]
    pub no_discard_passdown: bool,
    #[serde(default)]
    pub format: bool,
    #[serde(default)]
    pub allow_unflushed_destination: bool,
    /// When a base bdev does not exist yet, create the clone once it appears
    /// (save_config sets it: a config may list the clone before its bases).
    #[serde(default)]
    pub wait_for_bases: bool,
    /// The metadata says the source was released: open without it (the
    /// source bdev need not exist). save_config sets it after a release.
    #[serde(default)]
    pub source_released: bool,
}

/// `bdev_clone_delete`, `bdev_clone_release_source`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NameParams {
    pub name: String,
}

/// `bdev_clone_get_clones`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GetParams {
    pub name: Option<String>,
}

/// `bdev_clone_set_hydration`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SetHydrationParams {
    pub name: String,
    pub enabled: Option<bool>,
    pub hydration_threshold: Option<u32>,
    pub hydration_batch_size: Option<u32>,
    pub max_bandwidth_mb_sec: Option<u64>,
    pub max_bandwidth_busy_mb_sec: Option<u64>,
}

/// Decodes params (absent = `{}`) into `T`; the error names the parameter.
pub fn decode<T: DeserializeOwned>(params: Option<Value>) -> Result<T, String> {
    let v = params.unwrap_or(Value::Object(Default::default()));
    if !v.is_object() {
        return Err("params must be an object".into());
    }
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            inner
        } else {
            format!("{path}: {inner}")
        }
    })
}

pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("name must be 1 to {MAX_NAME_LEN} bytes"));
    }
    if name.contains('\0') {
        return Err("name must not contain NUL".into());
    }
    Ok(())
}

pub fn validate_hydration(threshold: Option<u32>, batch: Option<u32>) -> Result<(), String> {
    if let Some(t) = threshold {
        if t == 0 || t > MAX_THRESHOLD {
            return Err(format!(
                "hydration_threshold must be 1..={MAX_THRESHOLD}, got {t}"
            ));
        }
    }
    if let Some(b) = batch {
        if b == 0 || b > MAX_BATCH {
            return Err(format!(
                "hydration_batch_size must be 1..={MAX_BATCH}, got {b}"
            ));
        }
    }
    Ok(())
}

impl CreateParams {
    /// Everything that can be checked without looking at the devices.
    pub fn validate(&self) -> Result<(), String> {
        validate_name(&self.name)?;
        let names = [
            &self.source_bdev,
            &self.destination_bdev,
            &self.metadata_bdev,
        ];
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                if a == b {
                    return Err(format!(
                        "source_bdev, destination_bdev and metadata_bdev must differ ('{a}' given twice)"
                    ));
                }
            }
            if **a == self.name {
                return Err(format!("the clone cannot be its own base bdev ('{a}')"));
            }
        }
        if let Some(rs) = self.region_size_kb {
            if rs == 0 || !rs.is_power_of_two() || rs as u64 * 1024 > MAX_REGION_SIZE as u64 {
                return Err(format!(
                    "region_size_kb must be a power of two from the block size up to {} KiB, got {rs}",
                    MAX_REGION_SIZE / 1024
                ));
            }
        }
        validate_hydration(self.hydration_threshold, self.hydration_batch_size)?;
        if self.source_released && self.format {
            return Err(
                "format needs the source: it cannot be combined with source_released".into(),
            );
        }
        if let Some(ms) = self.commit_interval_ms {
            if ms == 0 || ms > MAX_COMMIT_INTERVAL_MS {
                return Err(format!(
                    "commit_interval_ms must be 1..={MAX_COMMIT_INTERVAL_MS}, got {ms}"
                ));
            }
        }
        Ok(())
    }

    pub fn settings(&self, discard_passdown: bool) -> Settings {
        let d = Settings::default();
        Settings {
            hydration_enabled: !self.no_hydration,
            hydration_threshold: self.hydration_threshold.unwrap_or(d.hydration_threshold),
            hydration_batch_size: self.hydration_batch_size.unwrap_or(d.hydration_batch_size),
            max_bandwidth_mb_sec: self.max_bandwidth_mb_sec.unwrap_or(d.max_bandwidth_mb_sec),
            max_bandwidth_busy_mb_sec: self
                .max_bandwidth_busy_mb_sec
                .unwrap_or(d.max_bandwidth_busy_mb_sec),
            commit_interval_ms: self.commit_interval_ms.unwrap_or(d.commit_interval_ms),
            discard_passdown,
        }
    }
}

impl SetHydrationParams {
    pub fn validate(&self) -> Result<(), String> {
        validate_hydration(self.hydration_threshold, self.hydration_batch_size)
    }

    /// The settings after this call.
    pub fn apply(&self, mut s: Settings) -> Settings {
        if let Some(e) = self.enabled {
            s.hydration_enabled = e;
        }
        if let Some(t) = self.hydration_threshold {
            s.hydration_threshold = t;
        }
        if let Some(b) = self.hydration_batch_size {
            s.hydration_batch_size = b;
        }
        if let Some(r) = self.max_bandwidth_mb_sec {
            s.max_bandwidth_mb_sec = r;
        }
        if let Some(r) = self.max_bandwidth_busy_mb_sec {
            s.max_bandwidth_busy_mb_sec = r;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"name": "c", "source_bdev": "s", "destination_bdev": "d", "metadata_bdev": "m"})
    }

    #[test]
    fn errors_name_the_parameter() {
        let mut p = base();
        p["region_size_kb"] = json!("x");
        let e = decode::<CreateParams>(Some(p)).unwrap_err();
        assert!(e.starts_with("region_size_kb:"), "{e}");
        let mut p = base();
        p["bogus"] = json!(1);
        assert!(decode::<CreateParams>(Some(p))
            .unwrap_err()
            .contains("bogus"));
        let mut p = base();
        p.as_object_mut().unwrap().remove("metadata_bdev");
        assert!(decode::<CreateParams>(Some(p))
            .unwrap_err()
            .contains("metadata_bdev"));
        assert!(decode::<CreateParams>(Some(json!([1])))
            .unwrap_err()
            .contains("object"));
        assert!(decode::<GetParams>(None).is_ok());
    }

    #[test]
    fn validation() {
        let ok: CreateParams = decode(Some(base())).unwrap();
        assert!(ok.validate().is_ok());
        for (k, v, needle) in [
            ("region_size_kb", json!(48), "power of two"),
            ("region_size_kb", json!(0), "region_size_kb"),
            ("region_size_kb", json!(1 << 20), "region_size_kb"),
            ("hydration_threshold", json!(0), "hydration_threshold"),
            ("hydration_batch_size", json!(5000), "hydration_batch_size"),
            ("commit_interval_ms", json!(0), "commit_interval_ms"),
            ("destination_bdev", json!("s"), "must differ"),
            ("name", json!("m"), "own base"),
            ("name", json!(""), "name"),
        ] {
            let mut p = base();
            p[k] = v;
            let p: CreateParams = decode(Some(p)).unwrap();
            let e = p.validate().unwrap_err();
            assert!(e.contains(needle), "{k}: {e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn decoding_never_panics(s in "\\PC{0,200}") {
            if let Ok(v) = serde_json::from_str::<Value>(&s) {
                if let Ok(p) = decode::<CreateParams>(Some(v.clone())) {
                    let _ = p.validate();
                }
                let _ = decode::<SetHydrationParams>(Some(v));
            }
        }
    }
}
