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

    /// Version `v` of block `b`: every 8-byte word says which, so a block
    /// mixing two versions (or garbage) matches none.
    fn pattern(v: u64, b: u64, bs: usize) -> Vec<u8> {
        let word = (v << 20 | b).to_le_bytes();
        word.iter().copied().cycle().take(bs).collect()
    }

    /// What the device must guarantee, tracked per block: every value a
    /// completed write gave it, oldest first (with the device's completion
    /// count), and which of them is on media.
    struct Model {
        history: Vec<Vec<(u64, Vec<u8>)>>,
        durable: Vec<usize>,
        /// Where `durable` would be had every flush persisted (differs only
        /// for a lying device).
        honest: Vec<usize>,
        completions: u64,
    }

    /// How often each thing the device can do at a crash happened.
    #[derive(Default, Debug)]
    struct Seen {
        unflushed_lost: u32,
        unflushed_kept: u32,
        in_flight_landed: u32,
        in_flight_lost: u32,
        torn_write: u32,
        lying_flush_lost: u32,
    }

    struct Write {
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    }

    impl Model {
        /// Checks what reads and the media hold now, and the cache's size.
        fn check(&self, d: &SimDevice, what: &str) {
            let mut cached = 0;
            for (b, h) in self.history.iter().enumerate() {
                let mut out = vec![0; d.block_size];
                d.read_block(b as u64, &mut out);
                assert!(
                    out == h.last().unwrap().1,
                    "after {what}: block {b} does not read as its last completed write"
                );
                assert!(
                    d.durable_block(b as u64) == h[self.durable[b]].1,
                    "after {what}: block {b} on media is not version {} of {} \
                     (the last one persisted)",
                    self.durable[b],
                    h.len()
                );
                cached += usize::from(self.durable[b] + 1 < h.len());
            }
            assert_eq!(d.cached_blocks(), cached, "after {what}: blocks cached");
        }
    }

    /// Random writes (multi-block, FUA), flushes submitted and completed
    /// with writes completing in between, write-backs and crashes with
    /// writes in flight, against the model: a read returns the last
    /// completed write; a flush persists exactly what completed before it
    /// was submitted (nothing, if the device lies); a FUA write is on media
    /// when it completes; after a crash each block holds exactly one value:
    /// what was on media or a write that came after it (completed or in
    /// flight), whole, never a mix within the block or anything never
    /// written. And each of the allowed outcomes happens: unflushed writes
    /// both lost and kept, in-flight writes landing or not, torn across
    /// blocks; a lying device losing flushed writes.
    #[test]
    fn crashes_keep_exactly_what_the_device_may_keep() {
        let bs = 16;
        let mut seen = Seen::default();
        for seed in 0..400u64 {
            let mut rng = Rng::with_seed(seed);
            let lying = seed % 4 == 0;
            let blocks = rng.u64(1..9);
            let mut d =
                SimDevice::new(bs, blocks, |b, out| out.copy_from_slice(&pattern(0, b, bs)));
            d.faults.lying_flush = lying;
            let mut m = Model {
                history: (0..blocks).map(|b| vec![(0, pattern(0, b, bs))]).collect(),
                durable: vec![0; blocks as usize],
                honest: vec![0; blocks as usize],
                completions: 0,
            };
            let mut version = 0u64;
            let mut writes: Vec<Write> = Vec::new();
            let mut flushes: Vec<u64> = Vec::new();
            for _ in 0..300 {
                match rng.u32(..100) {
                    0..=29 => {
                        let offset = rng.u64(..blocks);
                        let n = rng.u64(1..=blocks - offset);
                        let mut data = Vec::new();
                        for b in offset..offset + n {
                            version += 1;
                            data.extend(pattern(version, b, bs));
                        }
                        let fua = rng.u32(..5) == 0;
                        writes.push(Write { offset, data, fua });
                    }
                    30..=59 if !writes.is_empty() => {
                        let w = writes.swap_remove(rng.usize(..writes.len()));
                        d.write(w.offset, &w.data, w.fua);
                        m.completions += 1;
                        for (i, chunk) in w.data.chunks(bs).enumerate() {
                            let b = w.offset as usize + i;
                            m.history[b].push((m.completions, chunk.to_vec()));
                            if w.fua {
                                m.durable[b] = m.history[b].len() - 1;
                                m.honest[b] = m.durable[b];
                            }
                        }
                        m.check(&d, "a write completed");
                    }
                    60..=74 => {
                        let mark = d.flush_mark();
                        assert_eq!(
                            mark, m.completions,
                            "a flush's mark counts completed writes"
                        );
                        flushes.push(mark);
                    }
                    75..=89 if !flushes.is_empty() => {
                        let mark = flushes.swap_remove(rng.usize(..flushes.len()));
                        d.flush(mark);
                        for (b, h) in m.history.iter().enumerate() {
                            let covered = h.iter().rposition(|(seq, _)| *seq <= mark).unwrap();
                            m.honest[b] = m.honest[b].max(covered);
                            if !lying {
                                m.durable[b] = m.durable[b].max(covered);
                            }
                        }
                        m.check(&d, "a flush completed");
                    }
                    90..=95 => {
                        let before = m.durable.clone();
                        let cached = (0..before.len()).any(|b| before[b] + 1 < m.history[b].len());
                        d.evict_one(&mut rng);
                        // The oldest cached version of one block, if any.
                        let mut moved = 0;
                        for (b, h) in m.history.iter().enumerate() {
                            let media = d.durable_block(b as u64);
                            if media != h[before[b]].1.as_slice() {
                                assert!(
                                    before[b] + 1 < h.len() && media == h[before[b] + 1].1,
                                    "write-back put on block {b} something other than its \
                                     oldest cached version"
                                );
                                m.durable[b] += 1;
                                m.honest[b] = m.honest[b].max(m.durable[b]);
                                moved += 1;
                            }
                        }
                        assert_eq!(moved, usize::from(cached), "blocks one write-back wrote");
                        m.check(&d, "a write-back");
                    }
                    96..=99 => {
                        crash(&mut d, &mut m, &mut writes, &mut seen, &mut rng, lying);
                        flushes.clear();
                        m.check(&d, "a crash");
                    }
                    _ => {}
                }
            }
            crash(&mut d, &mut m, &mut writes, &mut seen, &mut rng, lying);
            m.check(&d, "the last crash");
        }
        assert!(
            seen.unflushed_lost > 0,
            "no crash ever lost an unflushed write: {seen:?}"
        );
        assert!(
            seen.unflushed_kept > 0,
            "no crash ever kept an unflushed write: {seen:?}"
        );
        assert!(
            seen.in_flight_landed > 0,
            "no write in flight ever landed: {seen:?}"
        );
        assert!(
            seen.in_flight_lost > 0,
            "every write in flight landed: {seen:?}"
        );
        assert!(
            seen.torn_write > 0,
            "no multi-block write was ever torn: {seen:?}"
        );
        assert!(
            seen.lying_flush_lost > 0,
            "a lying device never lost a flushed write: {seen:?}"
        );
    }

    /// Power loss with `writes` in flight, checked against the model.
    fn crash(
        d: &mut SimDevice,
        m: &mut Model,
        writes: &mut Vec<Write>,
        seen: &mut Seen,
        rng: &mut Rng,
        lying: bool,
    ) {
        let in_flight: Vec<(u64, Vec<u8>)> = writes.drain(..).map(|w| (w.offset, w.data)).collect();
        d.crash(rng, &in_flight);
        let bs = d.block_size;
        for (b, h) in m.history.iter_mut().enumerate() {
            let media = d.durable_block(b as u64).to_vec();
            let kept = h.iter().rposition(|(_, v)| *v == media);
            let landed = in_flight.iter().any(|(off, data)| {
                (*off..*off + (data.len() / bs) as u64).contains(&(b as u64))
                    && data[(b - *off as usize) * bs..][..bs] == media[..]
            });
            match kept {
                Some(i) if i >= m.durable[b] => {
                    if h.len() > m.durable[b] + 1 {
                        if i + 1 < h.len() {
                            seen.unflushed_lost += 1;
                        }
                        if i > m.durable[b] {
                            seen.unflushed_kept += 1;
                        }
                    }
                    if lying && i < m.honest[b] {
                        seen.lying_flush_lost += 1;
                    }
                }
                _ => assert!(
                    landed,
                    "after a crash block {b} holds neither what was on media (version {} of {}) \
                     nor a write that came after it, whole{}",
                    m.durable[b],
                    h.len(),
                    match kept {
                        Some(i) => format!(": it went back to version {i}"),
                        None => String::new(),
                    }
                ),
            }
            *h = vec![(0, media)];
            m.durable[b] = 0;
            m.honest[b] = 0;
        }
        for (off, data) in &in_flight {
            let n = data.len() / bs;
            let landed = (0..n)
                .filter(|i| {
                    let b = *off + *i as u64;
                    d.durable_block(b) == &data[i * bs..][..bs]
                })
                .count();
            seen.in_flight_landed += u32::from(landed > 0);
            seen.in_flight_lost += u32::from(landed < n);
            seen.torn_write += u32::from(landed > 0 && landed < n);
        }
        m.completions = d.flush_mark();
    }
}
