//! Creating and deleting a clone: gather what SPDK knows of the base bdevs,
//! let the engine's plan decide (bdev_clone::plan), open and claim the bases
//! it lists and start the engine; once the engine has opened the metadata,
//! register the bdev. Hot removal of a base bdev, and delete.

use crate::backend::{dev_index, Base, SpdkBackend, DEVS};
use crate::channel::{chan_create, chan_destroy, Chan, IoDevice};
use crate::examine;
use crate::ffi::{self, Responder};
use crate::json::uuid_string;
use crate::module::{bdev_by_name, find_clone, module, CLONES};
use crate::vbdev::{CloneBdev, FN_TABLE};
use bdev_clone::params::CreateParams;
use bdev_clone::plan::{self, BaseFacts, BaseOpen, Facts};
use bdev_clone::stack::{self, FlushCheck, FlushVerdict, StackNode};
use bdev_clone::{Dev, Engine};
use serde_json::json;
use spdk_sys as sys;
use std::ffi::{c_int, c_void, CStr, CString};
use std::ptr::null_mut;
use std::sync::atomic::AtomicPtr;
use std::sync::Arc;

/// An RPC failure: errno and message.
pub type RpcError = bdev_clone::plan::Refusal;

fn tag(clone: *mut CloneBdev, dev: Dev) -> *mut c_void {
    (clone as usize | dev_index(dev)) as *mut c_void
}

unsafe extern "C" fn base_event(
    kind: sys::spdk_bdev_event_type,
    bdev: *mut sys::spdk_bdev,
    ctx: *mut c_void,
) {
    ffi::guard("base_event", (), || {
        let clone = (ctx as usize & !3) as *mut CloneBdev;
        let dev = DEVS[ctx as usize & 3];
        // The tag was made from a live clone whose descs are open.
        CloneBdev::guarded(clone, "base_event", |c| c.base_event(kind, dev, bdev));
    })
}

impl CloneBdev {
    /// A base bdev is going away or changed size; what it means is the
    /// engine's (`Engine::device_lost`, `device_resized`).
    fn base_event(&mut self, kind: sys::spdk_bdev_event_type, dev: Dev, bdev: *mut sys::spdk_bdev) {
        let name = self.params.name.clone();
        let carries_on = match kind {
            sys::SPDK_BDEV_EVENT_REMOVE => {
                ffi::error(&format!("bdev_clone {name}: the {dev} bdev was removed"));
                let on = self.engine_mut().device_lost(dev);
                if on && dev == Dev::Source && self.registered {
                    // Closed once the engine's reads of it are done.
                    self.close_source_pending = true;
                }
                on
            }
            sys::SPDK_BDEV_EVENT_RESIZE => {
                // SAFETY: the bdev the event is about, still registered.
                let blocks = unsafe { sys::spdk_bdev_get_num_blocks(bdev) };
                ffi::notice(&format!(
                    "bdev_clone {name}: the {dev} bdev now has {blocks} blocks"
                ));
                self.engine_mut().device_resized(dev, blocks)
            }
            _ => true,
        };
        self.after_engine();
        if !carries_on {
            self.unregister();
        }
    }
}

/// What SPDK knows of the bdev called `name`, for the plan. For a bdev the
/// clone writes (`written`: destination, metadata), whether it has a
/// volatile cache and whether its flushes reach it come from a walk down its
/// stack (`bdev_clone::stack`): an lvol or raid reports no cache of its own
/// over an NVMe drive that has one. The source is only read: no walk.
fn base_facts(name: &str, written: bool) -> (BaseFacts, Option<FlushCheck>) {
    let Some(b) = bdev_by_name(name) else {
        return (BaseFacts::default(), None);
    };
    let check = written.then(|| {
        let mut top = stack_of(b, 0);
        // The name the operator gave (an lvol's alias, not its UUID name).
        top.name = name.to_string();
        stack::check_flushes(&top)
    });
    if let Some(FlushCheck {
        path,
        verdict: FlushVerdict::Unknown { at },
    }) = &check
    {
        ffi::warn(&format!(
            "bdev_clone: cannot tell whether flushes of '{name}' reach its devices: the stack \
             is unknown below '{at}' (path {path:?})"
        ));
    }
    // SAFETY: properties of a registered bdev, read on the app thread.
    let facts = unsafe {
        BaseFacts {
            exists: true,
            block_size: sys::spdk_bdev_get_block_size(b),
            num_blocks: sys::spdk_bdev_get_num_blocks(b),
            uuid: (*sys::spdk_bdev_get_uuid(b)).u.raw,
            write_cache: sys::spdk_bdev_has_write_cache(b)
                || check.as_ref().is_some_and(|c| c.volatile()),
            flush_supported: sys::spdk_bdev_io_type_supported(b, sys::SPDK_BDEV_IO_TYPE_FLUSH),
            flush_reaches_device: check.as_ref().is_none_or(|c| c.reaches_devices()),
            flush_dropped: check
                .as_ref()
                .filter(|c| matches!(c.verdict, FlushVerdict::Dropped { .. }))
                .map(|c| c.describe()),
            unmap_supported: sys::spdk_bdev_io_type_supported(b, sys::SPDK_BDEV_IO_TYPE_UNMAP),
        }
    };
    (facts, check)
}

/// `bdev` and what its module names below it, down to the devices.
fn stack_of(bdev: *mut sys::spdk_bdev, depth: u32) -> StackNode {
    // SAFETY: `bdev` is registered; properties read on the app thread; the
    // NVMe options are copied into a local of the size we pass.
    let mut node = unsafe {
        let module = CStr::from_ptr(sys::spdk_bdev_get_module_name(bdev))
            .to_string_lossy()
            .into_owned();
        let drops_flushes = module == "nvme" && {
            let mut opts: sys::spdk_bdev_nvme_opts = std::mem::zeroed();
            sys::spdk_bdev_nvme_get_opts(
                &mut opts,
                std::mem::size_of::<sys::spdk_bdev_nvme_opts>(),
            );
            !opts.enable_flush
        };
        StackNode {
            name: CStr::from_ptr(sys::spdk_bdev_get_name(bdev))
                .to_string_lossy()
                .into_owned(),
            module,
            write_cache: sys::spdk_bdev_has_write_cache(bdev),
            flush_supported: sys::spdk_bdev_io_type_supported(bdev, sys::SPDK_BDEV_IO_TYPE_FLUSH),
            drops_flushes,
            bases: Vec::new(),
        }
    };
    if depth < 16 {
        for name in stack::base_names(&ffi::driver_specific(bdev)) {
            if let Some(b) = bdev_by_name(&name) {
                node.bases.push(stack_of(b, depth + 1));
            }
        }
    }
    node
}

fn random_uuid() -> [u8; 16] {
    let mut u = sys::spdk_uuid::default();
    // SAFETY: fills a local; its raw bytes are the whole union.
    unsafe {
        sys::spdk_uuid_generate(&mut u);
        u.u.raw
    }
}

/// Everything the plan needs to know, gathered on the app thread.
/// With the flush checks of the destination and the metadata.
fn facts(p: &CreateParams) -> (Facts, [Option<FlushCheck>; 2]) {
    let (dest, dest_check) = base_facts(&p.destination_bdev, true);
    let (meta, meta_check) = base_facts(&p.metadata_bdev, true);
    let facts = Facts {
        name_taken: bdev_by_name(&p.name).is_some() || find_clone(&p.name).is_some(),
        source: base_facts(&p.source_bdev, false).0,
        dest,
        meta,
        random_uuid: random_uuid(),
        nonce: u64::from_le_bytes(random_uuid()[..8].try_into().unwrap()),
    };
    (facts, [dest_check, meta_check])
}

/// Validates, opens and claims the base bdevs, then starts the engine. The
/// reply is sent when the metadata is loaded or formatted.
///
/// With `wait_for_bases` (as save_config writes it), a create whose bases
/// are missing waits for them (`examine::wait`). A create of a clone that
/// exists over the same bases (examine assembled it before a config's create
/// ran) is no error: its run-time settings are applied and it answers the
/// name, so that a config and examine can both bring a clone back.
pub fn create(p: CreateParams, reply: Responder) {
    if let Some(c) = find_clone(&p.name) {
        // SAFETY: registry pointers are live on this thread.
        let c = unsafe { &mut *c };
        let q = &c.params;
        let same = q.destination_bdev == p.destination_bdev
            && q.metadata_bdev == p.metadata_bdev
            && (q.source_bdev == p.source_bdev || p.source_released)
            && p.uuid
                .as_ref()
                .is_none_or(|u| u.eq_ignore_ascii_case(&uuid_string(&c.uuid)));
        if same && !c.unregistering {
            if let Err(m) = p.validate() {
                return reply.err(libc::EINVAL, &m);
            }
            ffi::notice(&format!(
                "bdev_clone {}: already assembled over these bases; settings applied",
                p.name
            ));
            let s = p.as_set_hydration().apply(c.settings());
            c.set_settings(s);
            return reply.ok(json!(p.name));
        }
    }
    if p.wait_for_bases && !plan::bases_ready(&p, |n| bdev_by_name(n).is_some()) {
        return examine::wait(p, reply);
    }
    // A waiting clone stops waiting and is created with these parameters;
    // if that fails it waits again.
    if let Some(meta) = examine::waiting_metadata(&p.name) {
        if meta != p.metadata_bdev {
            return reply.err(
                libc::EEXIST,
                &format!(
                    "a clone named '{}' already waits for metadata bdev '{meta}'",
                    p.name
                ),
            );
        }
    }
    let waited = examine::take_waiting(&p.name);
    match start_create(p) {
        Ok(clone) => {
            // SAFETY: freshly created, live.
            let c = unsafe { &mut *clone };
            c.create_req = Some(reply);
            c.after_engine();
        }
        Err((errno, msg)) => {
            if let Some(w) = waited {
                examine::failed(w, &msg);
            }
            reply.err(errno, &msg)
        }
    }
}

/// Plans the create, opens and claims the bases the plan lists, then starts
/// the engine (which reads or formats the metadata and notifies Opened).
pub(crate) fn start_create(p: CreateParams) -> Result<*mut CloneBdev, RpcError> {
    let (facts, flush_checks) = facts(&p);
    let plan = plan::plan(&p, &facts)?;
    let mut uuid = sys::spdk_uuid::default();
    uuid.u.raw = plan.uuid;
    let clone = Box::into_raw(Box::new(CloneBdev {
        // SAFETY: spdk_bdev is a plain C struct; zeroed is its initial state.
        bdev: Box::new(unsafe { std::mem::zeroed() }),
        iodev: None,
        name: CString::new(p.name.as_str()).expect("validated: no NUL"),
        params: p,
        engine: None,
        // SAFETY: called on an SPDK thread (the RPC thread).
        thread: unsafe { sys::spdk_get_thread() },
        poller: null_mut(),
        stopped: false,
        teardown_pending: false,
        close_source_pending: false,
        uuid,
        registered: false,
        events: Default::default(),
        unregistering: false,
        create_req: None,
        release_req: None,
        dest_write_cache: plan.dest_write_cache,
        dest_flush_sent: plan.dest_flush_sent,
        flush_checks,
    }));
    let mut backend = SpdkBackend::new(clone);
    for base in &plan.bases {
        match open_base(clone, base) {
            Ok(b) => backend.attach(base.dev, b),
            Err(e) => {
                backend.close();
                // SAFETY: not registered anywhere yet.
                drop(unsafe { Box::from_raw(clone) });
                return Err(e);
            }
        }
    }
    CLONES.lock().unwrap().0.push(clone as usize);
    // SAFETY: live, just allocated.
    unsafe { (*clone).engine = Some(Engine::open(backend, plan.open)) };
    Ok(clone)
}

/// Opens a base bdev with our hot-remove callback, claims it as the plan
/// says (the source shared and read-only, the others exclusive write) and
/// gets a channel on this (the clone's) thread. On failure nothing stays open.
fn open_base(clone: *mut CloneBdev, base: &BaseOpen) -> Result<Base, RpcError> {
    let (param, name) = (base.param, base.name.as_str());
    let n = CString::new(name).map_err(|_| (libc::EINVAL, format!("{param} contains NUL")))?;
    let write = base.write;
    let mut desc = null_mut();
    // SAFETY: opening by name with our event callback and a tagged ctx.
    let rc = unsafe {
        sys::spdk_bdev_open_ext(
            n.as_ptr(),
            write,
            Some(base_event),
            tag(clone, base.dev),
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
    let mut opened = Base {
        desc,
        chan: null_mut(),
        release_claim: false,
        flush_needed: base.flush_needed,
    };
    let claim = if write {
        sys::SPDK_BDEV_CLAIM_EXCL_WRITE
    } else {
        sys::SPDK_BDEV_CLAIM_READ_MANY_WRITE_NONE
    };
    // SAFETY: the desc is open; default claim options.
    let rc = unsafe { sys::spdk_bdev_module_claim_bdev_desc(desc, claim, null_mut(), module()) };
    if rc != 0 {
        opened.close();
        return Err((
            libc::EBUSY,
            format!("{param} '{name}' is already claimed by another module"),
        ));
    }
    opened.release_claim = write;
    // SAFETY: the desc is open on this thread.
    opened.chan = unsafe { sys::spdk_bdev_get_io_channel(desc) };
    if opened.chan.is_null() {
        opened.close();
        return Err((libc::ENOMEM, "no I/O channel".into()));
    }
    Ok(opened)
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
        }
        self.registered = true;
        self.update_poller();
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
