//! The clone vbdev: base bdev descriptors and claims, the engine's host
//! (requests on the clone thread's channels, a DMA buffer pool, a poller),
//! the per-thread I/O path, and the bdev lifecycle.
//!
//! Threads: the engine lives on the thread that created the clone (the app
//! thread, where RPCs run). I/O arrives on any thread. Reads, and writes to
//! hydrated regions, go straight to the base bdev on the submitting thread
//! (a lock-free bitmap test, the caller's iovecs, no copy); everything else is
//! sent to the clone thread, and its completion sent back.

use crate::ffi::{self, Responder};
use bdev_clone::engine::Route;
use bdev_clone::engine::Shared;
use bdev_clone::{
    Backend, BufId, CloneState, Data, Dev, DevOp, DeviceInfo, Engine, IoError, IoResult, Notice,
    OpenParams, ReqId, Settings, UserIo, UserIoId, UserOp,
};
use serde_json::{json, Value};
use spdk_sys as sys;
use std::collections::{HashMap, VecDeque};
use std::ffi::{c_int, c_void, CStr, CString};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};

unsafe extern "C" {
    fn bdev_clone_module() -> *mut sys::spdk_bdev_module;
    fn bdev_clone_channel_ctx(ch: *mut sys::spdk_io_channel) -> *mut c_void;
}

pub fn module() -> *mut sys::spdk_bdev_module {
    // SAFETY: the shim returns its static module table.
    unsafe { bdev_clone_module() }
}

pub use bdev_clone::params::CreateParams;

/// An RPC failure: errno and message.
pub type RpcError = (i32, String);

fn einval(msg: impl Into<String>) -> RpcError {
    (libc_errno::EINVAL, msg.into())
}

pub mod libc_errno {
    pub const EIO: i32 = 5;
    pub const ENOMEM: i32 = 12;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const ENODEV: i32 = 19;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
}

const POOL_LIMIT: usize = 64 << 20;

/// DMA-safe buffers, reused by size.
#[derive(Default)]
struct BufPool {
    free: HashMap<usize, Vec<usize>>,
    live: HashMap<usize, usize>,
    bytes: usize,
}

impl BufPool {
    fn alloc(&mut self, len: usize) -> Option<BufId> {
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

    fn free(&mut self, buf: BufId) {
        let p = buf.0 as usize;
        if let Some(len) = self.live.remove(&p) {
            self.free.entry(len).or_default().push(p);
        }
    }

    fn slice(&mut self, buf: BufId) -> &mut [u8] {
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

const DEVS: [Dev; 3] = [Dev::Source, Dev::Dest, Dev::Meta];

fn dev_index(dev: Dev) -> usize {
    match dev {
        Dev::Source => 0,
        Dev::Dest => 1,
        Dev::Meta => 2,
    }
}

/// The engine's host inside SPDK.
pub struct Host {
    clone: *mut CloneBdev,
    descs: [*mut sys::spdk_bdev_desc; 3],
    claimed: [bool; 3],
    /// A flush does something on this device (it has a volatile write cache
    /// and takes flushes); otherwise a flush completes at once.
    flush_needed: [bool; 3],
    chans: [*mut sys::spdk_io_channel; 3],
    pool: BufPool,
    deferred: VecDeque<(ReqId, IoResult)>,
    retry: VecDeque<(ReqId, Dev, DevOp)>,
    notices: VecDeque<Notice>,
    ticks_hz: u64,
}

struct ReqCtx {
    clone: *mut CloneBdev,
    id: ReqId,
}

unsafe extern "C" fn engine_req_done(
    child: *mut sys::spdk_bdev_io,
    success: bool,
    ctx: *mut c_void,
) {
    ffi::guard("engine_req_done", (), || {
        // SAFETY: ctx is the ReqCtx boxed at submit; the child is ours to free.
        let ctx = unsafe { Box::from_raw(ctx as *mut ReqCtx) };
        unsafe { sys::spdk_bdev_free_io(child) };
        // SAFETY: the clone outlives its requests (teardown waits for idle).
        let clone = unsafe { &mut *ctx.clone };
        let result = if success { Ok(()) } else { Err(IoError::Io) };
        clone.engine_mut().complete(ctx.id, result);
        clone.after_engine();
    })
}

fn user_iov(io: UserIoId) -> (*mut sys::iovec, c_int) {
    let mut iov: *mut sys::iovec = null_mut();
    let mut cnt: c_int = 0;
    // SAFETY: a UserIoId is the address of a live spdk_bdev_io.
    unsafe { sys::spdk_bdev_io_get_iovec(io.0 as *mut sys::spdk_bdev_io, &mut iov, &mut cnt) };
    (iov, cnt)
}

impl Backend for Host {
    fn submit(&mut self, id: ReqId, dev: Dev, op: DevOp) {
        let desc = self.descs[dev_index(dev)];
        let ch = self.chans[dev_index(dev)];
        if desc.is_null() || ch.is_null() {
            self.deferred.push_back((id, Err(IoError::NoDevice)));
            return;
        }
        if op == DevOp::Flush && !self.flush_needed[dev_index(dev)] {
            // No volatile cache (writes are durable when they complete), or
            // none that takes flushes (refused at create unless the user
            // accepted it): nothing to send.
            self.deferred.push_back((id, Ok(())));
            return;
        }
        let ctx = Box::into_raw(Box::new(ReqCtx {
            clone: self.clone,
            id,
        })) as *mut c_void;
        let cb: sys::spdk_bdev_io_completion_cb = Some(engine_req_done);
        let buf_ptr = |pool: &mut BufPool, buf: BufId, offset: usize| {
            pool.slice(buf)[offset..].as_mut_ptr() as *mut c_void
        };
        // SAFETY: desc/ch are open on this (the clone's) thread; buffers are
        // live pool buffers or the user I/O's own iovecs; ctx is freed in the
        // callback, or below when the submit fails.
        let rc = unsafe {
            match op {
                DevOp::Read {
                    offset_blocks,
                    num_blocks,
                    data,
                } => match data {
                    Data::User(io) => {
                        let (iov, cnt) = user_iov(io);
                        sys::spdk_bdev_readv_blocks(
                            desc,
                            ch,
                            iov,
                            cnt,
                            offset_blocks,
                            num_blocks,
                            cb,
                            ctx,
                        )
                    }
                    Data::Buf { buf, offset } => {
                        let p = buf_ptr(&mut self.pool, buf, offset);
                        sys::spdk_bdev_read_blocks(desc, ch, p, offset_blocks, num_blocks, cb, ctx)
                    }
                },
                DevOp::Write {
                    offset_blocks,
                    num_blocks,
                    data,
                    ..
                } => match data {
                    Data::User(io) => {
                        let (iov, cnt) = user_iov(io);
                        sys::spdk_bdev_writev_blocks(
                            desc,
                            ch,
                            iov,
                            cnt,
                            offset_blocks,
                            num_blocks,
                            cb,
                            ctx,
                        )
                    }
                    Data::Buf { buf, offset } => {
                        let p = buf_ptr(&mut self.pool, buf, offset);
                        sys::spdk_bdev_write_blocks(desc, ch, p, offset_blocks, num_blocks, cb, ctx)
                    }
                },
                DevOp::Flush => {
                    let bdev = sys::spdk_bdev_desc_get_bdev(desc);
                    sys::spdk_bdev_flush_blocks(
                        desc,
                        ch,
                        0,
                        sys::spdk_bdev_get_num_blocks(bdev),
                        cb,
                        ctx,
                    )
                }
                DevOp::Unmap {
                    offset_blocks,
                    num_blocks,
                } => sys::spdk_bdev_unmap_blocks(desc, ch, offset_blocks, num_blocks, cb, ctx),
                DevOp::WriteZeroes {
                    offset_blocks,
                    num_blocks,
                } => {
                    sys::spdk_bdev_write_zeroes_blocks(desc, ch, offset_blocks, num_blocks, cb, ctx)
                }
                DevOp::Reset => sys::spdk_bdev_reset(desc, ch, cb, ctx),
            }
        };
        if rc != 0 {
            // SAFETY: the submit failed, so the callback will never free ctx.
            drop(unsafe { Box::from_raw(ctx as *mut ReqCtx) });
            if rc == -libc_errno::ENOMEM {
                self.retry.push_back((id, dev, op));
            } else {
                let e = if rc == -libc_errno::ENODEV {
                    IoError::NoDevice
                } else {
                    IoError::Io
                };
                self.deferred.push_back((id, Err(e)));
            }
        }
    }

    fn complete_user(&mut self, io: UserIoId, result: IoResult) {
        complete_bdev_io(io.0 as *mut sys::spdk_bdev_io, result.is_ok());
    }

    fn alloc_buf(&mut self, len: usize) -> Option<BufId> {
        self.pool.alloc(len)
    }

    fn buf_mut(&mut self, buf: BufId) -> &mut [u8] {
        self.pool.slice(buf)
    }

    fn free_buf(&mut self, buf: BufId) {
        self.pool.free(buf)
    }

    fn copy_user_data(&mut self, io: UserIoId, len: usize, buf: BufId, offset: usize) {
        let dst = &mut self.pool.slice(buf)[offset..offset + len];
        let (iov, cnt) = user_iov(io);
        // SAFETY: dst is a live pool buffer of len bytes; iov/cnt are the
        // iovecs of a live write bdev_io, which hold at least len bytes.
        unsafe { sys::spdk_copy_iovs_to_buf(dst.as_mut_ptr() as *mut c_void, len, iov, cnt) };
    }

    fn now_ns(&self) -> u64 {
        // SAFETY: plain reads of the TSC.
        let t = unsafe { sys::spdk_get_ticks() };
        (t as u128 * 1_000_000_000 / self.ticks_hz as u128) as u64
    }

    fn notify(&mut self, notice: Notice) {
        self.notices.push_back(notice);
    }
}

unsafe extern "C" fn delete_done(arg: *mut c_void, rc: c_int) {
    ffi::guard("delete_done", (), || {
        // SAFETY: boxed by delete().
        let reply = unsafe { Box::from_raw(arg as *mut Responder) };
        if rc == 0 {
            reply.ok(json!(true));
        } else {
            reply.err(-rc, &format!("delete failed: error {rc}"));
        }
    })
}

struct CompleteMsg {
    io: *mut sys::spdk_bdev_io,
    ok: bool,
}

unsafe extern "C" fn complete_msg(arg: *mut c_void) {
    ffi::guard("complete_msg", (), || {
        // SAFETY: boxed by complete_bdev_io for this message.
        let m = unsafe { Box::from_raw(arg as *mut CompleteMsg) };
        complete_bdev_io(m.io, m.ok);
    })
}

/// Completes a user I/O on the thread that submitted it, as SPDK requires.
fn complete_bdev_io(io: *mut sys::spdk_bdev_io, ok: bool) {
    // SAFETY: `io` is a live bdev_io submitted to the clone.
    unsafe {
        let thread = sys::spdk_bdev_io_get_thread(io);
        if thread == sys::spdk_get_thread() {
            let status = if ok {
                sys::SPDK_BDEV_IO_STATUS_SUCCESS
            } else {
                sys::SPDK_BDEV_IO_STATUS_FAILED
            };
            sys::spdk_bdev_io_complete(io, status);
        } else {
            let m = Box::into_raw(Box::new(CompleteMsg { io, ok })) as *mut c_void;
            sys::spdk_thread_send_msg(thread, Some(complete_msg), m);
        }
    }
}

/// One clone: the bdev SPDK sees, and everything behind it.
pub struct CloneBdev {
    /// Boxed: SPDK reads and writes it from any thread.
    bdev: Box<sys::spdk_bdev>,
    /// What other threads may touch; the io_device and the bdev's ctxt.
    iodev: Option<Arc<IoDevice>>,
    name: CString,
    pub params: CreateParams,
    engine: Option<Engine<Host>>,
    thread: *mut sys::spdk_thread,
    poller: *mut sys::spdk_poller,
    uuid: sys::spdk_uuid,
    registered: bool,
    unregistering: bool,
    create_req: Option<Responder>,
    release_req: Option<Responder>,
    pub dest_write_cache: bool,
    pub dest_flush_sent: bool,
}

/// Pointers to every live clone; touched only on the app thread.
struct Registry(Vec<usize>);
static CLONES: Mutex<Registry> = Mutex::new(Registry(Vec::new()));

pub fn for_each_clone(mut f: impl FnMut(&mut CloneBdev)) {
    let ptrs = CLONES.lock().unwrap().0.clone();
    for p in ptrs {
        // SAFETY: registry entries are live clones, removed before freeing.
        f(unsafe { &mut *(p as *mut CloneBdev) })
    }
}

pub fn find_clone(name: &str) -> Option<*mut CloneBdev> {
    let ptrs = CLONES.lock().unwrap().0.clone();
    ptrs.into_iter()
        .map(|p| p as *mut CloneBdev)
        // SAFETY: registry entries are live clones.
        .find(|&p| unsafe { (*p).params.name == name })
}

fn tag(clone: *mut CloneBdev, dev: Dev) -> *mut c_void {
    (clone as usize | dev_index(dev)) as *mut c_void
}

unsafe extern "C" fn base_event(
    kind: sys::spdk_bdev_event_type,
    _bdev: *mut sys::spdk_bdev,
    ctx: *mut c_void,
) {
    ffi::guard("base_event", (), || {
        if kind != sys::SPDK_BDEV_EVENT_REMOVE {
            return;
        }
        let clone = (ctx as usize & !3) as *mut CloneBdev;
        let dev = DEVS[ctx as usize & 3];
        // SAFETY: the tag was made from a live clone whose descs are open.
        let c = unsafe { &mut *clone };
        ffi::error(&format!(
            "bdev_clone {}: the {dev} bdev was removed",
            c.params.name
        ));
        if let Some(e) = c.engine.as_mut() {
            e.device_lost(dev);
        }
        c.after_engine();
        c.unregister();
    })
}

fn bdev_by_name(name: &str) -> Option<*mut sys::spdk_bdev> {
    let n = CString::new(name).ok()?;
    // SAFETY: lookup by a valid C string.
    let b = unsafe { sys::spdk_bdev_get_by_name(n.as_ptr()) };
    (!b.is_null()).then_some(b)
}

/// A destination whose volatile write cache is never flushed would make every
/// commit a lie: SPDK's NVMe bdev completes FLUSH without sending it unless
/// `bdev_nvme_set_options --enable-flush` was set.
fn flush_reaches_device(bdev: *mut sys::spdk_bdev) -> (bool, bool) {
    // SAFETY: `bdev` is a registered bdev we hold open.
    unsafe {
        let cache = sys::spdk_bdev_has_write_cache(bdev);
        if !cache {
            return (false, true);
        }
        if !sys::spdk_bdev_io_type_supported(bdev, sys::SPDK_BDEV_IO_TYPE_FLUSH) {
            return (true, false);
        }
        let module = CStr::from_ptr(sys::spdk_bdev_get_module_name(bdev));
        if module.to_bytes() == b"nvme" {
            let mut opts: sys::spdk_bdev_nvme_opts = std::mem::zeroed();
            sys::spdk_bdev_nvme_get_opts(
                &mut opts,
                std::mem::size_of::<sys::spdk_bdev_nvme_opts>(),
            );
            return (true, opts.enable_flush);
        }
        (true, true)
    }
}

/// Creates waiting for their base bdevs (`wait_for_bases`).
static PENDING: Mutex<Vec<CreateParams>> = Mutex::new(Vec::new());

fn bases_exist(p: &CreateParams) -> bool {
    [&p.source_bdev, &p.destination_bdev, &p.metadata_bdev]
        .iter()
        .enumerate()
        .all(|(i, n)| (i == 0 && p.source_released) || bdev_by_name(n).is_some())
}

/// The module's examine_config: a new bdev may complete a pending create.
pub fn examine(_bdev: *mut sys::spdk_bdev) {
    let ready: Vec<CreateParams> = {
        let mut pending = PENDING.lock().unwrap();
        let (ready, waiting) = pending.drain(..).partition(bases_exist);
        *pending = waiting;
        ready
    };
    for p in ready {
        let name = p.name.clone();
        match start_create(p) {
            // SAFETY: freshly created, live.
            Ok(clone) => unsafe { (*clone).after_engine() },
            Err((_, msg)) => {
                ffi::error(&format!("bdev_clone {name}: deferred create failed: {msg}"))
            }
        }
    }
}

/// Validates, opens and claims the base bdevs, then starts the engine. The
/// reply is sent when the metadata is loaded or formatted.
pub fn create(p: CreateParams, reply: Responder) {
    if p.wait_for_bases && !bases_exist(&p) {
        let mut pending = PENDING.lock().unwrap();
        if pending.iter().any(|q| q.name == p.name) || find_clone(&p.name).is_some() {
            return reply.err(
                libc_errno::EEXIST,
                &format!("a clone named '{}' already exists", p.name),
            );
        }
        ffi::notice(&format!(
            "bdev_clone {}: waiting for its base bdevs",
            p.name
        ));
        pending.push(p.clone());
        return reply.ok(json!(p.name));
    }
    match start_create(p) {
        Ok(clone) => {
            // SAFETY: freshly created, live.
            let c = unsafe { &mut *clone };
            c.create_req = Some(reply);
            c.after_engine();
        }
        Err((errno, msg)) => reply.err(errno, &msg),
    }
}

fn start_create(p: CreateParams) -> Result<*mut CloneBdev, RpcError> {
    p.validate().map_err(einval)?;
    if bdev_by_name(&p.name).is_some() || find_clone(&p.name).is_some() {
        return Err((
            libc_errno::EEXIST,
            format!("a bdev named '{}' already exists", p.name),
        ));
    }
    let names = [&p.source_bdev, &p.destination_bdev, &p.metadata_bdev];
    let which = ["source_bdev", "destination_bdev", "metadata_bdev"];
    // A released source is not opened (it may be gone); the engine checks
    // that the metadata says it was released.
    let released = p.source_released;
    let mut bdevs = [null_mut(); 3];
    for i in usize::from(released)..3 {
        bdevs[i] = bdev_by_name(names[i]).ok_or((
            libc_errno::ENODEV,
            format!("{} '{}' does not exist", which[i], names[i]),
        ))?;
    }
    let uuid = match &p.uuid {
        Some(s) => {
            let mut u = sys::spdk_uuid::default();
            let cs = CString::new(s.as_str()).map_err(|_| einval("uuid is not a UUID"))?;
            // SAFETY: parse into a local.
            if unsafe { sys::spdk_uuid_parse(&mut u, cs.as_ptr()) } != 0 {
                return Err(einval(format!("uuid '{s}' is not a UUID")));
            }
            u
        }
        None => {
            let mut u = sys::spdk_uuid::default();
            // SAFETY: fills a local.
            unsafe { sys::spdk_uuid_generate(&mut u) };
            u
        }
    };
    let (cache, flushed) = flush_reaches_device(bdevs[1]);
    if cache && !flushed && !p.allow_unflushed_destination {
        return Err(einval(format!(
            "destination_bdev '{}' has a volatile write cache but its flushes are not sent to \
             the device, so no commit could be made durable. For an NVMe bdev run \
             `bdev_nvme_set_options --enable-flush` before attaching the controller; or pass \
             allow_unflushed_destination to accept the risk",
            p.destination_bdev
        )));
    }
    let (mcache, mflushed) = flush_reaches_device(bdevs[2]);
    if mcache && !mflushed && !p.allow_unflushed_destination {
        return Err(einval(format!(
            "metadata_bdev '{}' has a volatile write cache but its flushes are not sent to the \
             device. For an NVMe bdev run `bdev_nvme_set_options --enable-flush` before \
             attaching the controller; or pass allow_unflushed_destination to accept the risk",
            p.metadata_bdev
        )));
    }
    // SAFETY: reading properties of registered bdevs.
    let info = |b: *mut sys::spdk_bdev| unsafe {
        DeviceInfo {
            block_size: sys::spdk_bdev_get_block_size(b),
            num_blocks: sys::spdk_bdev_get_num_blocks(b),
        }
    };
    let (dst, meta) = (info(bdevs[1]), info(bdevs[2]));
    // Without the source, the engine checks the destination against the
    // source's size and block size recorded in the metadata.
    let src = if released { dst } else { info(bdevs[0]) };
    if src.block_size != dst.block_size {
        return Err(einval(format!(
            "source block size {} differs from destination block size {}",
            src.block_size, dst.block_size
        )));
    }
    if dst.bytes() < src.bytes() {
        return Err(einval(format!(
            "destination_bdev '{}' ({} bytes) is smaller than source_bdev '{}' ({} bytes)",
            p.destination_bdev,
            dst.bytes(),
            p.source_bdev,
            src.bytes()
        )));
    }
    if let Some(rs) = p.region_size_kb {
        if (rs as u64 * 1024) < src.block_size as u64 {
            return Err(einval(format!(
                "region_size_kb {rs} is smaller than the block size {}",
                src.block_size
            )));
        }
    }
    // SAFETY: uuid bytes of registered bdevs.
    let uuid_of = |b: *mut sys::spdk_bdev| unsafe { (*sys::spdk_bdev_get_uuid(b)).u.raw };
    let discard_passdown = !p.no_discard_passdown
        // SAFETY: property of a registered bdev.
        && unsafe { sys::spdk_bdev_io_type_supported(bdevs[1], sys::SPDK_BDEV_IO_TYPE_UNMAP) };

    let clone = Box::into_raw(Box::new(CloneBdev {
        // SAFETY: spdk_bdev is a plain C struct; zeroed is its initial state.
        bdev: Box::new(unsafe { std::mem::zeroed() }),
        iodev: None,
        name: CString::new(p.name.as_str()).unwrap(),
        params: p.clone(),
        engine: None,
        // SAFETY: called on an SPDK thread (the RPC thread).
        thread: unsafe { sys::spdk_get_thread() },
        poller: null_mut(),
        uuid,
        registered: false,
        unregistering: false,
        create_req: None,
        release_req: None,
        dest_write_cache: cache,
        dest_flush_sent: flushed,
    }));
    let mut host = Host {
        clone,
        descs: [null_mut(); 3],
        claimed: [false; 3],
        flush_needed: [false; 3],
        chans: [null_mut(); 3],
        pool: BufPool::default(),
        deferred: VecDeque::new(),
        retry: VecDeque::new(),
        notices: VecDeque::new(),
        // SAFETY: constant of the environment.
        ticks_hz: unsafe { sys::spdk_get_ticks_hz() }.max(1),
    };
    let fail = |host: &mut Host, e: RpcError| {
        close_host(host);
        // SAFETY: not registered anywhere yet.
        drop(unsafe { Box::from_raw(clone) });
        Err(e)
    };
    for (i, dev) in DEVS.iter().enumerate() {
        if released && *dev == Dev::Source {
            continue;
        }
        let n = CString::new(names[i].as_str()).unwrap();
        let write = *dev != Dev::Source;
        // SAFETY: opening by name with our event callback and a tagged ctx.
        let rc = unsafe {
            sys::spdk_bdev_open_ext(
                n.as_ptr(),
                write,
                Some(base_event),
                tag(clone, *dev),
                &mut host.descs[i],
            )
        };
        if rc == -1 || rc == -libc_errno::EBUSY {
            // EPERM: claimed for exclusive write by another module or clone.
            return fail(
                &mut host,
                (
                    libc_errno::EBUSY,
                    format!(
                        "{} '{}' is claimed by another module or clone",
                        which[i], names[i]
                    ),
                ),
            );
        }
        if rc != 0 {
            return fail(
                &mut host,
                (
                    -rc,
                    format!("cannot open {} '{}': error {rc}", which[i], names[i]),
                ),
            );
        }
        let claim = if write {
            sys::SPDK_BDEV_CLAIM_EXCL_WRITE
        } else {
            sys::SPDK_BDEV_CLAIM_READ_MANY_WRITE_NONE
        };
        // SAFETY: the desc is open; default claim options.
        let rc = unsafe {
            sys::spdk_bdev_module_claim_bdev_desc(host.descs[i], claim, null_mut(), module())
        };
        if rc != 0 {
            return fail(
                &mut host,
                (
                    libc_errno::EBUSY,
                    format!(
                        "{} '{}' is already claimed by another module",
                        which[i], names[i]
                    ),
                ),
            );
        }
        host.claimed[i] = true;
        // SAFETY: properties of the bdev we just opened.
        host.flush_needed[i] = unsafe {
            sys::spdk_bdev_has_write_cache(bdevs[i])
                && sys::spdk_bdev_io_type_supported(bdevs[i], sys::SPDK_BDEV_IO_TYPE_FLUSH)
        };
        // SAFETY: the desc is open on this thread.
        host.chans[i] = unsafe { sys::spdk_bdev_get_io_channel(host.descs[i]) };
        if host.chans[i].is_null() {
            return fail(&mut host, (libc_errno::ENOMEM, "no I/O channel".into()));
        }
    }
    let mut params = OpenParams::new(src, dst, meta, {
        let mut n = sys::spdk_uuid::default();
        // SAFETY: fills a local.
        unsafe { sys::spdk_uuid_generate(&mut n) };
        // SAFETY: the raw bytes view of the UUID union.
        u64::from_le_bytes(unsafe { n.u.raw }[..8].try_into().unwrap())
    });
    params.region_size = p.region_size_kb.map(|kb| kb * 1024);
    params.page_size = bdev_clone::metadata::DEFAULT_PAGE_SIZE.max(meta.block_size);
    params.format = p.format;
    // SAFETY: the raw bytes view of the UUID union.
    params.uuid = unsafe { uuid.u.raw };
    if released {
        params.source = None;
    } else {
        params.source_id = uuid_of(bdevs[0]);
    }
    params.dest_id = uuid_of(bdevs[1]);
    params.source_name = p.source_bdev.clone();
    params.dest_name = p.destination_bdev.clone();
    params.settings = p.settings(discard_passdown);
    CLONES.lock().unwrap().0.push(clone as usize);
    // SAFETY: live, just allocated.
    unsafe { (*clone).engine = Some(Engine::open(host, params)) };
    Ok(clone)
}

/// Puts the engine's channels and closes the descriptors (on the clone thread).
fn close_host(host: &mut Host) {
    for (i, dev) in DEVS.iter().enumerate() {
        if !host.chans[i].is_null() {
            // SAFETY: a channel we got on this thread.
            unsafe { sys::spdk_put_io_channel(host.chans[i]) };
            host.chans[i] = null_mut();
        }
        if !host.descs[i].is_null() {
            // SAFETY: a desc we opened. An exclusive-write claim is SPDK's
            // v1 claim and must be released explicitly; the shared claim on
            // the source goes with its desc.
            unsafe {
                if host.claimed[i] && *dev != Dev::Source {
                    sys::spdk_bdev_module_release_bdev(sys::spdk_bdev_desc_get_bdev(host.descs[i]));
                }
                sys::spdk_bdev_close(host.descs[i]);
            }
            host.claimed[i] = false;
            host.descs[i] = null_mut();
        }
    }
}

impl CloneBdev {
    fn engine_mut(&mut self) -> &mut Engine<Host> {
        self.engine.as_mut().expect("engine")
    }

    pub fn engine(&self) -> &Engine<Host> {
        self.engine.as_ref().expect("engine")
    }

    /// Delivers what the engine queued (immediate failures, notices) until
    /// nothing is left. Called after every call into the engine.
    fn after_engine(&mut self) {
        loop {
            let host = &mut self.engine_mut().backend_mut();
            if let Some((id, r)) = host.deferred.pop_front() {
                self.engine_mut().complete(id, r);
                continue;
            }
            match host.notices.pop_front() {
                Some(n) => {
                    if self.handle_notice(n) {
                        return; // the clone is gone
                    }
                }
                None => return,
            }
        }
    }

    /// Returns true when the clone was freed.
    fn handle_notice(&mut self, n: Notice) -> bool {
        let name = self.params.name.clone();
        match n {
            Notice::Opened(Ok(info)) => {
                ffi::notice(&format!(
                    "bdev_clone {name}: {} metadata, {} of {} regions hydrated",
                    if info.formatted {
                        "formatted new"
                    } else {
                        "resumed from"
                    },
                    info.regions_hydrated,
                    info.geometry.region_count
                ));
                if let Err((errno, msg)) = self.register(info.geometry) {
                    if let Some(r) = self.create_req.take() {
                        r.err(errno, &msg);
                    }
                    return self.free_unregistered();
                }
                if let Some(r) = self.create_req.take() {
                    r.ok(json!(name));
                }
            }
            Notice::Opened(Err(e)) => {
                let errno = match e {
                    bdev_clone::OpenError::MetaTooSmall { .. } => libc_errno::ENOSPC,
                    bdev_clone::OpenError::Io(..) => libc_errno::EIO,
                    _ => libc_errno::EINVAL,
                };
                let msg = format!("cannot create clone '{name}': {e}");
                match self.create_req.take() {
                    Some(r) => r.err(errno, &msg),
                    None => ffi::error(&msg),
                }
                return self.free_unregistered();
            }
            Notice::Failed(msg) => ffi::error(&format!("bdev_clone {name}: {msg}")),
            Notice::Hydrated => ffi::notice(&format!("bdev_clone {name}: fully hydrated")),
            Notice::SourceReleased(r) => {
                if r.is_ok() {
                    self.close_source();
                    ffi::notice(&format!("bdev_clone {name}: source released"));
                }
                if let Some(req) = self.release_req.take() {
                    match r {
                        Ok(()) => req.ok(json!(true)),
                        Err(m) => req.err(libc_errno::EIO, &m),
                    }
                }
            }
            Notice::Stopped => {
                self.teardown();
                return true;
            }
        }
        false
    }

    fn register(&mut self, g: bdev_clone::Geometry) -> Result<(), RpcError> {
        let me = self as *mut CloneBdev;
        let host = &self.engine().backend_mut();
        let iodev = Arc::new(IoDevice {
            shared: self.engine().shared().clone(),
            descs: host.descs.map(AtomicPtr::new),
            thread: self.thread,
            clone: me,
        });
        // SAFETY: descs are open.
        let (src_align, dst_align) = unsafe {
            let a = |d: *mut sys::spdk_bdev_desc| {
                if d.is_null() {
                    0
                } else {
                    (*sys::spdk_bdev_desc_get_bdev(d)).required_alignment
                }
            };
            (a(host.descs[0]), a(host.descs[1]))
        };
        let io_device = Arc::as_ptr(&iodev) as *mut c_void;
        self.iodev = Some(iodev);
        let b = &mut *self.bdev;
        b.name = self.name.as_ptr() as *mut _;
        b.product_name = c"bdev_clone".as_ptr() as *mut _;
        // The clone acknowledges writes before they are durable: it has a
        // volatile cache, so upper layers must flush.
        b.write_cache = 1;
        b.blocklen = g.block_size;
        b.blockcnt = g.num_blocks;
        b.required_alignment = src_align.max(dst_align);
        b.optimal_io_boundary = g.region_blocks() as u32;
        b.__bindgen_anon_1.set_split_on_optimal_io_boundary(1);
        b.uuid = self.uuid;
        b.ctxt = io_device;
        b.fn_table = &FN_TABLE;
        b.module = module();
        // SAFETY: registering our io_device and the bdev; both live in boxes
        // that outlive the registration (freed in io_device_gone).
        unsafe {
            sys::spdk_io_device_register(
                io_device,
                Some(chan_create),
                Some(chan_destroy),
                std::mem::size_of::<Chan>() as u32,
                self.name.as_ptr(),
            );
            let rc = sys::spdk_bdev_register(&mut *self.bdev);
            if rc != 0 {
                sys::spdk_io_device_unregister(io_device, None);
                return Err((-rc, format!("spdk_bdev_register failed: {rc}")));
            }
            self.poller = sys::spdk_poller_register(Some(clone_poll), me as *mut c_void, 100);
        }
        self.registered = true;
        Ok(())
    }

    /// Frees a clone that never registered its bdev (failed create).
    fn free_unregistered(&mut self) -> bool {
        let me = self as *mut CloneBdev;
        CLONES.lock().unwrap().0.retain(|&p| p != me as usize);
        if self.engine.as_ref().is_some_and(|e| !e.idle()) {
            // Requests in flight will call back into this clone: leave it
            // allocated (never reached in practice: a failed open has nothing
            // in flight) rather than free memory they will touch.
            ffi::error(&format!(
                "bdev_clone {}: requests in flight after a failed open; leaking the clone",
                self.params.name
            ));
            return true;
        }
        if let Some(e) = self.engine.as_mut() {
            close_host(&mut e.backend_mut());
        }
        // SAFETY: no one else holds the pointer: not registered, removed from
        // the registry, nothing in flight.
        drop(unsafe { Box::from_raw(me) });
        true
    }

    pub fn unregister(&mut self) {
        if self.registered && !self.unregistering {
            self.unregistering = true;
            // SAFETY: our registered bdev; destruct follows.
            unsafe { sys::spdk_bdev_unregister(&mut *self.bdev, None, null_mut()) };
        }
    }

    fn close_source(&mut self) {
        let me = self.io_device();
        if let Some(d) = &self.iodev {
            d.descs[0].store(null_mut(), Ordering::Release);
        }
        // Every thread puts its source channel, then the descriptor closes.
        // SAFETY: iterating our own io_device's channels.
        unsafe {
            sys::spdk_for_each_channel(
                me,
                Some(put_source_channel),
                null_mut(),
                Some(source_channels_put),
            );
        }
    }

    fn io_device(&self) -> *mut c_void {
        self.iodev
            .as_ref()
            .map_or(null_mut(), |d| Arc::as_ptr(d) as *mut c_void)
    }

    fn teardown(&mut self) {
        if !self.poller.is_null() {
            // SAFETY: our poller, on its thread.
            unsafe { sys::spdk_poller_unregister(&mut self.poller) };
        }
        // SAFETY: our io_device; the callback finishes the destruct.
        unsafe { sys::spdk_io_device_unregister(self.io_device(), Some(io_device_gone)) };
    }

    pub fn info(&self) -> Value {
        let s = self.engine().status();
        let g = s.geometry;
        let p = &self.params;
        json!({
            "name": p.name,
            "uuid": uuid_string(&self.uuid),
            "source_bdev": p.source_bdev,
            "destination_bdev": p.destination_bdev,
            "metadata_bdev": p.metadata_bdev,
            "region_size_kb": g.region_size / 1024,
            "block_size": g.block_size,
            "num_blocks": g.num_blocks,
            "regions_total": s.regions_total,
            "regions_hydrated": s.stats.regions_hydrated,
            "regions_committed": self.engine().committed_regions(),
            "regions_hydrating": s.stats.regions_hydrating,
            "percent": (s.percent() * 100.0).round() / 100.0,
            "rate_mb_sec": s.stats.rate_bytes_sec as f64 / (1024.0 * 1024.0),
            "eta_sec": s.eta_sec,
            "hydration_seconds": (s.stats.hydration_ns / 1_000_000) as f64 / 1000.0,
            "state": s.state.as_str(),
            "error": s.error,
            "hydration_errors": s.stats.hydration_errors,
            "commits": s.stats.commits,
            "metadata_bytes_written": s.stats.meta_bytes_written,
            "destination_write_cache": self.dest_write_cache,
            "destination_flush_sent": self.dest_flush_sent,
            "hydration_enabled": s.settings.hydration_enabled,
            "hydration_threshold": s.settings.hydration_threshold,
            "hydration_batch_size": s.settings.hydration_batch_size,
            "max_bandwidth_mb_sec": s.settings.max_bandwidth_mb_sec,
            "max_bandwidth_busy_mb_sec": s.settings.max_bandwidth_busy_mb_sec,
            "commit_interval_ms": s.settings.commit_interval_ms,
            "discard_passdown": s.settings.discard_passdown,
        })
    }

    /// The `bdev_clone_create` call that recreates this clone (and resumes it).
    pub fn config(&self) -> Value {
        let s = self.engine().settings();
        let p = &self.params;
        json!({
            "method": "bdev_clone_create",
            "params": {
                "name": p.name,
                "source_bdev": p.source_bdev,
                "destination_bdev": p.destination_bdev,
                "metadata_bdev": p.metadata_bdev,
                "region_size_kb": self.engine().geometry().region_size / 1024,
                "uuid": uuid_string(&self.uuid),
                "no_hydration": !s.hydration_enabled,
                "hydration_threshold": s.hydration_threshold,
                "hydration_batch_size": s.hydration_batch_size,
                "max_bandwidth_mb_sec": s.max_bandwidth_mb_sec,
                "max_bandwidth_busy_mb_sec": s.max_bandwidth_busy_mb_sec,
                "commit_interval_ms": s.commit_interval_ms,
                "no_discard_passdown": p.no_discard_passdown,
                "allow_unflushed_destination": p.allow_unflushed_destination,
                "wait_for_bases": true,
                "source_released": self.engine().state() == CloneState::SourceReleased,
            }
        })
    }

    pub fn set_settings(&mut self, s: Settings) {
        self.engine_mut().set_settings(s);
    }

    pub fn settings(&self) -> Settings {
        self.engine().settings().clone()
    }

    pub fn release_source(&mut self, reply: Responder) {
        if self.release_req.is_some() {
            return reply.err(libc_errno::EBUSY, "release already in progress");
        }
        match self.engine_mut().release_source() {
            Ok(()) => {
                self.release_req = Some(reply);
                self.after_engine();
            }
            Err(m) => {
                let errno = if m.contains("not fully hydrated") {
                    libc_errno::EBUSY
                } else {
                    libc_errno::EINVAL
                };
                reply.err(
                    errno,
                    &format!("cannot release the source of '{}': {m}", self.params.name),
                )
            }
        }
    }

    /// Registered and not being deleted.
    pub fn is_open(&self) -> bool {
        self.registered && !self.unregistering
    }

    pub fn delete(&mut self, reply: Responder) {
        if !self.registered {
            return reply.err(
                libc_errno::EBUSY,
                &format!("clone '{}' is still opening", self.params.name),
            );
        }
        if self.unregistering {
            return reply.err(
                libc_errno::EBUSY,
                &format!("clone '{}' is already being deleted", self.params.name),
            );
        }
        self.unregistering = true;
        let arg = Box::into_raw(Box::new(reply)) as *mut c_void;
        // SAFETY: our registered bdev; delete_done frees the boxed responder.
        unsafe { sys::spdk_bdev_unregister(&mut *self.bdev, Some(delete_done), arg) };
    }

    pub fn state(&self) -> CloneState {
        self.engine().state()
    }
}

fn uuid_string(u: &sys::spdk_uuid) -> String {
    let mut buf = [0 as std::ffi::c_char; 37];
    // SAFETY: a 37-byte buffer is what spdk_uuid_fmt_lower needs.
    unsafe { sys::spdk_uuid_fmt_lower(buf.as_mut_ptr(), buf.len(), u) };
    // SAFETY: NUL-terminated by spdk_uuid_fmt_lower.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

unsafe extern "C" fn clone_poll(arg: *mut c_void) -> c_int {
    ffi::guard("clone_poll", 0, || {
        // SAFETY: the poller's arg is the live clone; unregistered before free.
        let c = unsafe { &mut *(arg as *mut CloneBdev) };
        let e = c.engine_mut();
        let retries: Vec<_> = e.backend_mut().retry.drain(..).collect();
        for (id, dev, op) in retries {
            e.backend_mut().submit(id, dev, op);
        }
        e.poll();
        c.after_engine();
        sys::SPDK_POLLER_BUSY as c_int
    })
}

unsafe extern "C" fn put_source_channel(i: *mut sys::spdk_io_channel_iter) {
    // SAFETY: iterating our io_device: the channel ctx is a Chan.
    unsafe {
        let ch = sys::spdk_io_channel_iter_get_channel(i);
        let chan = &mut *(bdev_clone_channel_ctx(ch) as *mut Chan);
        if !chan.src.is_null() {
            sys::spdk_put_io_channel(chan.src);
            chan.src = null_mut();
            chan.src_desc = null_mut();
        }
        sys::spdk_for_each_channel_continue(i, 0);
    }
}

unsafe extern "C" fn source_channels_put(i: *mut sys::spdk_io_channel_iter, _status: c_int) {
    ffi::guard("source_channels_put", (), || {
        // SAFETY: the io_device is the live clone's IoDevice, on the clone thread.
        let c = unsafe {
            &mut *(*(sys::spdk_io_channel_iter_get_io_device(i) as *const IoDevice)).clone
        };
        let host = &mut c.engine_mut().backend_mut();
        // SAFETY: the engine's own source channel and desc, on this thread.
        unsafe {
            if !host.chans[0].is_null() {
                sys::spdk_put_io_channel(host.chans[0]);
                host.chans[0] = null_mut();
            }
            if !host.descs[0].is_null() {
                sys::spdk_bdev_close(host.descs[0]);
                host.descs[0] = null_mut();
            }
        }
    })
}

unsafe extern "C" fn io_device_gone(arg: *mut c_void) {
    ffi::guard("io_device_gone", (), || {
        // SAFETY: the IoDevice outlives this call (the clone holds it).
        let me = unsafe { (*(arg as *const IoDevice)).clone };
        CLONES.lock().unwrap().0.retain(|&p| p != me as usize);
        // SAFETY: the last reference: channels are gone, the bdev is being destructed.
        let mut c = unsafe { Box::from_raw(me) };
        if let Some(e) = c.engine.as_mut() {
            close_host(&mut e.backend_mut());
        }
        // SAFETY: finishing the destruct we returned 1 for.
        unsafe { sys::spdk_bdev_destruct_done(&mut *c.bdev, 0) };
        ffi::notice(&format!("bdev_clone {}: stopped", c.params.name));
        drop(c);
    })
}

/// What the I/O path on any thread needs of a clone. Its address is the
/// io_device and the bdev's ctxt.
pub struct IoDevice {
    shared: Arc<Shared>,
    descs: [AtomicPtr<sys::spdk_bdev_desc>; 3],
    thread: *mut sys::spdk_thread,
    /// Dereferenced only on `thread`.
    clone: *mut CloneBdev,
}

// SAFETY: `thread` is an opaque handle; `clone` is dereferenced only on that
// thread (others send it messages); the rest is Sync by itself.
unsafe impl Send for IoDevice {}
unsafe impl Sync for IoDevice {}

/// Per-thread channel of the clone.
#[repr(C)]
struct Chan {
    dev: *const IoDevice,
    src_desc: *mut sys::spdk_bdev_desc,
    dst_desc: *mut sys::spdk_bdev_desc,
    src: *mut sys::spdk_io_channel,
    dst: *mut sys::spdk_io_channel,
}

unsafe extern "C" fn chan_create(io_device: *mut c_void, ctx: *mut c_void) -> c_int {
    ffi::guard("chan_create", -libc_errno::ENOMEM, || {
        let dev = io_device as *const IoDevice;
        // SAFETY: the IoDevice lives until io_device_gone; ctx is SPDK's
        // channel context, sized for a Chan.
        unsafe {
            Arc::increment_strong_count(dev);
            let d = &*dev;
            let chan = &mut *(ctx as *mut Chan);
            chan.dev = dev;
            chan.src_desc = d.descs[0].load(Ordering::Acquire);
            chan.dst_desc = d.descs[1].load(Ordering::Acquire);
            chan.src = if chan.src_desc.is_null() {
                null_mut()
            } else {
                sys::spdk_bdev_get_io_channel(chan.src_desc)
            };
            chan.dst = sys::spdk_bdev_get_io_channel(chan.dst_desc);
            if chan.dst.is_null() {
                Arc::decrement_strong_count(dev);
                return -libc_errno::ENOMEM;
            }
        }
        0
    })
}

unsafe extern "C" fn chan_destroy(_io_device: *mut c_void, ctx: *mut c_void) {
    ffi::guard("chan_destroy", (), || {
        // SAFETY: a Chan made by chan_create.
        unsafe {
            let chan = &mut *(ctx as *mut Chan);
            if !chan.src.is_null() {
                sys::spdk_put_io_channel(chan.src);
            }
            sys::spdk_put_io_channel(chan.dst);
            Arc::decrement_strong_count(chan.dev);
        }
    })
}

/// Only the callbacks the clone implements; the rest stay NULL, whatever
/// fields this SPDK version's table has (it grows between releases).
static FN_TABLE: sys::spdk_bdev_fn_table = {
    // SAFETY: a table of nullable function pointers: all-zero is all-NULL.
    let mut t: sys::spdk_bdev_fn_table = unsafe { std::mem::zeroed() };
    t.destruct = Some(fn_destruct);
    t.submit_request = Some(fn_submit);
    t.io_type_supported = Some(fn_io_type_supported);
    t.get_io_channel = Some(fn_get_io_channel);
    t.dump_info_json = Some(fn_dump_info_json);
    t
};

unsafe extern "C" fn fn_destruct(ctx: *mut c_void) -> c_int {
    ffi::guard("destruct", 0, || {
        // SAFETY: ctxt is the IoDevice; destruct runs on the clone thread.
        let c = unsafe { &mut *(*(ctx as *const IoDevice)).clone };
        c.unregistering = true;
        c.engine_mut().shutdown();
        c.after_engine();
        1 // finished by spdk_bdev_destruct_done in io_device_gone
    })
}

unsafe extern "C" fn fn_io_type_supported(ctx: *mut c_void, t: sys::spdk_bdev_io_type) -> bool {
    let _ = ctx;
    matches!(
        t,
        sys::SPDK_BDEV_IO_TYPE_READ
            | sys::SPDK_BDEV_IO_TYPE_WRITE
            | sys::SPDK_BDEV_IO_TYPE_FLUSH
            | sys::SPDK_BDEV_IO_TYPE_RESET
            | sys::SPDK_BDEV_IO_TYPE_UNMAP
            | sys::SPDK_BDEV_IO_TYPE_WRITE_ZEROES
    )
}

unsafe extern "C" fn fn_get_io_channel(ctx: *mut c_void) -> *mut sys::spdk_io_channel {
    // SAFETY: ctxt is our io_device.
    unsafe { sys::spdk_get_io_channel(ctx) }
}

unsafe extern "C" fn fn_dump_info_json(
    ctx: *mut c_void,
    w: *mut sys::spdk_json_write_ctx,
) -> c_int {
    ffi::guard("dump_info_json", 0, || {
        // SAFETY: ctxt is the live clone; w is SPDK's writer inside an object.
        unsafe {
            let c = &*(*(ctx as *const IoDevice)).clone;
            sys::spdk_json_write_name(w, c"clone".as_ptr());
            ffi::write_value(w, &c.info());
        }
        0
    })
}

fn user_io(bdev_io: *mut sys::spdk_bdev_io) -> Option<UserIo> {
    // SAFETY: a live bdev_io handed to submit_request.
    let (t, off, n) = unsafe {
        let b = &*bdev_io;
        (b.type_ as u32, b.u.bdev.offset_blocks, b.u.bdev.num_blocks)
    };
    let kind = match t {
        sys::SPDK_BDEV_IO_TYPE_READ => UserOp::Read,
        sys::SPDK_BDEV_IO_TYPE_WRITE => UserOp::Write { fua: false },
        sys::SPDK_BDEV_IO_TYPE_FLUSH => UserOp::Flush,
        sys::SPDK_BDEV_IO_TYPE_RESET => UserOp::Reset,
        sys::SPDK_BDEV_IO_TYPE_UNMAP => UserOp::Unmap,
        sys::SPDK_BDEV_IO_TYPE_WRITE_ZEROES => UserOp::WriteZeroes,
        _ => return None,
    };
    let (off, n) = match kind {
        UserOp::Flush | UserOp::Reset => (0, 0),
        _ => (off, n),
    };
    Some(UserIo {
        id: UserIoId(bdev_io as u64),
        kind,
        offset_blocks: off,
        num_blocks: n,
    })
}

unsafe extern "C" fn fn_submit(ch: *mut sys::spdk_io_channel, bdev_io: *mut sys::spdk_bdev_io) {
    ffi::guard("submit_request", (), || {
        // SAFETY: SPDK hands us a live io and our channel.
        unsafe {
            if (*bdev_io).type_ as u32 == sys::SPDK_BDEV_IO_TYPE_READ {
                let len = (*bdev_io).u.bdev.num_blocks * (*(*bdev_io).bdev).blocklen as u64;
                sys::spdk_bdev_io_get_buf(bdev_io, Some(read_buf_ready), len);
            } else {
                route(ch, bdev_io);
            }
        }
    })
}

unsafe extern "C" fn read_buf_ready(
    ch: *mut sys::spdk_io_channel,
    bdev_io: *mut sys::spdk_bdev_io,
    ok: bool,
) {
    ffi::guard("read_buf_ready", (), || {
        if !ok {
            complete_bdev_io(bdev_io, false);
            return;
        }
        route(ch, bdev_io)
    })
}

unsafe extern "C" fn passthrough_done(
    child: *mut sys::spdk_bdev_io,
    success: bool,
    parent: *mut c_void,
) {
    ffi::guard("passthrough_done", (), || {
        let parent = parent as *mut sys::spdk_bdev_io;
        // SAFETY: the child is ours to free; the parent is the user's live io,
        // on this (its submitting) thread.
        unsafe {
            if success {
                sys::spdk_bdev_io_complete(parent, sys::SPDK_BDEV_IO_STATUS_SUCCESS);
            } else {
                sys::spdk_bdev_io_complete_base_io_status(parent, child);
            }
            sys::spdk_bdev_free_io(child);
        }
    })
}

struct EngineMsg {
    clone: *mut CloneBdev,
    io: UserIo,
}

unsafe extern "C" fn engine_msg(arg: *mut c_void) {
    ffi::guard("engine_msg", (), || {
        // SAFETY: boxed by route; the clone is alive while it has I/O.
        let m = unsafe { Box::from_raw(arg as *mut EngineMsg) };
        let c = unsafe { &mut *m.clone };
        c.engine_mut().submit(m.io);
        c.after_engine();
    })
}

/// The per-thread I/O path.
fn route(ch: *mut sys::spdk_io_channel, bdev_io: *mut sys::spdk_bdev_io) {
    // SAFETY: our channel's context is a Chan made by chan_create, whose
    // IoDevice it keeps alive.
    let chan = unsafe { &*(bdev_clone_channel_ctx(ch) as *mut Chan) };
    let dev = unsafe { &*chan.dev };
    let Some(io) = user_io(bdev_io) else {
        complete_bdev_io(bdev_io, false);
        return;
    };
    let (desc, ch) = match dev.shared.route(&io) {
        Route::Dest => (chan.dst_desc, chan.dst),
        Route::Source if !chan.src.is_null() => (chan.src_desc, chan.src),
        Route::Source | Route::Reject(_) => return complete_bdev_io(bdev_io, false),
        Route::Engine => {
            // SAFETY: the clone is dereferenced only on its own thread; other
            // threads send it a boxed message.
            unsafe {
                if sys::spdk_get_thread() == dev.thread {
                    let c = &mut *dev.clone;
                    c.engine_mut().submit(io);
                    c.after_engine();
                } else {
                    let m = Box::into_raw(Box::new(EngineMsg {
                        clone: dev.clone,
                        io,
                    })) as *mut c_void;
                    sys::spdk_thread_send_msg(dev.thread, Some(engine_msg), m);
                }
            }
            return;
        }
    };
    let (iov, cnt) = user_iov(io.id);
    // SAFETY: desc and channel belong to this thread's Chan; the user's
    // iovecs are passed through untouched.
    let rc = unsafe {
        let done = Some(passthrough_done as unsafe extern "C" fn(_, _, _));
        let arg = bdev_io as *mut c_void;
        if io.kind == UserOp::Read {
            sys::spdk_bdev_readv_blocks(
                desc,
                ch,
                iov,
                cnt,
                io.offset_blocks,
                io.num_blocks,
                done,
                arg,
            )
        } else {
            sys::spdk_bdev_writev_blocks(
                desc,
                ch,
                iov,
                cnt,
                io.offset_blocks,
                io.num_blocks,
                done,
                arg,
            )
        }
    };
    if rc != 0 {
        let status = if rc == -libc_errno::ENOMEM {
            sys::SPDK_BDEV_IO_STATUS_NOMEM
        } else {
            sys::SPDK_BDEV_IO_STATUS_FAILED
        };
        // SAFETY: completing the user's io on its own thread.
        unsafe { sys::spdk_bdev_io_complete(bdev_io, status) };
    }
}
