//! `hydrate`: validates the devices, opens (or creates) the metadata, and
//! drives the engine in a polled loop until every region is hydrated and
//! committed.

use crate::backend::FileBackend;
use crate::dev::{path_identity, FileDev, OpenHow};
use crate::progress::{Progress, ProgressMode};
use crate::uring::Uring;
use anyhow::{anyhow, bail, Result};
use bdev_clone::geometry::Geometry;
use bdev_clone::metadata::{Layout, DEFAULT_PAGE_SIZE};
use bdev_clone::{
    CloneState, Engine, HydrationOrder, Notice, OpenError, OpenParams, Settings,
    DEFAULT_REGION_SIZE,
};
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct HydrateOpts {
    pub source: PathBuf,
    pub dest: PathBuf,
    pub metadata: PathBuf,
    pub region_size: Option<u32>,
    pub block_size: Option<u32>,
    /// MiB/s, 0 = unlimited.
    pub rate: u64,
    pub threshold: u32,
    pub batch: u32,
    pub commit_interval_ms: u64,
    pub format: bool,
    pub direct: bool,
    pub io: IoMode,
    pub progress: ProgressMode,
    pub progress_interval: Duration,
}

/// How requests reach the devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IoMode {
    /// io_uring when the kernel offers it, else synchronous (with a note).
    Auto,
    /// io_uring, or fail.
    Uring,
    /// One synchronous pread/pwrite/fdatasync at a time.
    Sync,
}

pub struct Outcome {
    pub formatted: bool,
    pub regions_total: u64,
    pub regions_at_start: u64,
    pub region_size: u32,
    pub bytes_total: u64,
    pub bytes_copied: u64,
    pub elapsed: Duration,
    pub direct: [bool; 3],
}

/// The run ended on a signal after committing what was hydrated.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted: progress is committed, run the same command again to resume")
    }
}
impl std::error::Error for Interrupted {}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

fn nonce() -> u64 {
    let mut n = 0u64;
    // SAFETY: getrandom writes at most 8 bytes into `n`.
    let r = unsafe { libc::getrandom(&mut n as *mut u64 as *mut libc::c_void, 8, 0) };
    if r != 8 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        n = (t.as_nanos() as u64) ^ ((std::process::id() as u64) << 32);
    }
    n | 1
}

pub fn hydrate(o: &HydrateOpts) -> Result<Outcome> {
    let how = |write| OpenHow {
        write,
        direct: o.direct,
        block_size: o.block_size,
    };
    // Everything is validated before anything is written or created.
    let source = FileDev::open(&o.source, "source", how(false))?;
    let dest = FileDev::open(&o.dest, "destination", how(true))?;
    if source.same_as(&dest) {
        bail!("source and destination are the same file '{}'", dest.shown);
    }
    if source.block_size != dest.block_size {
        bail!(
            "source block size {} differs from destination block size {}",
            source.block_size,
            dest.block_size
        );
    }
    if source.size == 0 {
        bail!("source '{}' is empty", source.shown);
    }
    if dest.size < source.size {
        bail!(
            "destination '{}' ({} bytes) is smaller than the source '{}' ({} bytes)",
            dest.shown,
            dest.size,
            source.shown,
            source.size
        );
    }
    let uring = match o.io {
        IoMode::Sync => None,
        IoMode::Uring => Some(Uring::new().map_err(|e| anyhow!("io_uring is not available: {e}"))?),
        IoMode::Auto => match Uring::new() {
            Ok(u) => Some(u),
            Err(e) => {
                eprintln!(
                    "bdev-clone: note: io_uring is not available ({e}); using synchronous I/O"
                );
                None
            }
        },
    };
    let region_size = o.region_size.unwrap_or(DEFAULT_REGION_SIZE);
    let geometry =
        Geometry::new(source.info(), dest.info(), region_size).map_err(|e| anyhow!("{e}"))?;
    let meta_exists = std::fs::symlink_metadata(&o.metadata).is_ok();
    let mut created = false;
    if !meta_exists {
        // Sized for this geometry (a resumed clone reads its size back).
        let need = Layout::new(512, DEFAULT_PAGE_SIZE, geometry.region_count).total_bytes();
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&o.metadata)
            .map_err(|e| anyhow!("cannot create metadata '{}': {e}", o.metadata.display()))?;
        f.set_len(need)
            .and_then(|_| f.sync_all())
            .map_err(|e| anyhow!("cannot size metadata '{}': {e}", o.metadata.display()))?;
        created = true;
    }
    let remove_created = || {
        if created {
            let _ = std::fs::remove_file(&o.metadata);
        }
    };
    let meta = match FileDev::open(&o.metadata, "metadata", how(true)) {
        Ok(m) => m,
        Err(e) => {
            remove_created();
            return Err(e);
        }
    };
    let result = (|| {
        if meta.same_as(&source) || meta.same_as(&dest) {
            bail!(
                "metadata '{}' is the same file as the source or destination",
                meta.shown
            );
        }
        if !meta.lock(true)? {
            bail!(
                "metadata '{}' is in use by another bdev-clone process",
                meta.shown
            );
        }
        if !dest.lock(true)? {
            bail!(
                "destination '{}' is in use by another bdev-clone process",
                dest.shown
            );
        }
        Ok(())
    })();
    if let Err(e) = result {
        remove_created();
        return Err(e);
    }

    let mut params = OpenParams::new(source.info(), dest.info(), meta.info(), nonce());
    params.region_size = o.region_size;
    params.page_size = DEFAULT_PAGE_SIZE.max(meta.block_size);
    params.format = o.format;
    params.uuid = {
        let n = nonce().to_le_bytes();
        let m = nonce().to_le_bytes();
        let mut u = [0u8; 16];
        u[..8].copy_from_slice(&n);
        u[8..].copy_from_slice(&m);
        u
    };
    params.source_id = path_identity(&source.canonical);
    params.dest_id = path_identity(&dest.canonical);
    params.source_name = source.canonical.display().to_string();
    params.dest_name = dest.canonical.display().to_string();
    params.settings = Settings {
        hydration_enabled: true,
        hydration_threshold: o.threshold.max(1),
        hydration_batch_size: o.batch.max(1),
        max_bandwidth_mb_sec: o.rate,
        // No user I/O runs through the CLI's clone.
        max_bandwidth_busy_mb_sec: 0,
        commit_interval_ms: o.commit_interval_ms,
        discard_passdown: true,
        // No user reads: the sweep alone.
        hydration_order: HydrationOrder::Sequential,
    };
    let direct = [source.direct, dest.direct, meta.direct];
    for (d, on) in [&source, &dest, &meta].iter().zip(direct) {
        if o.direct && !on {
            eprintln!(
                "bdev-clone: note: '{}' does not accept O_DIRECT; using buffered I/O \
                 (flushes still fdatasync)",
                d.shown
            );
        }
    }
    // Enough for every copy in flight plus the metadata's reserve.
    let copy_bytes = o.threshold.max(1) as usize * o.batch.max(1) as usize * region_size as usize;
    params.buffer_cap = (copy_bytes + (4 << 20)).max(bdev_clone::buffers::DEFAULT_CAP);
    let backend = FileBackend::new(source, dest, meta, uring);
    install_signal_handlers();
    let started = Instant::now();
    let mut engine = Engine::open(backend, params);
    let mut progress: Option<Progress> = None;
    let mut opened = None;
    let mut shutting = false;
    let mut interrupted = false;
    let mut failure: Option<String> = None;
    loop {
        let mut worked = false;
        engine
            .backend_mut()
            .reap(false)
            .map_err(|e| anyhow!("io_uring: {e}"))?;
        while let Some((id, r)) = engine.backend_mut().done.pop_front() {
            engine.complete(id, r);
            worked = true;
        }
        let mut stopped = false;
        for n in std::mem::take(&mut engine.backend_mut().notices) {
            match n {
                Notice::Opened(Ok(info)) => {
                    let g = info.geometry;
                    if info.formatted {
                        eprintln!(
                            "bdev-clone: new clone: {} regions of {} KiB, block size {}",
                            g.region_count,
                            g.region_size / 1024,
                            g.block_size
                        );
                    } else {
                        eprintln!(
                            "bdev-clone: resuming: {} of {} regions already hydrated",
                            info.regions_hydrated, g.region_count
                        );
                    }
                    progress = Some(Progress::new(
                        o.progress,
                        o.progress_interval,
                        g.num_blocks * g.block_size as u64,
                    ));
                    opened = Some(info);
                }
                Notice::Opened(Err(e)) => {
                    remove_created();
                    return Err(open_error(e, engine.backend()));
                }
                Notice::Failed(msg) => {
                    let detail = engine.backend_mut().first_error.clone();
                    failure.get_or_insert(match detail {
                        Some(d) => format!("{msg}: {d}"),
                        None => msg,
                    });
                    if !shutting {
                        engine.shutdown();
                        shutting = true;
                    }
                }
                Notice::Stopped => stopped = true,
                Notice::Hydrated | Notice::SourceReleased(_) => {}
            }
        }
        if stopped {
            break;
        }
        if let Some(info) = &opened {
            if !shutting {
                let done = matches!(
                    engine.state(),
                    CloneState::Hydrated | CloneState::SourceReleased
                ) && engine.committed_regions() == info.geometry.region_count;
                if STOP.load(Ordering::SeqCst) {
                    interrupted = true;
                }
                if done || interrupted {
                    engine.shutdown();
                    shutting = true;
                }
            }
            if let Some(p) = &mut progress {
                p.update(&engine.status());
            }
        }
        let started = engine.poll();
        let b = engine.backend_mut();
        if !worked && !started && b.done.is_empty() {
            if b.in_flight() > 0 {
                // Wait for the kernel to finish something (submits what the
                // engine just queued first).
                b.reap(true).map_err(|e| anyhow!("io_uring: {e}"))?;
            } else {
                // Nothing in flight: wait for the rate limiter or the commit
                // timer.
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    }
    let status = engine.status();
    if let Some(p) = &mut progress {
        p.finish(&status, failure.is_none() && !interrupted);
    }
    if let Some(f) = failure {
        bail!("{f}");
    }
    if interrupted {
        return Err(Interrupted.into());
    }
    let info = opened.expect("opened before stopping");
    let g = info.geometry;
    let bytes_total = g.num_blocks * g.block_size as u64;
    Ok(Outcome {
        formatted: info.formatted,
        regions_total: g.region_count,
        regions_at_start: info.regions_hydrated,
        region_size: g.region_size,
        bytes_total,
        bytes_copied: status.stats.bytes_hydrated,
        elapsed: started.elapsed(),
        direct,
    })
}

fn open_error(e: OpenError, b: &FileBackend) -> anyhow::Error {
    let meta = &b.dev(bdev_clone::Dev::Meta).shown;
    match e {
        OpenError::Mismatch(m) => anyhow!(
            "metadata '{meta}': {m}; pass --format to start over with these devices (forgets the \
             hydration progress)"
        ),
        OpenError::Corrupt(m) => anyhow!(
            "metadata '{meta}' is corrupt ({m}); pass --format to start over (forgets the \
             hydration progress)"
        ),
        OpenError::MetaTooSmall { need, have } => {
            anyhow!("metadata '{meta}' is too small: the clone needs {need} bytes, it has {have}")
        }
        OpenError::Io(dev, err) => match &b.first_error {
            Some(d) => anyhow!("{d}"),
            None => anyhow!("{err} on the {dev} device while opening"),
        },
        other => anyhow!("{other}"),
    }
}
