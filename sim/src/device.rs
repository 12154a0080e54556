//! A simulated block device with a volatile write cache.
//!
//! What a read sees is `durable` overlaid with the cached versions. A write
//! completes into the cache (a FUA write straight to media); a flush persists
//! every version that completed before the flush was *submitted*; the cache
//! may also write back any block on its own at any time. At a crash every
//! block with cached versions keeps a random prefix of them: block-granular
//! tearing, never a value that was not written.

use fastrand::Rng;
use std::collections::{BTreeMap, VecDeque};

#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Per-mille chance that a read / write / flush completes with an error.
    pub read_error: u32,
    pub write_error: u32,
    pub flush_error: u32,
    /// Flushes complete successfully without persisting anything: the bug
    /// the seed fixed, as a device.
    pub lying_flush: bool,
}

/// A cached version of a block: the completion count of its write, its data.
type Version = (u64, Box<[u8]>);

pub struct SimDevice {
    pub block_size: usize,
    pub num_blocks: u64,
    durable: Vec<u8>,
    /// Per block, versions completed but not yet on media, oldest first.
    cache: BTreeMap<u64, VecDeque<Version>>,
    /// Counts completed writes; orders cache versions against flushes.
    completions: u64,
    pub faults: Faults,
    pub writes: u64,
    pub flushes: u64,
    pub bytes_written: u64,
}

impl SimDevice {
    pub fn new(block_size: usize, num_blocks: u64, fill: impl Fn(u64, &mut [u8])) -> Self {
        let mut durable = vec![0u8; block_size * num_blocks as usize];
        for (b, chunk) in durable.chunks_mut(block_size).enumerate() {
            fill(b as u64, chunk);
        }
        SimDevice {
            block_size,
            num_blocks,
            durable,
            cache: BTreeMap::new(),
            completions: 0,
            faults: Faults::default(),
            writes: 0,
            flushes: 0,
            bytes_written: 0,
        }
    }

    fn range(&self, block: u64) -> std::ops::Range<usize> {
        let at = block as usize * self.block_size;
        at..at + self.block_size
    }

    /// What a read of `block` returns now.
    pub fn read_block(&self, block: u64, out: &mut [u8]) {
        match self.cache.get(&block).and_then(|v| v.back()) {
            Some((_, data)) => out.copy_from_slice(data),
            None => out.copy_from_slice(&self.durable[self.range(block)]),
        }
    }

    /// What is on media (survives a crash for sure).
    pub fn durable_block(&self, block: u64) -> &[u8] {
        &self.durable[self.range(block)]
    }

    pub fn read(&self, offset: u64, out: &mut [u8]) {
        for (i, chunk) in out.chunks_mut(self.block_size).enumerate() {
            self.read_block(offset + i as u64, chunk);
        }
    }

    /// A write completed. `fua` writes go to media (and supersede cached
    /// versions of the same blocks, as a real cache would).
    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) {
        self.writes += 1;
        self.bytes_written += data.len() as u64;
        self.completions += 1;
        for (i, chunk) in data.chunks(self.block_size).enumerate() {
            let b = offset + i as u64;
            if fua {
                self.cache.remove(&b);
                let r = self.range(b);
                self.durable[r].copy_from_slice(chunk);
            } else {
                self.cache
                    .entry(b)
                    .or_default()
                    .push_back((self.completions, chunk.into()));
            }
        }
    }

    /// Marks the point a flush was submitted at.
    pub fn flush_mark(&self) -> u64 {
        self.completions
    }

    /// A flush submitted at `mark` completed.
    pub fn flush(&mut self, mark: u64) {
        self.flushes += 1;
        if self.faults.lying_flush {
            return;
        }
        let blocks: Vec<u64> = self.cache.keys().copied().collect();
        for b in blocks {
            self.persist_while(b, |seq| seq <= mark);
        }
    }

    fn persist_while(&mut self, b: u64, cond: impl Fn(u64) -> bool) {
        let Some(versions) = self.cache.get_mut(&b) else {
            return;
        };
        let mut latest = None;
        while versions.front().is_some_and(|(seq, _)| cond(*seq)) {
            latest = versions.pop_front();
        }
        if versions.is_empty() {
            self.cache.remove(&b);
        }
        if let Some((_, data)) = latest {
            let r = self.range(b);
            self.durable[r].copy_from_slice(&data);
        }
    }

    /// The cache writes back the oldest version of a random block.
    pub fn evict_one(&mut self, rng: &mut Rng) {
        if self.cache.is_empty() {
            return;
        }
        let nth = rng.usize(..self.cache.len());
        let b = *self.cache.keys().nth(nth).unwrap();
        let first = self.cache[&b].front().unwrap().0;
        self.persist_while(b, |seq| seq == first);
    }

    pub fn cached_blocks(&self) -> usize {
        self.cache.len()
    }

    /// Power loss: every block keeps a random prefix of its cached versions.
    /// `in_flight` writes (submitted, never completed) may land too, torn.
    pub fn crash(&mut self, rng: &mut Rng, in_flight: &[(u64, Vec<u8>)]) {
        for (offset, data) in in_flight {
            for (i, chunk) in data.chunks(self.block_size).enumerate() {
                if rng.bool() {
                    self.completions += 1;
                    self.cache
                        .entry(offset + i as u64)
                        .or_default()
                        .push_back((self.completions, chunk.into()));
                }
            }
        }
        let cache = std::mem::take(&mut self.cache);
        for (b, versions) in cache {
            let keep = rng.usize(..=versions.len());
            if keep > 0 {
                let r = self.range(b);
                self.durable[r].copy_from_slice(&versions[keep - 1].1);
            }
        }
    }

    pub fn fail(&self, rng: &mut Rng, per_mille: u32) -> bool {
        per_mille > 0 && rng.u32(..1000) < per_mille
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_persists_only_what_completed_before_it() {
        let mut d = SimDevice::new(4, 2, |_, b| b.fill(0));
        d.write(0, &[1; 4], false);
        let mark = d.flush_mark();
        d.write(1, &[2; 4], false);
        d.flush(mark);
        assert_eq!(d.durable_block(0), &[1; 4]);
        assert_eq!(d.durable_block(1), &[0; 4]);
        let mut out = [0; 4];
        d.read_block(1, &mut out);
        assert_eq!(out, [2; 4]);
        d.crash(&mut Rng::with_seed(1), &[]);
        assert!(d.cached_blocks() == 0);
    }

    #[test]
    fn lying_flush_persists_nothing() {
        let mut d = SimDevice::new(4, 1, |_, b| b.fill(9));
        d.faults.lying_flush = true;
        d.write(0, &[1; 4], false);
        d.flush(d.flush_mark());
        assert_eq!(d.durable_block(0), &[9; 4]);
    }

    #[test]
    fn crash_keeps_a_prefix_of_versions() {
        for seed in 0..50 {
            let mut d = SimDevice::new(1, 1, |_, b| b.fill(0));
            for v in 1..=3u8 {
                d.write(0, &[v], false);
            }
            d.crash(&mut Rng::with_seed(seed), &[]);
            assert!(d.durable_block(0)[0] <= 3);
        }
    }
}
