//! Creating and deleting a clone: validate, open and claim the base bdevs,
//! start the engine; once it has opened the metadata, register the bdev.

use crate::backend::{dev_index, Base, SpdkBackend, DEVS};
use crate::channel::{chan_create, chan_destroy, Chan, IoDevice};
use crate::ffi::{self, Responder};
use crate::module::{bases_exist, bdev_by_name, find_clone, module, CLONES, PENDING};
use crate::vbdev::{clone_poll, CloneBdev, FN_TABLE};
use bdev_clone::params::CreateParams;
use bdev_clone::{Dev, DeviceInfo, Engine, OpenParams};
use serde_json::json;
use spdk_sys as sys;
use std::ffi::{c_int, c_void, CStr, CString};
use std::ptr::null_mut;
use std::sync::atomic::AtomicPtr;
use std::sync::Arc;

/// An RPC failure: errno and message.
pub type RpcError = (i32, String);

fn einval(msg: impl Into<String>) -> RpcError {
    (libc::EINVAL, msg.into())
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

/// Validates, opens and claims the base bdevs, then starts the engine. The
/// reply is sent when the metadata is loaded or formatted.
pub fn create(p: CreateParams, reply: Responder) {
    if p.wait_for_bases && !bases_exist(&p) {
        let mut pending = PENDING.lock().unwrap();
        if pending.iter().any(|q| q.name == p.name) || find_clone(&p.name).is_some() {
            return reply.err(
                libc::EEXIST,
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

pub(crate) fn start_create(p: CreateParams) -> Result<*mut CloneBdev, RpcError> {
    p.validate().map_err(einval)?;
    if bdev_by_name(&p.name).is_some() || find_clone(&p.name).is_some() {
        return Err((
            libc::EEXIST,
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
            libc::ENODEV,
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
    let mut backend = SpdkBackend::new(clone);
    for (i, dev) in DEVS.iter().enumerate() {
        if released && *dev == Dev::Source {
            continue;
        }
        // SAFETY: properties of a registered bdev.
        let flush_needed = unsafe {
            sys::spdk_bdev_has_write_cache(bdevs[i])
                && sys::spdk_bdev_io_type_supported(bdevs[i], sys::SPDK_BDEV_IO_TYPE_FLUSH)
        };
        match open_base(clone, *dev, which[i], names[i], flush_needed) {
            Ok(base) => backend.attach(*dev, base),
            Err(e) => {
                backend.close();
                // SAFETY: not registered anywhere yet.
                drop(unsafe { Box::from_raw(clone) });
                return Err(e);
            }
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
    unsafe { (*clone).engine = Some(Engine::open(backend, params)) };
    Ok(clone)
}

/// Opens `name` (the `param` of the create call) with our hot-remove
/// callback, claims it (the source shared, read-only; the others exclusive
/// write) and gets a channel on this (the clone's) thread. On failure nothing
/// stays open.
fn open_base(
    clone: *mut CloneBdev,
    dev: Dev,
    param: &str,
    name: &str,
    flush_needed: bool,
) -> Result<Base, RpcError> {
    let n = CString::new(name).map_err(|_| einval(format!("{param} contains NUL")))?;
    let write = dev != Dev::Source;
    let mut desc = null_mut();
    // SAFETY: opening by name with our event callback and a tagged ctx.
    let rc = unsafe {
        sys::spdk_bdev_open_ext(
            n.as_ptr(),
            write,
            Some(base_event),
            tag(clone, dev),
            &mut desc,
        )
    };
    if rc == -libc::EPERM || rc == -libc::EBUSY {
        // EPERM: claimed for exclusive write by another module or clone.
        return Err((
            libc::EBUSY,
            format!("{param} '{name}' is claimed by another module or clone"),
        ));
    }
    if rc != 0 {
        return Err((-rc, format!("cannot open {param} '{name}': error {rc}")));
    }
    let mut base = Base {
        desc,
        chan: null_mut(),
        release_claim: false,
        flush_needed,
    };
    let claim = if write {
        sys::SPDK_BDEV_CLAIM_EXCL_WRITE
    } else {
        sys::SPDK_BDEV_CLAIM_READ_MANY_WRITE_NONE
    };
    // SAFETY: the desc is open; default claim options.
    let rc = unsafe { sys::spdk_bdev_module_claim_bdev_desc(desc, claim, null_mut(), module()) };
    if rc != 0 {
        base.close();
        return Err((
            libc::EBUSY,
            format!("{param} '{name}' is already claimed by another module"),
        ));
    }
    base.release_claim = write;
    // SAFETY: the desc is open on this thread.
    base.chan = unsafe { sys::spdk_bdev_get_io_channel(desc) };
    if base.chan.is_null() {
        base.close();
        return Err((libc::ENOMEM, "no I/O channel".into()));
    }
    Ok(base)
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

impl CloneBdev {
    pub(crate) fn register(&mut self, g: bdev_clone::Geometry) -> Result<(), RpcError> {
        let me = self as *mut CloneBdev;
        let backend = self.engine().backend();
        let descs = DEVS.map(|d| backend.desc(d));
        let iodev = Arc::new(IoDevice {
            shared: self.engine().shared().clone(),
            descs: descs.map(AtomicPtr::new),
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
            (a(descs[0]), a(descs[1]))
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
    pub(crate) fn free_unregistered(&mut self) -> bool {
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
            e.backend_mut().close();
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

    pub fn delete(&mut self, reply: Responder) {
        if !self.registered {
            return reply.err(
                libc::EBUSY,
                &format!("clone '{}' is still opening", self.params.name),
            );
        }
        if self.unregistering {
            return reply.err(
                libc::EBUSY,
                &format!("clone '{}' is already being deleted", self.params.name),
            );
        }
        self.unregistering = true;
        let arg = Box::into_raw(Box::new(reply)) as *mut c_void;
        // SAFETY: our registered bdev; delete_done frees the boxed responder.
        unsafe { sys::spdk_bdev_unregister(&mut *self.bdev, Some(delete_done), arg) };
    }
}
