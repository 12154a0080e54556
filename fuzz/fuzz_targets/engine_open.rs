//! The engine's open path over a damaged metadata image (an in-memory
//! backend): never a panic, never an out-of-range request; when it opens,
//! every block reads a value it held at some commit (never garbage).
#![no_main]

#[path = "../../bdev_clone/tests/support/mem.rs"]
mod mem;

use bdev_clone::UserOp;
use libfuzzer_sys::fuzz_target;
use mem::*;
use std::sync::OnceLock;

/// 2 MiB of 512-byte regions: 4096 regions, two 512-byte bitmap pages.
const SRC: usize = 2 << 20;
const REGIONS: u64 = (SRC / BS as usize) as u64;
const META: usize = 2 * 4096 + 2 * 2 * 512;

struct Base {
    source: Vec<u8>,
    dest: Vec<u8>,
    meta: Vec<u8>,
    versions: Vec<Vec<u8>>,
}

fn block(tag: u8, b: u64) -> Vec<u8> {
    let mut v = vec![tag; BS as usize];
    v[..8].copy_from_slice(&b.to_le_bytes());
    v
}

fn base() -> &'static Base {
    static B: OnceLock<Base> = OnceLock::new();
    B.get_or_init(|| {
        let mut source = vec![0u8; SRC];
        for b in 0..REGIONS {
            source[(b * BS as u64) as usize..][..BS as usize].copy_from_slice(&block(0x50, b));
        }
        let (mut e, r) = open([source.clone(), vec![0xEE; SRC], vec![0; META]], |_| {});
        r.expect("format");
        let mut img = source.clone();
        let mut versions = vec![img.clone()];
        let mut id = 1;
        for round in 1..=3u8 {
            for k in 0..24u64 {
                let r = (k * 977 + round as u64 * 131) % REGIONS;
                let d = block(round, r);
                write(&mut e, id, r, &d).expect("write");
                img[(r * BS as u64) as usize..][..BS as usize].copy_from_slice(&d);
                id += 1;
            }
            io(&mut e, id, UserOp::Flush, 0, 0).expect("flush");
            id += 1;
            versions.push(img.clone());
        }
        let [_, dest, meta] = std::mem::take(&mut e.backend_mut().devs);
        Base {
            source,
            dest,
            meta,
            versions,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let b = base();
    let mut meta = b.meta.clone();
    // Each 3 bytes: an offset and a byte to XOR there.
    for c in data.chunks_exact(3) {
        let at = u16::from_le_bytes([c[0], c[1]]) as usize % META;
        meta[at] ^= c[2];
    }
    let (mut e, r) = open([b.source.clone(), b.dest.clone(), meta], |_| {});
    if r.is_err() {
        return;
    }
    for blk in 0..REGIONS {
        let got = read(&mut e, 1_000_000 + blk, blk, 1).expect("read of an opened clone");
        let at = (blk * BS as u64) as usize;
        assert!(
            b.versions
                .iter()
                .any(|v| v[at..at + BS as usize] == got[..]),
            "block {blk} reads a value it never held"
        );
    }
});
