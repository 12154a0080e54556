//! What the clone shows: `bdev_clone_get_clones` and `bdev_get_bdevs`
//! (dump_info_json), and what recreates it (`save_config`).

use crate::channel::IoDevice;
use crate::ffi;
use crate::vbdev::CloneBdev;
use bdev_clone::CloneState;
use serde_json::{json, Value};
use spdk_sys as sys;
use std::ffi::{c_int, c_void, CStr};

impl CloneBdev {
    pub fn info(&self) -> Value {
        let s = self.engine().status();
        let g = s.geometry;
        let p = &self.params;
        json!({
            "name": p.name,
            "uuid": uuid_string(&self.uuid),
            "source_bdev": p.source_bdev,
            "destination_bdev": p.destination_bdev,
            "metadata_bdev": p.metadata_bdev,
            "region_size_kb": g.region_size / 1024,
            "block_size": g.block_size,
            "num_blocks": g.num_blocks,
            "regions_total": s.regions_total,
            "regions_hydrated": s.stats.regions_hydrated,
            "regions_committed": self.engine().committed_regions(),
            "regions_hydrating": s.stats.regions_hydrating,
            "percent": (s.percent() * 100.0).round() / 100.0,
            "rate_mb_sec": s.stats.rate_bytes_sec as f64 / (1024.0 * 1024.0),
            "eta_sec": s.eta_sec,
            "hydration_seconds": (s.stats.hydration_ns / 1_000) as f64 / 1e6,
            "state": s.state.as_str(),
            "error": s.error,
            "hydration_errors": s.stats.hydration_errors,
            "regions_hydrated_hot": s.stats.regions_hydrated_hot,
            "user_reads_from_source": s.stats.user_reads_from_source,
            "user_reads_from_destination": s.stats.user_reads_from_destination,
            "commits": s.stats.commits,
            "metadata_bytes_written": s.stats.meta_bytes_written,
            "memory_bytes": self.engine().memory_bytes(),
            "destination_write_cache": self.dest_write_cache,
            "destination_flush_sent": self.dest_flush_sent,
            "destination_flush_path": self.flush_checks[0].as_ref().map(|c| c.path.clone()),
            "destination_flush_check": self.flush_checks[0].as_ref().map(|c| c.describe()),
            "metadata_flush_path": self.flush_checks[1].as_ref().map(|c| c.path.clone()),
            "metadata_flush_check": self.flush_checks[1].as_ref().map(|c| c.describe()),
            "hydration_enabled": s.settings.hydration_enabled,
            "hydration_threshold": s.settings.hydration_threshold,
            "hydration_batch_size": s.settings.hydration_batch_size,
            "max_bandwidth_mb_sec": s.settings.max_bandwidth_mb_sec,
            "max_bandwidth_busy_mb_sec": s.settings.max_bandwidth_busy_mb_sec,
            "commit_interval_ms": s.settings.commit_interval_ms,
            "discard_passdown": s.settings.discard_passdown,
            "hydration_order": s.settings.hydration_order.as_str(),
        })
    }

    /// The `bdev_clone_create` call that recreates this clone (and resumes it).
    pub fn config(&self) -> Value {
        let s = self.engine().settings();
        let p = &self.params;
        json!({
            "method": "bdev_clone_create",
            "params": {
                "name": p.name,
                "source_bdev": p.source_bdev,
                "destination_bdev": p.destination_bdev,
                "metadata_bdev": p.metadata_bdev,
                "region_size_kb": self.engine().geometry().region_size / 1024,
                "uuid": uuid_string(&self.uuid),
                "no_hydration": !s.hydration_enabled,
                "hydration_threshold": s.hydration_threshold,
                "hydration_batch_size": s.hydration_batch_size,
                "max_bandwidth_mb_sec": s.max_bandwidth_mb_sec,
                "max_bandwidth_busy_mb_sec": s.max_bandwidth_busy_mb_sec,
                "commit_interval_ms": s.commit_interval_ms,
                "hydration_order": s.hydration_order.as_str(),
                "no_discard_passdown": p.no_discard_passdown,
                "allow_unflushed_destination": p.allow_unflushed_destination,
                "wait_for_bases": true,
                "source_released": self.engine().state() == CloneState::SourceReleased,
            }
        })
    }
}

pub(crate) unsafe extern "C" fn fn_dump_info_json(
    ctx: *mut c_void,
    w: *mut sys::spdk_json_write_ctx,
) -> c_int {
    ffi::guard("dump_info_json", 0, || {
        // SAFETY: ctxt is the live clone; w is SPDK's writer inside an object.
        unsafe {
            let c = &*(*(ctx as *const IoDevice)).clone;
            sys::spdk_json_write_name(w, c"clone".as_ptr());
            ffi::write_value(w, &c.info());
        }
        0
    })
}

pub(crate) fn uuid_string(u: &sys::spdk_uuid) -> String {
    let mut buf = [0 as std::ffi::c_char; 37];
    // SAFETY: a 37-byte buffer is what spdk_uuid_fmt_lower needs.
    unsafe { sys::spdk_uuid_fmt_lower(buf.as_mut_ptr(), buf.len(), u) };
    // SAFETY: NUL-terminated by spdk_uuid_fmt_lower.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}
