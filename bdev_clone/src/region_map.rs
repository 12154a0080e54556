//! The in-memory hydrated bitmap. Any thread may test a bit without a lock
//! (the SPDK hot path does, on every I/O); only the engine's thread sets bits.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub struct RegionMap {
    words: Box<[AtomicU64]>,
    regions: u64,
}

impl RegionMap {
    pub fn new(regions: u64) -> Self {
        let words = (0..regions.div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        RegionMap { words, regions }
    }

    pub fn regions(&self) -> u64 {
        self.regions
    }

    /// Acquire pairs with the Release in `set`: a thread that sees the bit
    /// also sees everything the engine did before setting it.
    #[inline]
    pub fn is_hydrated(&self, region: u64) -> bool {
        let w = self.words[(region / 64) as usize].load(Ordering::Acquire);
        w & (1 << (region % 64)) != 0
    }

    /// Sets the bit; returns false when it was already set.
    pub fn set(&self, region: u64) -> bool {
        let bit = 1 << (region % 64);
        self.words[(region / 64) as usize].fetch_or(bit, Ordering::Release) & bit == 0
    }

    pub fn memory_bytes(&self) -> u64 {
        self.words.len() as u64 * 8
    }

    pub fn word(&self, index: usize) -> u64 {
        self.words[index].load(Ordering::Acquire)
    }

    pub fn set_word(&self, index: usize, value: u64) {
        self.words[index].store(value, Ordering::Release);
    }

    pub fn count_hydrated(&self) -> u64 {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as u64)
            .sum()
    }

    /// First unhydrated region at or after `from`, wrapping around.
    pub fn next_unhydrated(&self, from: u64) -> Option<u64> {
        let scan = |lo: u64, hi: u64| -> Option<u64> {
            let mut r = lo;
            while r < hi {
                let w = self.words[(r / 64) as usize].load(Ordering::Relaxed) >> (r % 64);
                let free = (!w).trailing_zeros() as u64; // set bits to skip
                if free < 64 - r % 64 {
                    let found = r + free;
                    return (found < hi).then_some(found);
                }
                r = (r / 64 + 1) * 64;
            }
            None
        };
        let from = if from >= self.regions { 0 } else { from };
        scan(from, self.regions).or_else(|| scan(0, from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_test_and_scan() {
        let m = RegionMap::new(130);
        assert_eq!(m.next_unhydrated(0), Some(0));
        for r in 0..129 {
            assert!(m.set(r));
        }
        assert!(!m.set(5));
        assert!(m.is_hydrated(128));
        assert!(!m.is_hydrated(129));
        assert_eq!(m.next_unhydrated(3), Some(129));
        assert_eq!(m.count_hydrated(), 129);
        m.set(129);
        assert_eq!(m.next_unhydrated(0), None);
        let m = RegionMap::new(200);
        m.set(150);
        for r in 0..150 {
            m.set(r);
        }
        assert_eq!(m.next_unhydrated(151), Some(151));
        assert_eq!(m.next_unhydrated(199), Some(199));
        for r in 151..200 {
            m.set(r);
        }
        assert_eq!(m.next_unhydrated(170), None);
    }
}
