//! The JSON-RPC parameters of bdev_clone's methods and their validation,
//! independent of SPDK (so that they can be fuzzed and tested anywhere).
//! Names are fixed by DESIGN.md.

use crate::engine::{HydrationOrder, Settings};
use crate::geometry::MAX_REGION_SIZE;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const MAX_THRESHOLD: u32 = 4096;
pub const MAX_BATCH: u32 = 1024;
pub const MAX_COMMIT_INTERVAL_MS: u64 = 3_600_000;
/// The superblock stores the clone's name (see `metadata::CLONE_NAME_LEN`).
pub const MAX_NAME_LEN: usize = crate::metadata::CLONE_NAME_LEN;

/// `bdev_clone_create`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
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
    /// `sequential` or `hot_first` (an unknown word is refused by decode).
    pub hydration_order: Option<HydrationOrder>,
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
    pub commit_interval_ms: Option<u64>,
    pub hydration_order: Option<HydrationOrder>,
}

/// `bdev_clone_set_options`: the module's options.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SetOptionsParams {
    /// Assemble clones from the metadata found on new bdevs (examine).
    pub auto_examine: Option<bool>,
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

pub fn validate_commit_interval(ms: Option<u64>) -> Result<(), String> {
    if let Some(ms) = ms {
        if ms == 0 || ms > MAX_COMMIT_INTERVAL_MS {
            return Err(format!(
                "commit_interval_ms must be 1..={MAX_COMMIT_INTERVAL_MS}, got {ms}"
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
        validate_commit_interval(self.commit_interval_ms)
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
            hydration_order: self.hydration_order.unwrap_or(d.hydration_order),
        }
    }
}

impl CreateParams {
    /// The run-time settings this create asks for, as a set_hydration of
    /// them: what it leaves out stays. (A create of a clone that examine
    /// already assembled.)
    pub fn as_set_hydration(&self) -> SetHydrationParams {
        SetHydrationParams {
            name: self.name.clone(),
            enabled: Some(!self.no_hydration),
            hydration_threshold: self.hydration_threshold,
            hydration_batch_size: self.hydration_batch_size,
            max_bandwidth_mb_sec: self.max_bandwidth_mb_sec,
            max_bandwidth_busy_mb_sec: self.max_bandwidth_busy_mb_sec,
            commit_interval_ms: self.commit_interval_ms,
            hydration_order: self.hydration_order,
        }
    }
}

impl SetHydrationParams {
    pub fn validate(&self) -> Result<(), String> {
        validate_hydration(self.hydration_threshold, self.hydration_batch_size)?;
        validate_commit_interval(self.commit_interval_ms)
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
        if let Some(ms) = self.commit_interval_ms {
            s.commit_interval_ms = ms;
        }
        if let Some(o) = self.hydration_order {
            s.hydration_order = o;
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

    #[test]
    fn hydration_order_and_commit_interval() {
        let mut p = base();
        p["hydration_order"] = json!("sequential");
        let c: CreateParams = decode(Some(p)).unwrap();
        assert_eq!(c.settings(true).hydration_order, HydrationOrder::Sequential);
        let c: CreateParams = decode(Some(base())).unwrap();
        assert_eq!(
            c.settings(true).hydration_order,
            Settings::default().hydration_order
        );
        let mut p = base();
        p["hydration_order"] = json!("hot-first");
        let e = decode::<CreateParams>(Some(p)).unwrap_err();
        assert!(
            e.starts_with("hydration_order:") && e.contains("hot_first"),
            "{e}"
        );

        let set = |v: Value| decode::<SetHydrationParams>(Some(v));
        let p =
            set(json!({"name": "c", "hydration_order": "hot_first", "commit_interval_ms": 250}))
                .unwrap();
        p.validate().unwrap();
        let before = Settings {
            hydration_order: HydrationOrder::Sequential,
            ..Default::default()
        };
        let after = p.apply(before.clone());
        assert_eq!(after.hydration_order, HydrationOrder::HotFirst);
        assert_eq!(after.commit_interval_ms, 250);
        assert_eq!(
            Settings {
                hydration_order: before.hydration_order,
                commit_interval_ms: before.commit_interval_ms,
                ..after
            },
            before,
            "nothing else changes"
        );
        // Absent: unchanged.
        let p = set(json!({"name": "c"})).unwrap();
        assert_eq!(p.apply(before.clone()), before);
        for bad in [json!(0), json!(MAX_COMMIT_INTERVAL_MS + 1)] {
            let e = set(json!({"name": "c", "commit_interval_ms": bad}))
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(e.contains("commit_interval_ms"), "{e}");
        }
        let e = set(json!({"name": "c", "hydration_order": 1})).unwrap_err();
        assert!(e.starts_with("hydration_order:"), "{e}");
    }

    mod generated {
        //! Structured JSON objects with the real parameter names (and
        //! unknown ones), values of every JSON type and the edge numbers, and
        //! what decode and validate must make of them.

        use super::super::*;
        use proptest::prelude::*;
        use serde_json::{Map, Number};

        /// What a parameter must be for decode to accept it.
        #[derive(Clone, Copy, Debug, PartialEq)]
        enum Kind {
            Str,
            OptStr,
            U32,
            U64,
            /// `#[serde(default)] bool`: absent is false, null is an error.
            Flag,
            OptBool,
            /// `sequential` or `hot_first`, or null.
            OptOrder,
        }

        const CREATE: &[(&str, Kind, bool)] = &[
            ("name", Kind::Str, true),
            ("source_bdev", Kind::Str, true),
            ("destination_bdev", Kind::Str, true),
            ("metadata_bdev", Kind::Str, true),
            ("region_size_kb", Kind::U32, false),
            ("uuid", Kind::OptStr, false),
            ("no_hydration", Kind::Flag, false),
            ("hydration_threshold", Kind::U32, false),
            ("hydration_batch_size", Kind::U32, false),
            ("max_bandwidth_mb_sec", Kind::U64, false),
            ("max_bandwidth_busy_mb_sec", Kind::U64, false),
            ("commit_interval_ms", Kind::U64, false),
            ("hydration_order", Kind::OptOrder, false),
            ("no_discard_passdown", Kind::Flag, false),
            ("format", Kind::Flag, false),
            ("allow_unflushed_destination", Kind::Flag, false),
            ("wait_for_bases", Kind::Flag, false),
            ("source_released", Kind::Flag, false),
        ];

        const SET_HYDRATION: &[(&str, Kind, bool)] = &[
            ("name", Kind::Str, true),
            ("enabled", Kind::OptBool, false),
            ("hydration_threshold", Kind::U32, false),
            ("hydration_batch_size", Kind::U32, false),
            ("max_bandwidth_mb_sec", Kind::U64, false),
            ("max_bandwidth_busy_mb_sec", Kind::U64, false),
            ("commit_interval_ms", Kind::U64, false),
            ("hydration_order", Kind::OptOrder, false),
        ];

        fn fits(kind: Kind, v: &Value) -> bool {
            match kind {
                Kind::Str => v.is_string(),
                Kind::OptStr => v.is_null() || v.is_string(),
                Kind::U32 => v.is_null() || v.as_u64().is_some_and(|n| n <= u32::MAX as u64),
                Kind::U64 => v.is_null() || v.as_u64().is_some(),
                Kind::Flag => v.is_boolean(),
                Kind::OptBool => v.is_null() || v.is_boolean(),
                Kind::OptOrder => v.is_null() || v.as_str().is_some_and(|s| ORDERS.contains(&s)),
            }
        }

        const ORDERS: [&str; 2] = ["sequential", "hot_first"];

        /// Words for `hydration_order`: the two it takes, and near misses.
        fn order_word() -> impl Strategy<Value = Value> {
            prop_oneof![
                4 => proptest::sample::select(ORDERS.to_vec()).prop_map(Value::from),
                1 => proptest::sample::select(vec!["", "Sequential", "hot-first", "hotfirst", "random"])
                    .prop_map(Value::from),
            ]
        }

        /// Numbers that decode as u32: small ones, powers of two and the
        /// documented bounds with one either side.
        fn bound_number() -> impl Strategy<Value = u64> {
            let bounds = [
                1,
                MAX_THRESHOLD as u64,
                MAX_BATCH as u64,
                MAX_COMMIT_INTERVAL_MS,
                (MAX_REGION_SIZE / 1024) as u64,
            ];
            let near: Vec<u64> = bounds.iter().flat_map(|&b| [b - 1, b, b + 1]).collect();
            prop_oneof![
                2 => 1u64..=64,
                3 => proptest::sample::select(near),
                1 => (0u32..32).prop_map(|k| 1u64 << k),
                1 => any::<u32>().prop_map(u64::from),
            ]
        }

        /// Any JSON number, the edges for decoders included: 0, negatives,
        /// u32::MAX and beyond, u64::MAX, floats, huge.
        fn edge_number() -> impl Strategy<Value = Value> {
            let extremes = vec![
                u32::MAX as u64 - 1,
                u32::MAX as u64,
                u32::MAX as u64 + 1,
                i64::MAX as u64,
                i64::MAX as u64 + 1,
                u64::MAX,
            ];
            prop_oneof![
                6 => bound_number().prop_map(Value::from),
                2 => proptest::sample::select(extremes).prop_map(Value::from),
                1 => any::<u64>().prop_map(Value::from),
                1 => prop_oneof![Just(-1i64), Just(i64::MIN), any::<i64>()].prop_map(Value::from),
                1 => prop_oneof![
                    Just(0.5f64),
                    Just(4.0),
                    Just(-0.0),
                    Just(1e300),
                    Just(18446744073709551616.0), // u64::MAX + 1
                    any::<f64>(),
                ]
                .prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ]
        }

        /// Names from a small set (so that they collide), with the edges:
        /// empty, NUL, too long, not ASCII.
        fn name() -> impl Strategy<Value = String> {
            prop_oneof![
                8 => proptest::sample::select(vec!["c", "s", "d", "m", "c0", "Malloc0", "Nvme0n1", "l/v"])
                    .prop_map(String::from),
                1 => Just(String::new()),
                1 => Just("a\0b".to_string()),
                1 => Just("x".repeat(MAX_NAME_LEN)),
                1 => Just("x".repeat(MAX_NAME_LEN + 1)),
                1 => "\\PC{0,12}",
            ]
        }

        fn any_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                edge_number(),
                name().prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 16, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    prop::collection::btree_map("[a-z_]{0,8}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// A value for a parameter of `kind`: mostly of its type, sometimes
        /// null, sometimes anything at all; only of its type if `typed`.
        fn value_for(kind: Kind, typed: bool) -> BoxedStrategy<Value> {
            let good = match kind {
                Kind::Str | Kind::OptStr => name().prop_map(Value::from).boxed(),
                Kind::U32 | Kind::U64 if typed => bound_number().prop_map(Value::from).boxed(),
                Kind::U32 | Kind::U64 => edge_number().boxed(),
                Kind::Flag | Kind::OptBool => any::<bool>().prop_map(Value::from).boxed(),
                Kind::OptOrder if typed => proptest::sample::select(ORDERS.to_vec())
                    .prop_map(Value::from)
                    .boxed(),
                Kind::OptOrder => order_word().boxed(),
            };
            if typed {
                return good;
            }
            prop_oneof![20 => good, 1 => Just(Value::Null), 1 => any_json()].boxed()
        }

        /// Objects with each of `fields` present or not (required ones
        /// mostly present) and, now and then, unknown keys: half of them
        /// with values of any type, half with every required field and
        /// values of the right types, to reach validate often.
        fn object(fields: &'static [(&'static str, Kind, bool)]) -> BoxedStrategy<Value> {
            prop_oneof![object_of(fields, false), object_of(fields, true)].boxed()
        }

        fn object_of(
            fields: &'static [(&'static str, Kind, bool)],
            typed: bool,
        ) -> BoxedStrategy<Value> {
            let each: Vec<_> = fields
                .iter()
                .map(|&(_, kind, required)| match (required, typed) {
                    (true, true) => value_for(kind, typed).prop_map(Some).boxed(),
                    (true, false) => {
                        proptest::option::weighted(0.95, value_for(kind, typed)).boxed()
                    }
                    (false, _) => proptest::option::weighted(0.4, value_for(kind, typed)).boxed(),
                })
                .collect();
            let extra = prop::collection::vec(
                (
                    prop_oneof![
                        Just("enabled".to_string()),
                        Just("format".to_string()),
                        Just("Name".to_string()),
                        Just(String::new()),
                        "[a-z_]{1,12}",
                    ],
                    any_json(),
                ),
                0..3,
            );
            let extra = if typed {
                Just(None).boxed()
            } else {
                proptest::option::weighted(0.1, extra).boxed()
            };
            (each, extra)
                .prop_map(move |(values, extra)| {
                    let mut m = Map::new();
                    for ((k, _, _), v) in fields.iter().zip(values) {
                        if let Some(v) = v {
                            m.insert(k.to_string(), v);
                        }
                    }
                    for (k, v) in extra.into_iter().flatten() {
                        m.entry(k).or_insert(v);
                    }
                    Value::Object(m)
                })
                .boxed()
        }

        /// Checks decode's verdict on `obj` against `fields`: it succeeds
        /// exactly when nothing is wrong, and its error names one thing
        /// that is: a parameter of the wrong type (as `name: ...`), an
        /// unknown parameter, a missing one.
        fn check_decode<T: DeserializeOwned>(
            fields: &[(&str, Kind, bool)],
            obj: &Value,
        ) -> Result<Option<T>, TestCaseError> {
            let m = obj.as_object().unwrap();
            let mut wrong = Vec::new();
            for (k, v) in m {
                match fields.iter().find(|(f, _, _)| f == k) {
                    None => wrong.push(format!("unknown field `{k}`")),
                    Some(&(_, kind, _)) if !fits(kind, v) => wrong.push(format!("{k}: ")),
                    Some(_) => {}
                }
            }
            for (f, _, required) in fields {
                if *required && !m.contains_key(*f) {
                    wrong.push(format!("missing field `{f}`"));
                }
            }
            match decode::<T>(Some(obj.clone())) {
                Ok(p) => {
                    prop_assert!(wrong.is_empty(), "decoded despite {wrong:?}: {obj}");
                    Ok(Some(p))
                }
                Err(e) => {
                    prop_assert!(!wrong.is_empty(), "refused a good object ({e}): {obj}");
                    prop_assert!(
                        wrong.iter().any(|w| if w.ends_with(": ") {
                            e.starts_with(w.as_str())
                        } else {
                            e.contains(w.as_str())
                        }),
                        "error {e:?} names none of {wrong:?}"
                    );
                    Ok(None)
                }
            }
        }

        /// What is out of its documented range, each with what the error
        /// must then say.
        fn create_violations(p: &CreateParams) -> Vec<&'static str> {
            let mut v = Vec::new();
            if p.name.is_empty() || p.name.len() > MAX_NAME_LEN || p.name.contains('\0') {
                v.push("name");
            }
            let bases = [&p.source_bdev, &p.destination_bdev, &p.metadata_bdev];
            if bases[0] == bases[1] || bases[0] == bases[2] || bases[1] == bases[2] {
                v.push("must differ");
            }
            if bases.contains(&&p.name) {
                v.push("own base bdev");
            }
            if p.region_size_kb.is_some_and(|r| {
                r == 0 || !r.is_power_of_two() || r as u64 * 1024 > MAX_REGION_SIZE as u64
            }) {
                v.push("region_size_kb");
            }
            v.extend(hydration_violations(
                p.hydration_threshold,
                p.hydration_batch_size,
            ));
            if p.format && p.source_released {
                v.push("source_released");
            }
            if p.commit_interval_ms
                .is_some_and(|ms| ms == 0 || ms > MAX_COMMIT_INTERVAL_MS)
            {
                v.push("commit_interval_ms");
            }
            v
        }

        fn hydration_violations(t: Option<u32>, b: Option<u32>) -> Vec<&'static str> {
            let mut v = Vec::new();
            if t.is_some_and(|t| t == 0 || t > MAX_THRESHOLD) {
                v.push("hydration_threshold");
            }
            if b.is_some_and(|b| b == 0 || b > MAX_BATCH) {
                v.push("hydration_batch_size");
            }
            v
        }

        /// validate() accepts exactly what is in range, and its error says
        /// what is not.
        fn check_validate(
            r: Result<(), String>,
            violations: &[&str],
        ) -> Result<bool, TestCaseError> {
            match r {
                Ok(()) => {
                    prop_assert!(violations.is_empty(), "accepted despite {violations:?}");
                    Ok(true)
                }
                Err(e) => {
                    prop_assert!(!violations.is_empty(), "refused valid parameters: {e}");
                    prop_assert!(
                        violations.iter().any(|v| e.contains(v)),
                        "error {e:?} names none of {violations:?}"
                    );
                    Ok(false)
                }
            }
        }

        fn check_settings(s: &Settings) -> Result<(), TestCaseError> {
            prop_assert!((1..=MAX_THRESHOLD).contains(&s.hydration_threshold));
            prop_assert!((1..=MAX_BATCH).contains(&s.hydration_batch_size));
            prop_assert!((1..=MAX_COMMIT_INTERVAL_MS).contains(&s.commit_interval_ms));
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(5000))]

            #[test]
            fn create_params(obj in object(CREATE)) {
                let Some(p) = check_decode::<CreateParams>(CREATE, &obj)? else {
                    return Ok(());
                };
                // Decoding keeps every value it was given.
                for (k, v) in obj.as_object().unwrap() {
                    let got = serde_json::to_value(match k.as_str() {
                        "name" => Value::from(p.name.clone()),
                        "source_bdev" => Value::from(p.source_bdev.clone()),
                        "destination_bdev" => Value::from(p.destination_bdev.clone()),
                        "metadata_bdev" => Value::from(p.metadata_bdev.clone()),
                        "region_size_kb" => p.region_size_kb.into(),
                        "uuid" => p.uuid.clone().into(),
                        "no_hydration" => p.no_hydration.into(),
                        "hydration_threshold" => p.hydration_threshold.into(),
                        "hydration_batch_size" => p.hydration_batch_size.into(),
                        "max_bandwidth_mb_sec" => p.max_bandwidth_mb_sec.into(),
                        "max_bandwidth_busy_mb_sec" => p.max_bandwidth_busy_mb_sec.into(),
                        "commit_interval_ms" => p.commit_interval_ms.into(),
                        "hydration_order" => serde_json::to_value(p.hydration_order).unwrap(),
                        "no_discard_passdown" => p.no_discard_passdown.into(),
                        "format" => p.format.into(),
                        "allow_unflushed_destination" => p.allow_unflushed_destination.into(),
                        "wait_for_bases" => p.wait_for_bases.into(),
                        "source_released" => p.source_released.into(),
                        other => return Err(TestCaseError::fail(format!("decoded {other}"))),
                    }).unwrap();
                    prop_assert_eq!(&got, v, "{} decoded", k);
                }
                if check_validate(p.validate(), &create_violations(&p))? {
                    prop_assert!(!p.name.is_empty() && p.name.len() <= MAX_NAME_LEN);
                    prop_assert!(!p.name.contains('\0'));
                    let mut names = [&p.name, &p.source_bdev, &p.destination_bdev, &p.metadata_bdev];
                    names.sort();
                    prop_assert!(names.windows(2).all(|w| w[0] != w[1]), "names {names:?}");
                    if let Some(r) = p.region_size_kb {
                        prop_assert!(r.is_power_of_two() && r <= MAX_REGION_SIZE / 1024);
                    }
                    prop_assert!(!(p.format && p.source_released));
                    let s = p.settings(!p.no_discard_passdown);
                    check_settings(&s)?;
                    prop_assert_eq!(s.hydration_enabled, !p.no_hydration);
                    prop_assert_eq!(
                        s.hydration_order,
                        p.hydration_order.unwrap_or(Settings::default().hydration_order)
                    );
                }
            }

            #[test]
            fn set_hydration_params(obj in object(SET_HYDRATION)) {
                let Some(p) = check_decode::<SetHydrationParams>(SET_HYDRATION, &obj)? else {
                    return Ok(());
                };
                let mut violations = hydration_violations(p.hydration_threshold, p.hydration_batch_size);
                if p.commit_interval_ms.is_some_and(|ms| ms == 0 || ms > MAX_COMMIT_INTERVAL_MS) {
                    violations.push("commit_interval_ms");
                }
                if check_validate(p.validate(), &violations)? {
                    let d = Settings::default();
                    let s = p.apply(d.clone());
                    check_settings(&s)?;
                    prop_assert_eq!(s.hydration_threshold, p.hydration_threshold.unwrap_or(32));
                    prop_assert_eq!(s.hydration_enabled, p.enabled.unwrap_or(true));
                    prop_assert_eq!(s.commit_interval_ms, p.commit_interval_ms.unwrap_or(d.commit_interval_ms));
                    prop_assert_eq!(s.hydration_order, p.hydration_order.unwrap_or(d.hydration_order));
                }
            }

            /// Anything at all as params (arrays, numbers, null, nested):
            /// decode and validate return, never panic.
            #[test]
            fn decoding_anything_returns(v in any_json()) {
                if let Ok(p) = decode::<CreateParams>(Some(v.clone())) {
                    let _ = p.validate();
                }
                if let Ok(p) = decode::<SetHydrationParams>(Some(v.clone())) {
                    let _ = p.validate();
                }
                let is_object = v.is_object();
                if let Err(e) = decode::<GetParams>(Some(v)) {
                    prop_assert!(is_object || e.contains("object"), "{}", e);
                }
            }
        }
    }
}
