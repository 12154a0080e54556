//! The engine opened over a corrupted metadata device: it either loads a state
//! under which every block reads back what was written and flushed (an older
//! superblock is fine while the bitmap is intact), or refuses to open. Never a
//! panic, never a clone that silently reads the source where the user wrote.

#[path = "support/mem.rs"]
mod mem;

use bdev_clone::{Engine, UserOp};
use mem::*;
use proptest::prelude::*;
use std::sync::OnceLock;

/// 4 MiB source of 512-byte regions: 8192 regions, so with 512-byte pages
/// the bitmap spans three pages (3840 regions each).
const SRC: usize = 4 << 20;
const REGIONS: u64 = (SRC / BS as usize) as u64;

fn block_of(tag: u8, b: u64) -> Vec<u8> {
    let mut v = vec![tag; BS as usize];
    v[..8].copy_from_slice(&b.to_le_bytes());
    v
}

struct Scenario {
    source: Vec<u8>,
    dest: Vec<u8>,
    meta: Vec<u8>,
    /// What every block of the clone must read after the last flush.
    expect: Vec<u8>,
    /// The image after each commit (format first), oldest first.
    versions: Vec<Vec<u8>>,
    meta_len: usize,
}

fn read_all(e: &mut Engine<Mem>) -> Vec<u8> {
    let mut out = Vec::with_capacity(SRC);
    for r in 0..REGIONS {
        out.extend(read(e, 1_000_000 + r, r, 1).expect("read"));
    }
    out
}

/// Formats a clone, then commits four rounds of writes spread over every
/// bitmap page, so that each page has versions in both of its slots.
fn scenario() -> &'static Scenario {
    static S: OnceLock<Scenario> = OnceLock::new();
    S.get_or_init(|| {
        let mut source = vec![0u8; SRC];
        for b in 0..REGIONS {
            source[(b * BS as u64) as usize..][..BS as usize].copy_from_slice(&block_of(0x50, b));
        }
        let dest = vec![0xEE; SRC];
        let meta_len = 2 * 4096 + 2 * 3 * 512;
        let (mut e, opened) = open([source.clone(), dest, vec![0; meta_len]], |_| {});
        assert!(opened.unwrap().formatted);
        let mut expect = source.clone();
        let mut versions = vec![expect.clone()];
        let mut x: u64 = 12345;
        let mut id = 1;
        for round in 1..=4u8 {
            for _ in 0..40 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = (x >> 33) % REGIONS;
                let data = block_of(round, r);
                write(&mut e, id, r, &data).expect("write");
                expect[(r * BS as u64) as usize..][..BS as usize].copy_from_slice(&data);
                id += 1;
            }
            io(&mut e, id, UserOp::Flush, 0, 0).expect("flush");
            id += 1;
            versions.push(expect.clone());
        }
        assert_eq!(read_all(&mut e), expect);
        let [_, dest, meta] = std::mem::take(&mut e.backend_mut().devs);
        Scenario {
            source,
            dest,
            meta,
            expect,
            versions,
            meta_len,
        }
    })
}

/// Opens over `meta`: Ok(whole clone image) or Err(why).
fn reopen(meta: Vec<u8>) -> Result<Vec<u8>, String> {
    let s = scenario();
    let (mut e, opened) = open([s.source.clone(), s.dest.clone(), meta], |_| {});
    match opened {
        Ok(_) => Ok(read_all(&mut e)),
        Err(err) => Err(err.to_string()),
    }
}

#[test]
fn intact_metadata_reloads_everything() {
    let s = scenario();
    assert!(reopen(s.meta.clone()).unwrap() == s.expect);
}

#[test]
fn a_lost_page_is_refused_not_read_as_the_source() {
    // Both slots of bitmap page 0 zeroed (a stray write, a bad sector
    // remapped to zeroes): the regions it named must not read the source.
    let s = scenario();
    let mut meta = s.meta.clone();
    meta[8192..8192 + 1024].fill(0);
    match reopen(meta) {
        Ok(img) => assert!(img == s.expect, "loaded a state that reads wrong data"),
        Err(e) => assert!(e.contains("corrupt"), "{e}"),
    }
}

#[derive(Clone, Debug)]
enum Damage {
    /// Flip bit `bit` of byte `at`.
    Flip { at: usize, bit: u8 },
    /// Overwrite `len` bytes from `at` with `byte`.
    Fill { at: usize, len: usize, byte: u8 },
}

fn damage() -> impl Strategy<Value = Damage> {
    let len = scenario().meta_len;
    prop_oneof![
        (0..len, 0u8..8).prop_map(|(at, bit)| Damage::Flip { at, bit }),
        (0..len, 1usize..1024, any::<u8>()).prop_map(|(at, len, byte)| Damage::Fill {
            at,
            len,
            byte
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn corrupted_metadata_loads_correctly_or_is_refused(
        damages in proptest::collection::vec(damage(), 1..4)
    ) {
        let s = scenario();
        let mut meta = s.meta.clone();
        for d in &damages {
            match *d {
                Damage::Flip { at, bit } => meta[at] ^= 1 << bit,
                Damage::Fill { at, len, byte } => {
                    let end = (at + len).min(meta.len());
                    meta[at..end].fill(byte);
                }
            }
        }
        if let Ok(img) = reopen(meta) {
            if damages.len() == 1 {
                // One damaged spot (a bad sector, a stray write): nothing lost.
                prop_assert!(img == s.expect, "damage {:?} loaded a state that reads wrong data", damages);
            } else {
                // Several (the newest superblock *and* a newest page): an
                // older version may come back, but every block reads a value
                // it held at some commit: never garbage.
                for (b, got) in img.chunks(BS as usize).enumerate() {
                    let at = b * BS as usize;
                    prop_assert!(
                        s.versions.iter().any(|v| &v[at..at + BS as usize] == got),
                        "damage {:?}: block {} reads a value it never held", damages, b
                    );
                }
            }
        }
    }
}
