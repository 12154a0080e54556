//! The metadata decoders over arbitrary bytes: never a panic; a superblock
//! that decodes re-encodes to one that decodes the same; a page that decodes
//! fills exactly the words asked for.
#![no_main]

use bdev_clone::metadata::{decode_page, encode_page, Superblock, SB_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sb) = Superblock::decode(data) {
        let mut buf = vec![0xA5u8; SB_LEN.max(512)];
        sb.encode(&mut buf);
        assert_eq!(Superblock::decode(&buf), Ok(sb.clone()));
        let g = sb.geometry();
        assert!(g.region_count > 0 && g.num_blocks <= g.dest_blocks);
    }
    if data.len() >= 13 {
        let index = u32::from_le_bytes(data[0..4].try_into().unwrap());
        let nonce = u64::from_le_bytes(data[4..12].try_into().unwrap());
        let n = data[12] as usize % 80;
        let page = &data[13..];
        let mut words = vec![0u64; n];
        if let Some(seq) = decode_page(page, index, nonce, &mut words) {
            // What decoded re-encodes to a page that decodes the same.
            let mut again = vec![0u8; page.len()];
            encode_page(&mut again, index, seq, nonce, &words);
            let mut w2 = vec![0u64; n];
            assert_eq!(decode_page(&again, index, nonce, &mut w2), Some(seq));
            assert_eq!(w2, words);
        }
    }
});
