//! DMA-safe memory for the engine's copies.

use bdev_clone::BufId;
use spdk_sys as sys;
use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr::null_mut;

const POOL_LIMIT: usize = 64 << 20;

/// DMA-safe buffers, reused by size.
#[derive(Default)]
pub(crate) struct BufPool {
    free: HashMap<usize, Vec<usize>>,
    live: HashMap<usize, usize>,
    bytes: usize,
}

impl BufPool {
    pub(crate) fn alloc(&mut self, len: usize) -> Option<BufId> {
        if let Some(p) = self.free.get_mut(&len).and_then(|v| v.pop()) {
            self.live.insert(p, len);
            return Some(BufId(p as u64));
        }
        if self.bytes + len > POOL_LIMIT {
            return None;
        }
        // SAFETY: plain allocation; freed with spdk_dma_free in Drop.
        let p = unsafe { sys::spdk_dma_malloc(len, 4096, null_mut()) } as usize;
        if p == 0 {
            return None;
        }
        self.bytes += len;
        self.live.insert(p, len);
        Some(BufId(p as u64))
    }

    pub(crate) fn free(&mut self, buf: BufId) {
        let p = buf.0 as usize;
        if let Some(len) = self.live.remove(&p) {
            self.free.entry(len).or_default().push(p);
        }
    }

    pub(crate) fn slice(&mut self, buf: BufId) -> &mut [u8] {
        let p = buf.0 as usize;
        let len = self.live[&p];
        // SAFETY: `p` is a live allocation of `len` bytes owned by the pool.
        unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len) }
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        for p in self.free.values().flatten().chain(self.live.keys()) {
            // SAFETY: every pointer came from spdk_dma_malloc and is freed once.
            unsafe { sys::spdk_dma_free(*p as *mut c_void) };
        }
    }
}
