//! Property test of the routing decision against a plain model of DESIGN.md:
//! reads of hydrated regions go to the destination, other reads to the
//! source; writes to hydrated regions pass through; everything else needs
//! the engine; I/O out of range or crossing a region is refused.

use bdev_clone::engine::{Route, Shared};
use bdev_clone::{DeviceInfo, Geometry, IoError, UserIo, UserIoId, UserOp};
use proptest::prelude::*;

fn model(g: &Geometry, hydrated: &[bool], io: &UserIo) -> Route {
    let end = io.offset_blocks as u128 + io.num_blocks as u128;
    if end > g.num_blocks as u128 {
        return Route::Reject(IoError::Invalid);
    }
    let rb = g.region_size as u64 / g.block_size as u64;
    let first = io.offset_blocks / rb;
    let one_region = io.num_blocks > 0 && (io.offset_blocks + io.num_blocks - 1) / rb == first;
    match io.kind {
        UserOp::Read if !one_region => Route::Reject(IoError::Invalid),
        UserOp::Read if hydrated[first as usize] => Route::Dest,
        UserOp::Read => Route::Source,
        UserOp::Write { .. } if !one_region => Route::Reject(IoError::Invalid),
        UserOp::Write { fua: false } if hydrated[first as usize] => Route::Dest,
        _ => Route::Engine,
    }
}

proptest! {
    #[test]
    fn route_matches_the_model(
        bs_shift in 0u32..4,
        region_shift in 0u32..6,
        blocks in 1u64..5000,
        extra in 0u64..100,
        seed in any::<u64>(),
        ios in proptest::collection::vec((0u8..6, any::<u64>(), 0u64..300), 1..50),
    ) {
        let bs = 512u32 << bs_shift;
        let dev = DeviceInfo { block_size: bs, num_blocks: blocks };
        let dst = DeviceInfo { block_size: bs, num_blocks: blocks + extra };
        let g = Geometry::new(dev, dst, bs << region_shift).unwrap();
        let shared = Shared::new(g);
        let mut hydrated = vec![false; g.region_count as usize];
        let mut x = seed | 1;
        for (r, h) in hydrated.iter_mut().enumerate() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            if x % 3 == 0 {
                *h = true;
                shared.map.set(r as u64);
            }
        }
        for (k, off, len) in ios {
            let kind = match k {
                0 => UserOp::Read,
                1 => UserOp::Write { fua: false },
                2 => UserOp::Write { fua: true },
                3 => UserOp::Flush,
                4 => UserOp::Unmap,
                _ => UserOp::WriteZeroes,
            };
            // Offsets mostly in range, sometimes past the end or huge.
            let offset_blocks = if off % 10 == 0 { off } else { off % (blocks + 10) };
            let io = UserIo { id: UserIoId(1), kind, offset_blocks, num_blocks: len };
            prop_assert_eq!(shared.route(&io), model(&g, &hydrated, &io), "{:?}", io);
        }
    }
}
