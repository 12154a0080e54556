//! The oracle: what every block of the clone may read back, now and after a
//! crash, per DESIGN.md "Crash semantics".
//!
//! Each block has a history: its source value, then every value written to it
//! in submission order (the workload never has two writes to one block in
//! flight). `floor` is the newest value known durable: acknowledged and then
//! covered by a completed flush, or written with FUA. After a crash a block
//! may read as `history[floor..]` and nothing else; a never-written block
//! therefore reads exactly as the source. A discard puts `Any` in the history.

/// A block's content, as a tag the pattern encodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    Source(u64),
    /// What the destination held before the clone existed.
    Garbage(u64),
    Write {
        id: u64,
        block: u64,
    },
    Zero,
    /// Discarded: anything is a valid read.
    Any,
}

const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl Value {
    fn tag(self) -> u64 {
        match self {
            Value::Source(b) => 1 << 60 | b,
            Value::Garbage(b) => 2 << 60 | b,
            Value::Write { id, block } => 3 << 60 | id << 24 | block,
            Value::Zero | Value::Any => 0,
        }
    }

    /// Fills a block with the pattern of this value.
    pub fn fill(self, out: &mut [u8]) {
        if matches!(self, Value::Zero | Value::Any) {
            out.fill(0);
            return;
        }
        let tag = self.tag();
        for (i, w) in out.chunks_mut(8).enumerate() {
            let v = tag ^ (i as u64).wrapping_mul(K);
            w.copy_from_slice(&v.to_le_bytes()[..w.len()]);
        }
    }

    /// Reads a block's value back; None for bytes no value would produce.
    pub fn decode(data: &[u8]) -> Option<Value> {
        if data.iter().all(|&b| b == 0) {
            return Some(Value::Zero);
        }
        let tag = u64::from_le_bytes(data[..8].try_into().ok()?);
        let v = match tag >> 60 {
            1 => Value::Source(tag & ((1 << 60) - 1)),
            2 => Value::Garbage(tag & ((1 << 60) - 1)),
            3 => Value::Write {
                id: (tag >> 24) & ((1 << 36) - 1),
                block: tag & ((1 << 24) - 1),
            },
            _ => return None,
        };
        let mut expect = vec![0u8; data.len()];
        v.fill(&mut expect);
        (expect == data).then_some(v)
    }
}

#[derive(Clone, Debug)]
struct Entry {
    value: Value,
    /// Order of acknowledgement; None while in flight or if it failed.
    acked: Option<u64>,
}

pub struct Oracle {
    blocks: Vec<Vec<Entry>>,
    floor: Vec<usize>,
    ack_clock: u64,
}

#[derive(Clone, Debug)]
pub struct Violation {
    pub block: u64,
    pub got: Option<Value>,
    pub allowed: Vec<Value>,
    pub when: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: block {} read {:?}, allowed {:?}",
            self.when, self.block, self.got, self.allowed
        )
    }
}

/// Snapshot taken when a flush is submitted.
#[derive(Clone, Copy, Debug)]
pub struct FlushMark(u64);

/// Per-block start of the allowed range, taken when a read is submitted.
pub struct ReadMark(Vec<usize>);

impl Oracle {
    pub fn new(blocks: u64) -> Oracle {
        Oracle {
            blocks: (0..blocks)
                .map(|b| {
                    vec![Entry {
                        value: Value::Source(b),
                        acked: Some(0),
                    }]
                })
                .collect(),
            floor: vec![0; blocks as usize],
            ack_clock: 0,
        }
    }

    /// A write-like op was submitted; returns the history index per block.
    pub fn submit(&mut self, offset: u64, values: &[Value]) -> Vec<usize> {
        values
            .iter()
            .enumerate()
            .map(|(i, &value)| {
                let h = &mut self.blocks[offset as usize + i];
                h.push(Entry { value, acked: None });
                h.len() - 1
            })
            .collect()
    }

    /// The op completed successfully.
    pub fn ack(&mut self, offset: u64, entries: &[usize], durable: bool) {
        self.ack_clock += 1;
        for (i, &e) in entries.iter().enumerate() {
            let b = offset as usize + i;
            self.blocks[b][e].acked = Some(self.ack_clock);
            if durable {
                self.floor[b] = self.floor[b].max(e);
            }
        }
    }

    pub fn flush_submitted(&self) -> FlushMark {
        FlushMark(self.ack_clock)
    }

    /// A flush completed successfully: everything acked before it was
    /// submitted is durable.
    pub fn flush_completed(&mut self, mark: FlushMark) {
        for (b, h) in self.blocks.iter().enumerate() {
            if let Some(i) = h.iter().rposition(|e| e.acked.is_some_and(|a| a <= mark.0)) {
                self.floor[b] = self.floor[b].max(i);
            }
        }
    }

    fn last_acked(&self, b: usize) -> usize {
        self.blocks[b]
            .iter()
            .rposition(|e| e.acked.is_some())
            .unwrap()
    }

    pub fn read_submitted(&self, offset: u64, len: u64) -> ReadMark {
        ReadMark(
            (offset..offset + len)
                .map(|b| self.last_acked(b as usize))
                .collect(),
        )
    }

    fn check(&self, b: usize, from: usize, data: &[u8], when: &str) -> Result<(), Violation> {
        let allowed: Vec<Value> = self.blocks[b][from..].iter().map(|e| e.value).collect();
        if allowed.contains(&Value::Any) {
            return Ok(());
        }
        let got = Value::decode(data);
        if got.is_some_and(|v| allowed.contains(&v)) {
            return Ok(());
        }
        Err(Violation {
            block: b as u64,
            got,
            allowed,
            when: when.to_string(),
        })
    }

    /// A read completed: each block must hold its value at submission or one
    /// written since.
    pub fn check_read(
        &self,
        offset: u64,
        mark: &ReadMark,
        data: &[u8],
        bs: usize,
    ) -> Result<(), Violation> {
        for (i, chunk) in data.chunks(bs).enumerate() {
            self.check(offset as usize + i, mark.0[i], chunk, "read")?;
        }
        Ok(())
    }

    /// After a crash and reload: the block must hold a value from its durable
    /// floor on. The value seen becomes the block's new (durable) base.
    pub fn check_after_crash(&mut self, block: u64, data: &[u8]) -> Result<(), Violation> {
        let b = block as usize;
        self.check(b, self.floor[b], data, "after crash")?;
        let value = if self.blocks[b][self.floor[b]..]
            .iter()
            .any(|e| e.value == Value::Any)
        {
            Value::decode(data).unwrap_or(Value::Any)
        } else {
            Value::decode(data).unwrap()
        };
        self.blocks[b] = vec![Entry {
            value,
            acked: Some(0),
        }];
        self.floor[b] = 0;
        Ok(())
    }

    /// With nothing in flight: the block holds its last acknowledged value,
    /// or that of a write that failed after it (its data may have landed).
    pub fn check_settled(&self, block: u64, data: &[u8]) -> Result<(), Violation> {
        let b = block as usize;
        self.check(b, self.last_acked(b), data, "settled")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_roundtrip() {
        for v in [
            Value::Source(7),
            Value::Garbage(3),
            Value::Write { id: 99, block: 5 },
            Value::Zero,
        ] {
            let mut b = vec![0u8; 512];
            v.fill(&mut b);
            assert_eq!(Value::decode(&b), Some(v));
        }
        let mut b = vec![0u8; 512];
        Value::Source(1).fill(&mut b);
        b[100] ^= 1;
        assert_eq!(Value::decode(&b), None);
    }

    #[test]
    fn floor_moves_only_with_flush_or_fua() {
        let mut o = Oracle::new(1);
        let w1 = Value::Write { id: 1, block: 0 };
        let e = o.submit(0, &[w1]);
        o.ack(0, &e, false);
        let mut data = vec![0u8; 512];
        Value::Source(0).fill(&mut data);
        // Not flushed: the source value is still allowed after a crash.
        assert!(o.check(0, o.floor[0], &data, "t").is_ok());
        let m = o.flush_submitted();
        o.flush_completed(m);
        assert!(o.check(0, o.floor[0], &data, "t").is_err());
        w1.fill(&mut data);
        assert!(o.check_after_crash(0, &data).is_ok());
    }
}
