//! RPC parameter decoding and validation over arbitrary JSON text: never a
//! panic; what validates yields settings inside the documented bounds.
#![no_main]

use bdev_clone::params::{
    decode, CreateParams, GetParams, NameParams, SetHydrationParams, MAX_BATCH,
    MAX_COMMIT_INTERVAL_MS, MAX_THRESHOLD,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return;
    };
    if let Ok(p) = decode::<CreateParams>(Some(v.clone())) {
        if p.validate().is_ok() {
            let s = p.settings(true);
            assert!((1..=MAX_THRESHOLD).contains(&s.hydration_threshold));
            assert!((1..=MAX_BATCH).contains(&s.hydration_batch_size));
            assert!((1..=MAX_COMMIT_INTERVAL_MS).contains(&s.commit_interval_ms));
            assert!(!p.name.is_empty() && !p.name.contains('\0'));
            assert!(p.source_bdev != p.destination_bdev && p.destination_bdev != p.metadata_bdev);
        }
    }
    if let Ok(p) = decode::<SetHydrationParams>(Some(v.clone())) {
        if p.validate().is_ok() {
            let s = p.apply(Default::default());
            assert!((1..=MAX_THRESHOLD).contains(&s.hydration_threshold));
        }
    }
    let _ = decode::<GetParams>(Some(v.clone()));
    let _ = decode::<NameParams>(Some(v));
});
