//! `status`, `check` and `demo`.

use crate::dev::{path_identity, FileDev, OpenHow};
use crate::hydrate::{hydrate, HydrateOpts};
use crate::meta::{self, MetaReport, SlotState};
use crate::progress::{human_duration, mib, ProgressMode};
use anyhow::{bail, Context, Result};
use bdev_clone::metadata::{SbError, Superblock};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn slot_text(s: &Result<Superblock, SbError>) -> String {
    match s {
        Ok(sb) => format!("valid (seq {})", sb.seq),
        Err(SbError::Blank) => "blank".into(),
        Err(e) => format!("damaged: {e}"),
    }
}

pub fn status_json(r: &MetaReport) -> serde_json::Value {
    let sb = &r.sb;
    let bs = sb.block_size as u64;
    let bytes_total = sb.source_blocks * bs;
    let bytes_hydrated = (r.hydrated * sb.region_size as u64).min(bytes_total);
    json!({
        "metadata": r.path,
        "state": r.state(),
        "running": r.running,
        "regions_total": sb.region_count,
        "regions_hydrated": r.hydrated,
        "percent": if sb.region_count == 0 { 100.0 } else {
            r.hydrated as f64 * 100.0 / sb.region_count as f64
        },
        "bytes_total": bytes_total,
        "bytes_hydrated": bytes_hydrated,
        "region_size": sb.region_size,
        "block_size": sb.block_size,
        "source_blocks": sb.source_blocks,
        "dest_blocks": sb.dest_blocks,
        "source": sb.source_name,
        "destination": sb.dest_name,
        "source_released": sb.source_released(),
        "uuid": hex(&sb.uuid),
        "seq": sb.seq,
        "page_size": sb.page_size,
        "page_count": sb.page_count,
        "superblock_slot": r.sb_slot,
        "superblock_slots": r.sb_slots.iter().map(slot_text).collect::<Vec<_>>(),
        "problems": r.problems,
    })
}

pub fn status(metadata: &Path, as_json: bool) -> Result<()> {
    let r = meta::read(metadata)?;
    let mut out = std::io::stdout().lock();
    if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(&status_json(&r))?)?;
        return Ok(());
    }
    print_status(&r, &mut out)?;
    Ok(())
}

pub fn print_status(r: &MetaReport, out: &mut impl Write) -> Result<()> {
    let sb = &r.sb;
    let bs = sb.block_size as u64;
    let total = sb.source_blocks * bs;
    let done = (r.hydrated * sb.region_size as u64).min(total);
    let pct = if sb.region_count == 0 {
        100.0
    } else {
        r.hydrated as f64 * 100.0 / sb.region_count as f64
    };
    writeln!(out, "metadata:    {}", r.path)?;
    writeln!(
        out,
        "state:       {}{}",
        r.state(),
        if r.running {
            " (a bdev-clone process is running on it)"
        } else {
            ""
        }
    )?;
    writeln!(
        out,
        "progress:    {} of {} regions ({pct:.1}%), {:.1} of {:.1} MiB",
        r.hydrated,
        sb.region_count,
        mib(done),
        mib(total)
    )?;
    writeln!(
        out,
        "geometry:    region {} KiB, block {} B, source {} blocks, destination {} blocks",
        sb.region_size / 1024,
        sb.block_size,
        sb.source_blocks,
        sb.dest_blocks
    )?;
    writeln!(out, "source:      {}", sb.source_name)?;
    writeln!(out, "destination: {}", sb.dest_name)?;
    writeln!(
        out,
        "superblock:  slot 0 {}, slot 1 {}; using slot {} (seq {})",
        slot_text(&r.sb_slots[0]),
        slot_text(&r.sb_slots[1]),
        r.sb_slot,
        sb.seq
    )?;
    writeln!(out, "uuid:        {}", hex(&sb.uuid))?;
    for p in &r.problems {
        writeln!(out, "problem:     {p}")?;
    }
    Ok(())
}

/// Validates the metadata and, with the devices, every hydrated region.
/// Returns whether everything is clean.
pub fn check(metadata: &Path, source: Option<&Path>, dest: Option<&Path>) -> Result<bool> {
    let r = meta::read(metadata)?;
    let mut problems = r.problems.clone();
    let sb = &r.sb;
    println!(
        "metadata '{}': superblock slot 0 {}, slot 1 {}; newest is slot {} (seq {})",
        r.path,
        slot_text(&r.sb_slots[0]),
        slot_text(&r.sb_slots[1]),
        r.sb_slot,
        sb.seq
    );
    let pages_ok = r
        .page_slots
        .iter()
        .filter(|s| !s.iter().any(|x| matches!(x, SlotState::Bad(_))))
        .count();
    println!(
        "bitmap: {pages_ok} of {} pages intact; {} of {} regions hydrated",
        sb.page_count, r.hydrated, sb.region_count
    );
    if r.running {
        println!("note: a bdev-clone process is running on this metadata");
    }
    if let (Some(s), Some(d)) = (source, dest) {
        verify_data(&r, s, d, &mut problems)?;
    }
    for p in &problems {
        println!("problem: {p}");
    }
    if problems.is_empty() {
        println!("clean");
        Ok(true)
    } else {
        println!("NOT clean: {} problem(s)", problems.len());
        Ok(false)
    }
}

fn verify_data(r: &MetaReport, s: &Path, d: &Path, problems: &mut Vec<String>) -> Result<()> {
    let sb = &r.sb;
    let how = OpenHow {
        write: false,
        direct: false,
        block_size: Some(sb.block_size),
    };
    let source = FileDev::open(s, "source", how)?;
    let dest = FileDev::open(d, "destination", how)?;
    let bs = sb.block_size as u64;
    let clone_bytes = sb.source_blocks * bs;
    for (dev, id) in [(&source, &sb.source_id), (&dest, &sb.dest_id)] {
        if id.iter().any(|&b| b != 0) && path_identity(&dev.canonical) != *id {
            println!(
                "note: the metadata was made for '{}', checking '{}'",
                if std::ptr::eq(dev, &source) {
                    &sb.source_name
                } else {
                    &sb.dest_name
                },
                dev.canonical.display()
            );
        }
    }
    if source.size != clone_bytes {
        problems.push(format!(
            "source '{}' is {} bytes, the metadata describes {clone_bytes}",
            source.shown, source.size
        ));
        return Ok(());
    }
    if dest.size < clone_bytes {
        problems.push(format!(
            "destination '{}' is {} bytes, smaller than the clone ({clone_bytes})",
            dest.shown, dest.size
        ));
        return Ok(());
    }
    let rs = sb.region_size as u64;
    let per_chunk = ((8u64 << 20) / rs).max(1);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut bad = Vec::new();
    let mut checked = 0u64;
    let mut region = 0u64;
    let started = Instant::now();
    while region < sb.region_count {
        if !r.is_hydrated(region) {
            region += 1;
            continue;
        }
        let first = region;
        while region < sb.region_count && region - first < per_chunk && r.is_hydrated(region) {
            region += 1;
        }
        let start = first * rs;
        let end = (region * rs).min(clone_bytes);
        let len = (end - start) as usize;
        a.resize(len, 0);
        b.resize(len, 0);
        source
            .read_at(&mut a, start)
            .with_context(|| format!("reading source '{}'", source.shown))?;
        dest.read_at(&mut b, start)
            .with_context(|| format!("reading destination '{}'", dest.shown))?;
        if a != b {
            for (i, (x, y)) in a.chunks(rs as usize).zip(b.chunks(rs as usize)).enumerate() {
                if x != y {
                    bad.push(first + i as u64);
                }
            }
        }
        checked += region - first;
    }
    println!(
        "data: {checked} hydrated regions ({:.1} MiB) compared with the source in {:.1}s: {}",
        mib((checked * rs).min(clone_bytes)),
        started.elapsed().as_secs_f64(),
        if bad.is_empty() {
            "all match".to_string()
        } else {
            format!("{} differ", bad.len())
        }
    );
    if !bad.is_empty() {
        let list: Vec<String> = bad.iter().take(10).map(|x| x.to_string()).collect();
        problems.push(format!(
            "{} region(s) marked hydrated differ from the source (first: {}{})",
            bad.len(),
            list.join(", "),
            if bad.len() > 10 { ", ..." } else { "" }
        ));
    }
    Ok(())
}

/// The demo's source content: a deterministic, non-zero pattern that differs
/// in every 8 bytes.
pub fn pattern(offset: u64, buf: &mut [u8]) {
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let mut z = (offset / 8 + i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let bytes = (z | 1).to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

pub struct DemoOpts {
    pub dir: Option<PathBuf>,
    pub size_mib: u64,
    pub rate: u64,
    pub keep: bool,
    pub progress: ProgressMode,
    pub direct: bool,
}

pub fn demo(o: &DemoOpts) -> Result<bool> {
    if o.size_mib == 0 {
        bail!("--size-mib must be at least 1");
    }
    let (dir, temporary) = match &o.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("bdev-clone-demo-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating '{}'", dir.display()))?;
    let src = dir.join("source.img");
    let dst = dir.join("dest.img");
    let md = dir.join("clone.meta");
    for p in [&src, &dst, &md] {
        if p.exists() {
            bail!(
                "'{}' already exists; the demo needs a fresh directory",
                p.display()
            );
        }
    }
    let size = o.size_mib << 20;
    println!(
        "demo: writing a {} MiB sample source image {}",
        o.size_mib,
        src.display()
    );
    let t = Instant::now();
    {
        let f = std::fs::File::create(&src)?;
        let mut buf = vec![0u8; 4 << 20];
        let mut at = 0u64;
        while at < size {
            let n = (size - at).min(buf.len() as u64) as usize;
            pattern(at, &mut buf[..n]);
            std::os::unix::fs::FileExt::write_all_at(&f, &buf[..n], at)?;
            at += n as u64;
        }
        f.sync_all()?;
    }
    println!(
        "demo: wrote it in {:.1}s; destination {} is an empty (sparse) file of the same size",
        t.elapsed().as_secs_f64(),
        dst.display()
    );
    std::fs::File::create(&dst)?.set_len(size)?;
    println!(
        "demo: bdev-clone hydrate --source {} --dest {} --metadata {}",
        src.display(),
        dst.display(),
        md.display()
    );
    let out = hydrate(&HydrateOpts {
        source: src.clone(),
        dest: dst.clone(),
        metadata: md.clone(),
        region_size: None,
        block_size: None,
        rate: o.rate,
        threshold: 32,
        batch: 8,
        commit_interval_ms: 1000,
        format: false,
        direct: o.direct,
        io: crate::hydrate::IoMode::Auto,
        progress: o.progress,
        progress_interval: Duration::from_secs(1),
    })?;
    let secs = out.elapsed.as_secs_f64();
    println!(
        "demo: hydrated {:.1} MiB in {secs:.2}s ({:.1} MiB/s, O_DIRECT: {})",
        mib(out.bytes_copied),
        mib(out.bytes_copied) / secs.max(1e-9),
        if out.direct[0] && out.direct[1] {
            "yes"
        } else {
            "no"
        }
    );
    println!("\ndemo: bdev-clone status {}", md.display());
    print_status(&meta::read(&md)?, &mut std::io::stdout().lock())?;
    println!(
        "\ndemo: bdev-clone check {} --source {} --dest {}",
        md.display(),
        src.display(),
        dst.display()
    );
    let clean = check(&md, Some(&src), Some(&dst))?;
    println!(
        "\ndemo: {} — cloned {} MiB ({} regions of {} KiB) in {}; check {}",
        if clean { "success" } else { "FAILED" },
        o.size_mib,
        out.regions_total,
        out.region_size / 1024,
        human_duration(out.elapsed.as_secs()),
        if clean { "clean" } else { "NOT clean" }
    );
    if temporary && !o.keep {
        std::fs::remove_dir_all(&dir)?;
        println!("demo: removed {}", dir.display());
    } else {
        println!("demo: files kept in {}", dir.display());
    }
    Ok(clean)
}
