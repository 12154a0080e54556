//! Sizes of the clone and the arithmetic between blocks and regions.

use std::fmt;

/// Default region size: 64 KiB. Small enough that the first write into an
/// unhydrated region copies little (one 64 KiB read + write, tens of µs on
/// NVMe), large enough that a 1 TiB clone needs 16 Mi regions: 2 MiB of bitmap
/// in memory and 4 MiB of metadata on disk (two slots per page).
pub const DEFAULT_REGION_SIZE: u32 = 64 * 1024;
/// Largest region accepted: one hydration copy must fit a DMA buffer.
pub const MAX_REGION_SIZE: u32 = 64 * 1024 * 1024;

/// Block size and length of one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub block_size: u32,
    pub num_blocks: u64,
}

impl DeviceInfo {
    pub fn bytes(&self) -> u64 {
        self.block_size as u64 * self.num_blocks
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GeometryError {
    BlockSizeMismatch { source: u32, dest: u32 },
    BadBlockSize(u32),
    BadRegionSize { region_size: u32, block_size: u32 },
    DestTooSmall { source_bytes: u64, dest_bytes: u64 },
    EmptySource,
}

impl fmt::Display for GeometryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GeometryError::BlockSizeMismatch { source, dest } => write!(
                f,
                "source block size {source} differs from destination block size {dest}"
            ),
            GeometryError::BadBlockSize(b) => {
                write!(f, "block size {b} is not a power of two of at least 512")
            }
            GeometryError::BadRegionSize {
                region_size,
                block_size,
            } => write!(
                f,
                "region size {region_size} must be a power of two, a multiple of the block size \
                 {block_size} and at most {MAX_REGION_SIZE}"
            ),
            GeometryError::DestTooSmall {
                source_bytes,
                dest_bytes,
            } => write!(
                f,
                "destination ({dest_bytes} bytes) is smaller than the source ({source_bytes} bytes)"
            ),
            GeometryError::EmptySource => write!(f, "source has no blocks"),
        }
    }
}

impl std::error::Error for GeometryError {}

/// The clone's geometry. The clone is exactly as large as the source (as in
/// dm-clone); the destination must be at least that large and its tail beyond
/// the source is left unused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub block_size: u32,
    pub region_size: u32,
    /// Blocks of the clone (= blocks of the source).
    pub num_blocks: u64,
    pub dest_blocks: u64,
    pub region_count: u64,
}

impl Geometry {
    pub fn new(
        source: DeviceInfo,
        dest: DeviceInfo,
        region_size: u32,
    ) -> Result<Self, GeometryError> {
        if source.block_size != dest.block_size {
            return Err(GeometryError::BlockSizeMismatch {
                source: source.block_size,
                dest: dest.block_size,
            });
        }
        let bs = source.block_size;
        if !bs.is_power_of_two() || bs < 512 {
            return Err(GeometryError::BadBlockSize(bs));
        }
        if !region_size.is_power_of_two() || region_size < bs || region_size > MAX_REGION_SIZE {
            return Err(GeometryError::BadRegionSize {
                region_size,
                block_size: bs,
            });
        }
        if source.num_blocks == 0 {
            return Err(GeometryError::EmptySource);
        }
        if dest.num_blocks < source.num_blocks {
            return Err(GeometryError::DestTooSmall {
                source_bytes: source.bytes(),
                dest_bytes: dest.bytes(),
            });
        }
        let region_blocks = (region_size / bs) as u64;
        Ok(Geometry {
            block_size: bs,
            region_size,
            num_blocks: source.num_blocks,
            dest_blocks: dest.num_blocks,
            region_count: source.num_blocks.div_ceil(region_blocks),
        })
    }

    /// log2 of blocks per region (both sizes are powers of two): the hot
    /// path shifts instead of dividing.
    #[inline]
    fn region_shift(&self) -> u32 {
        self.region_size.trailing_zeros() - self.block_size.trailing_zeros()
    }

    #[inline]
    pub fn region_blocks(&self) -> u64 {
        1 << self.region_shift()
    }

    #[inline]
    pub fn region_of(&self, block: u64) -> u64 {
        block >> self.region_shift()
    }

    /// First block and length of a region (the last one may be short).
    pub fn region_extent(&self, region: u64) -> (u64, u64) {
        let start = region * self.region_blocks();
        (start, self.region_blocks().min(self.num_blocks - start))
    }

    /// Regions touched by `[offset, offset + len)`.
    pub fn regions_touched(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        if len == 0 {
            return 0..0;
        }
        self.region_of(offset)..self.region_of(offset + len - 1) + 1
    }

    /// True when `[offset, offset + len)` lies inside one region and covers it.
    pub fn covers_region(&self, offset: u64, len: u64) -> bool {
        let (start, rlen) = self.region_extent(self.region_of(offset));
        offset == start && len == rlen
    }

    pub fn in_bounds(&self, offset: u64, len: u64) -> bool {
        offset
            .checked_add(len)
            .is_some_and(|end| end <= self.num_blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(bs: u32, n: u64) -> DeviceInfo {
        DeviceInfo {
            block_size: bs,
            num_blocks: n,
        }
    }

    #[test]
    fn partial_last_region() {
        let g = Geometry::new(dev(512, 1000), dev(512, 1000), 4096).unwrap();
        assert_eq!(g.region_blocks(), 8);
        assert_eq!(g.region_count, 125);
        let g = Geometry::new(dev(512, 1001), dev(512, 2000), 4096).unwrap();
        assert_eq!(g.region_count, 126);
        assert_eq!(g.region_extent(125), (1000, 1));
        assert!(g.covers_region(1000, 1));
        assert!(!g.covers_region(992, 7));
        assert_eq!(g.regions_touched(6, 4), 0..2);
    }

    #[test]
    fn rejects_bad_geometry() {
        assert!(matches!(
            Geometry::new(dev(512, 10), dev(4096, 10), 4096),
            Err(GeometryError::BlockSizeMismatch { .. })
        ));
        assert!(matches!(
            Geometry::new(dev(512, 10), dev(512, 9), 4096),
            Err(GeometryError::DestTooSmall { .. })
        ));
        for rs in [0, 256, 3000, 1 << 30] {
            assert!(matches!(
                Geometry::new(dev(512, 10), dev(512, 10), rs),
                Err(GeometryError::BadRegionSize { .. })
            ));
        }
        assert!(Geometry::new(dev(512, 0), dev(512, 10), 4096).is_err());
    }
}
