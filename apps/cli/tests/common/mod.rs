//! Helpers shared by the CLI's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

pub const BIN: &str = env!("CARGO_BIN_EXE_bdev-clone");

/// A fresh directory under cargo's per-target temp dir.
pub fn tmpdir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bdev-clone-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn bin() -> Command {
    Command::new(BIN)
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run bdev-clone")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Deterministic, non-zero, position-dependent content (seeded).
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let mut z = (offset / 8 + i as u64)
            .wrapping_add(seed.wrapping_mul(0x2545_F491_4F6C_DD1D))
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let b = (z | 1).to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

pub fn write_pattern(path: &Path, seed: u64, size: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(buf.len() as u64) as usize;
        fill(seed, at, &mut buf[..n]);
        f.write_all_at(&buf[..n], at).unwrap();
        at += n as u64;
    }
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Content and modification time of a file (None when missing).
#[derive(Debug, PartialEq, Eq)]
pub struct Print(Option<(Vec<u8>, SystemTime)>);

pub fn print(path: &Path) -> Print {
    Print(
        std::fs::read(path)
            .ok()
            .map(|c| (c, std::fs::metadata(path).unwrap().modified().unwrap())),
    )
}

/// True when the two files hold the same bytes (compared in chunks).
pub fn same_prefix(a: &Path, b: &Path, len: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let (fa, fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut x, mut y) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    let mut at = 0;
    while at < len {
        let n = (len - at).min(x.len() as u64) as usize;
        fa.read_exact_at(&mut x[..n], at).unwrap();
        fb.read_exact_at(&mut y[..n], at).unwrap();
        if x[..n] != y[..n] {
            return false;
        }
        at += n as u64;
    }
    true
}
