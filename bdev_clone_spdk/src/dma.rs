//! DMA-capable memory for the engine's buffers (hydration copies, metadata
//! pages): a plain supplier. How much the engine holds, what it reuses and
//! what it keeps in reserve is the engine's policy, not the host's.

use bdev_clone::BufId;
use spdk_sys as sys;
use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr::null_mut;

/// Alignment of every buffer: a page, which satisfies every bdev's
/// `required_alignment` seen here and keeps copies off split pages.
const ALIGN: usize = 4096;

/// The buffers handed out and not yet returned: pointer → length.
#[derive(Default)]
pub(crate) struct DmaMemory {
    live: HashMap<usize, usize>,
}

impl DmaMemory {
    /// `len` bytes of DMA-capable memory, or None when SPDK has none left.
    pub(crate) fn alloc(&mut self, len: usize) -> Option<BufId> {
        // SAFETY: a plain allocation, returned with spdk_dma_free in free()
        // or Drop.
        let p = unsafe { sys::spdk_dma_malloc(len, ALIGN, null_mut()) } as usize;
        if p == 0 {
            return None;
        }
        self.live.insert(p, len);
        Some(BufId(p as u64))
    }

    pub(crate) fn free(&mut self, buf: BufId) {
        let p = buf.0 as usize;
        if self.live.remove(&p).is_some() {
            // SAFETY: `p` came from spdk_dma_malloc and leaves `live` here,
            // so it is freed once.
            unsafe { sys::spdk_dma_free(p as *mut c_void) };
        }
    }

    /// The bytes of a live buffer.
    pub(crate) fn buf_mut(&mut self, buf: BufId) -> &mut [u8] {
        let p = buf.0 as usize;
        let len = self.live[&p];
        // SAFETY: `p` is a live allocation of `len` bytes, borrowed through
        // `self` (one mutable view at a time).
        unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len) }
    }
}

impl Drop for DmaMemory {
    fn drop(&mut self) {
        for &p in self.live.keys() {
            // SAFETY: every pointer in `live` came from spdk_dma_malloc and
            // was not freed (free() removes it).
            unsafe { sys::spdk_dma_free(p as *mut c_void) };
        }
    }
}
