//! The CLI's error cases (one clear line, non-zero exit, nothing changed),
//! `status --json`, and `check` on corrupt metadata.

mod common;
use common::*;
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

struct Files {
    dir: PathBuf,
    src: PathBuf,
    dst: PathBuf,
    meta: PathBuf,
}

fn setup(name: &str, src_size: u64, dst_size: u64) -> Files {
    let dir = tmpdir(name);
    let f = Files {
        src: dir.join("src.img"),
        dst: dir.join("dst.img"),
        meta: dir.join("meta"),
        dir,
    };
    write_pattern(&f.src, 1, src_size);
    write_pattern(&f.dst, 2, dst_size);
    f
}

fn hydrate(src: &Path, dst: &Path, meta: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["hydrate", "-s", p(src), "-d", p(dst), "-m", p(meta)];
    args.extend_from_slice(extra);
    run(&args)
}

/// Asserts a failed run: the exit code, one line on stderr naming `needle`.
fn assert_error(o: &std::process::Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(err.contains(needle), "{err:?} lacks {needle:?}");
}

/// Prints of the files, to prove a failed command changed nothing.
fn prints(paths: &[&Path]) -> Vec<Print> {
    paths.iter().map(|p| print(p)).collect()
}

#[test]
fn bad_arguments() {
    let f = setup("badargs", MIB, MIB);
    let before = prints(&[&f.src, &f.dst, &f.meta]);
    // Missing --dest and --metadata.
    let o = run(&["hydrate", "--source", p(&f.src)]);
    assert_error(&o, 2, "required");
    assert!(stderr(&o).contains("--dest"));
    let o = run(&["frobnicate"]);
    assert_error(&o, 2, "frobnicate");
    let o = hydrate(&f.src, &f.dst, &f.meta, &["--region-size", "12Q"]);
    assert_error(&o, 2, "unknown unit");
    let o = hydrate(&f.src, &f.dst, &f.meta, &["--rate", "fast"]);
    assert_error(&o, 2, "--rate");
    let o = hydrate(&f.src, &f.dst, &f.meta, &["--io", "threads"]);
    assert_error(&o, 2, "--io");
    // Parses, but not a valid region size for the engine.
    let o = hydrate(&f.src, &f.dst, &f.meta, &["--region-size", "3000"]);
    assert_error(&o, 1, "region size 3000");
    let o = run(&["check", p(&f.meta), "--source", p(&f.src)]);
    assert_error(&o, 2, "--dest");
    let o = hydrate(&f.src, &f.src, &f.meta, &[]);
    assert_error(&o, 1, "same file");
    let o = hydrate(&f.src, &f.dst, &f.dst, &[]);
    assert_error(&o, 1, "same file");
    assert_eq!(before, prints(&[&f.src, &f.dst, &f.meta]));
    assert!(!f.meta.exists());
    std::fs::remove_dir_all(&f.dir).unwrap();
}

#[test]
fn missing_files() {
    let f = setup("missing", MIB, MIB);
    let nowhere = f.dir.join("nowhere.img");
    let before = prints(&[&f.src, &f.dst]);
    let o = hydrate(&nowhere, &f.dst, &f.meta, &[]);
    assert_error(&o, 1, "source");
    assert!(stderr(&o).contains("does not exist"));
    let o = hydrate(&f.src, &nowhere, &f.meta, &[]);
    assert_error(&o, 1, "destination");
    assert!(stderr(&o).contains("does not exist"));
    let o = run(&["status", p(&nowhere)]);
    assert_error(&o, 1, "does not exist");
    let o = run(&["check", p(&nowhere)]);
    assert_error(&o, 1, "does not exist");
    assert!(!nowhere.exists());
    assert!(!f.meta.exists(), "metadata created by a failed run");
    assert_eq!(before, prints(&[&f.src, &f.dst]));
    std::fs::remove_dir_all(&f.dir).unwrap();
}

#[test]
fn destination_smaller_than_source() {
    let f = setup("small", 2 * MIB, 2 * MIB - 512);
    let before = prints(&[&f.src, &f.dst]);
    let o = hydrate(&f.src, &f.dst, &f.meta, &[]);
    assert_error(&o, 1, "smaller than the source");
    assert!(!f.meta.exists(), "metadata created by a failed run");
    assert_eq!(before, prints(&[&f.src, &f.dst]));
    std::fs::remove_dir_all(&f.dir).unwrap();
}

#[test]
fn size_not_a_multiple_of_the_block_size() {
    let f = setup("odd", MIB + 100, 2 * MIB);
    let before = prints(&[&f.src, &f.dst]);
    let o = hydrate(&f.src, &f.dst, &f.meta, &[]);
    assert_error(&o, 1, "not a multiple of the block size 512");
    let o = hydrate(&f.src, &f.dst, &f.meta, &["--block-size", "3000"]);
    assert_error(&o, 1, "block size 3000");
    assert!(!f.meta.exists());
    assert_eq!(before, prints(&[&f.src, &f.dst]));
    std::fs::remove_dir_all(&f.dir).unwrap();
}

#[test]
fn metadata_of_other_devices_is_refused() {
    let f = setup("other", 2 * MIB, 2 * MIB);
    let o = hydrate(&f.src, &f.dst, &f.meta, &["--progress", "none"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Another source of the same size: the metadata names the first one.
    let other = f.dir.join("other.img");
    write_pattern(&other, 3, 2 * MIB);
    let before = prints(&[&f.src, &f.dst, &f.meta, &other]);
    let o = hydrate(&other, &f.dst, &f.meta, &[]);
    assert_error(&o, 1, "belongs to source");
    assert!(stderr(&o).contains("--format"));
    // Another destination.
    let dst2 = f.dir.join("dst2.img");
    write_pattern(&dst2, 4, 2 * MIB);
    let o = hydrate(&f.src, &dst2, &f.meta, &[]);
    assert_error(&o, 1, "belongs to destination");
    // A source of another size.
    let big = f.dir.join("big.img");
    write_pattern(&big, 5, MIB);
    let o = hydrate(&big, &f.dst, &f.meta, &[]);
    assert_error(&o, 1, "metadata is for a source of 4096 blocks");
    // Another region size than the stored one.
    let o = hydrate(&f.src, &f.dst, &f.meta, &["--region-size", "128K"]);
    assert_error(&o, 1, "region size");
    assert_eq!(before, prints(&[&f.src, &f.dst, &f.meta, &other]));
    // --format adopts the new source.
    let o = hydrate(&other, &f.dst, &f.meta, &["--format", "--progress", "none"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(same_prefix(&other, &f.dst, 2 * MIB));
    std::fs::remove_dir_all(&f.dir).unwrap();
}

#[test]
fn existing_metadata_too_small() {
    let f = setup("metasmall", 64 * MIB, 64 * MIB);
    std::fs::write(&f.meta, vec![0u8; 8192]).unwrap();
    let before = prints(&[&f.src, &f.dst, &f.meta]);
    let o = hydrate(&f.src, &f.dst, &f.meta, &[]);
    assert_error(&o, 1, "too small");
    assert_eq!(before, prints(&[&f.src, &f.dst, &f.meta]));
    std::fs::remove_dir_all(&f.dir).unwrap();
}

fn flip(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, at).unwrap();
}

#[test]
fn corrupt_metadata() {
    let f = setup("corrupt", 4 * MIB, 4 * MIB);
    let o = hydrate(&f.src, &f.dst, &f.meta, &["--progress", "none"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let clean = run(&["check", p(&f.meta), "-s", p(&f.src), "-d", p(&f.dst)]);
    assert!(clean.status.success(), "{}", stdout(&clean));
    assert!(stdout(&clean).contains("clean"));
    let pristine = std::fs::read(&f.meta).unwrap();

    // A damaged superblock slot: loadable (the other slot), but not clean.
    flip(&f.meta, 40);
    let o = run(&["check", p(&f.meta)]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("superblock slot 0: checksum mismatch"));
    std::fs::write(&f.meta, &pristine).unwrap();

    // A damaged bitmap page slot.
    flip(&f.meta, 8192 + 100);
    let o = run(&["check", p(&f.meta)]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("bitmap page 0 slot 0"),
        "{}",
        stdout(&o)
    );
    std::fs::write(&f.meta, &pristine).unwrap();

    // Both superblocks damaged: check and hydrate refuse, nothing changes.
    flip(&f.meta, 40);
    flip(&f.meta, 4096 + 40);
    let before = prints(&[&f.src, &f.dst, &f.meta]);
    let o = run(&["check", p(&f.meta)]);
    assert_error(&o, 1, "no valid superblock");
    let o = hydrate(&f.src, &f.dst, &f.meta, &[]);
    assert_error(&o, 1, "corrupt");
    assert_eq!(before, prints(&[&f.src, &f.dst, &f.meta]));
    std::fs::write(&f.meta, &pristine).unwrap();

    // Not bdev_clone metadata at all.
    std::fs::write(&f.meta, vec![0x5Au8; pristine.len()]).unwrap();
    let before = prints(&[&f.src, &f.dst, &f.meta]);
    let o = hydrate(&f.src, &f.dst, &f.meta, &[]);
    assert_error(&o, 1, "not bdev_clone metadata");
    assert_eq!(before, prints(&[&f.src, &f.dst, &f.meta]));
    std::fs::write(&f.meta, &pristine).unwrap();

    // Destination data that differs from the source in a hydrated region.
    flip(&f.dst, 3 * MIB + 5);
    let o = run(&["check", p(&f.meta), "-s", p(&f.src), "-d", p(&f.dst)]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("1 region(s) marked hydrated differ"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("first: 48"), "{}", stdout(&o));
    std::fs::remove_dir_all(&f.dir).unwrap();
}

#[test]
fn status_json_and_resume() {
    let f = setup("status", 3 * MIB, 4 * MIB);
    let o = hydrate(
        &f.src,
        &f.dst,
        &f.meta,
        &["--region-size", "128K", "--progress", "lines"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("new clone: 24 regions of 128 KiB"),
        "{}",
        stderr(&o)
    );
    assert!(same_prefix(&f.src, &f.dst, 3 * MIB));
    let o = run(&["status", p(&f.meta), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    assert_eq!(v["state"], "hydrated");
    assert_eq!(v["regions_total"], 24);
    assert_eq!(v["regions_hydrated"], 24);
    assert_eq!(v["percent"], 100.0);
    assert_eq!(v["region_size"], 131072);
    assert_eq!(v["block_size"], 512);
    assert_eq!(v["source_blocks"], 6144);
    assert_eq!(v["dest_blocks"], 8192);
    assert_eq!(v["bytes_total"], 3 * MIB);
    assert_eq!(v["running"], false);
    assert!(v["source"].as_str().unwrap().ends_with("src.img"));
    assert!(v["problems"].as_array().unwrap().is_empty());
    let o = run(&["status", p(&f.meta)]);
    assert!(o.status.success());
    assert!(
        stdout(&o).contains("state:       hydrated"),
        "{}",
        stdout(&o)
    );
    // A second run resumes, finds nothing to do and exits 0.
    let o = hydrate(&f.src, &f.dst, &f.meta, &["--progress", "none"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming: 24 of 24"), "{}", stderr(&o));
    std::fs::remove_dir_all(&f.dir).unwrap();
}

/// Both I/O paths (io_uring and synchronous), with O_DIRECT and buffered,
/// copy the same bytes: a source ending in a partial region, odd batches,
/// a destination tail that must stay untouched.
#[test]
fn io_paths_copy_the_same() {
    let size = 5 * MIB + 1536;
    for io in ["uring", "sync"] {
        for buffered in [false, true] {
            let f = setup(&format!("io-{io}-{buffered}"), size, size + MIB);
            let tail = std::fs::read(&f.dst).unwrap()[size as usize..].to_vec();
            let mut args = vec!["--io", io, "--batch", "3", "--threshold", "7"];
            args.extend(["--progress", "none"]);
            if buffered {
                args.push("--buffered");
            }
            let o = hydrate(&f.src, &f.dst, &f.meta, &args);
            if io == "uring" && stderr(&o).contains("io_uring is not available") {
                println!("skipped --io uring: {}", stderr(&o));
                std::fs::remove_dir_all(&f.dir).unwrap();
                continue;
            }
            assert!(o.status.success(), "--io {io}: {}", stderr(&o));
            assert!(!stderr(&o).contains("note:"), "{}", stderr(&o));
            assert!(
                same_prefix(&f.src, &f.dst, size),
                "--io {io} buffered {buffered}"
            );
            assert_eq!(std::fs::read(&f.dst).unwrap()[size as usize..], tail[..]);
            let o = run(&[
                "check",
                p(&f.meta),
                "--source",
                p(&f.src),
                "--dest",
                p(&f.dst),
            ]);
            assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
            std::fs::remove_dir_all(&f.dir).unwrap();
        }
    }
}
