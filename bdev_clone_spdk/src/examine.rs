//! Clones that wait for their base bdevs, and assembly on examine.
//!
//! A clone waits when `bdev_clone_create` asked for it (`wait_for_bases`, as
//! save_config writes it) or when examine found its metadata: SPDK's examine
//! reads the first blocks of every new bdev (`examine_disk`); a bdev holding
//! a valid bdev_clone superblock is a clone's metadata, and the superblock
//! names the clone, its bases and its settings (`plan::assembly_params`).
//! Examine holds such a bdev (claimed, so that nothing else writes it
//! meanwhile) and assembles
//! the clone as soon as its source (unless released) and destination exist,
//! as SPDK's raid and lvol modules bring their bdevs back. Every new bdev
//! may complete a waiting clone (`examine_config`). Nothing else is ever
//! claimed: a bdev without a valid superblock is closed at once.
//!
//! Everything here runs on the app thread (examine, RPCs, base events).

use crate::create::start_create;
use crate::ffi::{self, Responder};
use crate::module::{bdev_by_name, find_clone, for_each_clone, module};
use bdev_clone::params::CreateParams;
use bdev_clone::plan;
use serde_json::{json, Value};
use spdk_sys as sys;
use std::ffi::{c_void, CStr, CString};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// `bdev_clone_set_options auto_examine`: assemble clones from the metadata
/// that examine finds. On by default, as raid and lvol are.
pub(crate) static AUTO_EXAMINE: AtomicBool = AtomicBool::new(true);

/// Who made a clone wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FoundBy {
    /// `bdev_clone_create` with `wait_for_bases` (or a config).
    Rpc,
    /// Examine found its metadata.
    Examine,
}

impl FoundBy {
    fn as_str(self) -> &'static str {
        match self {
            FoundBy::Rpc => "rpc",
            FoundBy::Examine => "examine",
        }
    }
}

/// Examine's hold on a metadata bdev: a descriptor with an exclusive-write
/// claim, which keeps other writers (modules, clones) off the metadata until
/// the clone is assembled; nothing is written through it. (A read-only-many
/// claim would fail while other modules' examine still has the bdev open
/// for writing, as lvol's does.) The claim is released before the close.
struct Hold(usize);

impl Hold {
    /// Opens `name` read-only and claims it; None when it is gone or
    /// another module holds it.
    fn take(name: &str) -> Option<Hold> {
        let n = CString::new(name).ok()?;
        let mut desc = null_mut();
        // SAFETY: opening by name with our event callback (no context).
        let rc = unsafe {
            sys::spdk_bdev_open_ext(n.as_ptr(), false, Some(hold_event), null_mut(), &mut desc)
        };
        if rc != 0 {
            return None;
        }
        // SAFETY: the desc is open; default claim options.
        let rc = unsafe {
            sys::spdk_bdev_module_claim_bdev_desc(
                desc,
                sys::SPDK_BDEV_CLAIM_EXCL_WRITE,
                null_mut(),
                module(),
            )
        };
        if rc != 0 {
            // SAFETY: opened above, closed once.
            unsafe { sys::spdk_bdev_close(desc) };
            return None;
        }
        Some(Hold(desc as usize))
    }

    fn bdev(&self) -> *mut sys::spdk_bdev {
        // SAFETY: the desc is open while the hold lives.
        unsafe { sys::spdk_bdev_desc_get_bdev(self.0 as *mut sys::spdk_bdev_desc) }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        // SAFETY: opened and claimed by Hold::take; the (v1) claim is
        // released and the desc closed once, here.
        unsafe {
            sys::spdk_bdev_module_release_bdev(self.bdev());
            sys::spdk_bdev_close(self.0 as *mut sys::spdk_bdev_desc);
        }
    }
}

/// A clone waiting for its base bdevs.
pub(crate) struct Waiting {
    pub(crate) params: CreateParams,
    found_by: FoundBy,
    /// Examine's hold on its metadata bdev (examine-found clones only).
    hold: Option<Hold>,
    /// Why the last attempt to assemble it failed.
    last_error: Option<String>,
}

impl Waiting {
    /// Waits for `params`' bases; an examine-found clone holds its metadata
    /// bdev meanwhile.
    fn new(params: CreateParams, found_by: FoundBy) -> Waiting {
        let hold = match found_by {
            FoundBy::Examine => Hold::take(&params.metadata_bdev),
            FoundBy::Rpc => None,
        };
        Waiting {
            params,
            found_by,
            hold,
            last_error: None,
        }
    }

    /// The base bdevs it waits for.
    fn missing(&self) -> Vec<String> {
        let p = &self.params;
        let mut names = vec![&p.destination_bdev, &p.metadata_bdev];
        if !p.source_released {
            names.insert(0, &p.source_bdev);
        }
        names
            .into_iter()
            .filter(|n| bdev_by_name(n).is_none())
            .cloned()
            .collect()
    }

    /// Its entry in `bdev_clone_get_clones`.
    pub(crate) fn info(&self) -> Value {
        let p = &self.params;
        json!({
            "name": p.name,
            "state": "waiting_for_bases",
            "waiting_for": self.missing(),
            "found_by": self.found_by.as_str(),
            "source_bdev": p.source_bdev,
            "destination_bdev": p.destination_bdev,
            "metadata_bdev": p.metadata_bdev,
            "source_released": p.source_released,
            "error": self.last_error,
        })
    }

    /// The `bdev_clone_create` that brings it back (save_config).
    pub(crate) fn config(&self) -> Value {
        let mut params = serde_json::to_value(&self.params).expect("plain data");
        params["wait_for_bases"] = json!(true);
        // Absent options keep their defaults.
        if let Some(o) = params.as_object_mut() {
            o.retain(|_, v| !v.is_null());
        }
        json!({"method": "bdev_clone_create", "params": params})
    }
}

/// Clones waiting for their bases, in the order they began to wait.
pub(crate) static WAITING: Mutex<Vec<Waiting>> = Mutex::new(Vec::new());

/// `save_config`, `get_clones`: every waiting clone.
pub(crate) fn for_each_waiting(mut f: impl FnMut(&Waiting)) {
    for w in WAITING.lock().unwrap().iter() {
        f(w)
    }
}

/// Stops waiting for the clone `name` (its hold released); None when it does
/// not wait.
pub(crate) fn take_waiting(name: &str) -> Option<Waiting> {
    let mut waiting = WAITING.lock().unwrap();
    let i = waiting.iter().position(|w| w.params.name == name)?;
    Some(waiting.remove(i))
}

/// `bdev_clone_create` with `wait_for_bases` whose bases are not all there.
pub(crate) fn wait(p: CreateParams, reply: Responder) {
    if find_clone(&p.name).is_some() {
        return reply.err(
            libc::EEXIST,
            &format!("a clone named '{}' already exists", p.name),
        );
    }
    let mut waiting = WAITING.lock().unwrap();
    if let Some(w) = waiting.iter_mut().find(|w| w.params.name == p.name) {
        if w.params.metadata_bdev != p.metadata_bdev {
            return reply.err(
                libc::EEXIST,
                &format!(
                    "a clone named '{}' already waits for metadata bdev '{}'",
                    p.name, w.params.metadata_bdev
                ),
            );
        }
        // A config's create for a clone that examine found: the config's
        // settings win, examine's hold stays.
        w.params = p.clone();
        return reply.ok(json!(p.name));
    }
    ffi::notice(&format!(
        "bdev_clone {}: waiting for its base bdevs",
        p.name
    ));
    waiting.push(Waiting::new(p.clone(), FoundBy::Rpc));
    reply.ok(json!(p.name))
}

/// Module fini: no hold outlives the module.
pub(crate) fn release_all() {
    WAITING.lock().unwrap().clear();
}

/// The metadata bdev the clone `name` waits with, if it waits.
pub(crate) fn waiting_metadata(name: &str) -> Option<String> {
    let waiting = WAITING.lock().unwrap();
    waiting
        .iter()
        .find(|w| w.params.name == name)
        .map(|w| w.params.metadata_bdev.clone())
}

/// A failed create of a clone that had waited: it waits again (visible in
/// get_clones with the error, its metadata held again if examine found it),
/// so that an operator can see why and delete it or create it otherwise.
pub(crate) fn failed(w: Waiting, msg: &str) {
    ffi::error(&format!(
        "bdev_clone {}: could not create the waiting clone: {msg}",
        w.params.name
    ));
    let mut again = Waiting::new(w.params, w.found_by);
    again.last_error = Some(msg.to_string());
    WAITING.lock().unwrap().push(again);
}

/// Creates every waiting clone whose bases now exist. A hold is released
/// just before its clone opens and claims the bases itself (synchronously:
/// nothing else runs in between).
pub(crate) fn assemble_ready() {
    let ready: Vec<Waiting> = {
        let mut waiting = WAITING.lock().unwrap();
        let (ready, still) = waiting
            .drain(..)
            .partition(|w| plan::bases_ready(&w.params, |n| bdev_by_name(n).is_some()));
        *waiting = still;
        ready
    };
    for mut w in ready {
        w.hold = None;
        ffi::notice(&format!(
            "bdev_clone {}: its base bdevs are present; assembling it",
            w.params.name
        ));
        match start_create(w.params.clone()) {
            // SAFETY: freshly created, live.
            Ok(clone) => unsafe { (*clone).after_engine() },
            Err((_, msg)) => failed(w, &msg),
        }
    }
}

/// Base event on a held metadata bdev: removed, so the clone stops waiting.
unsafe extern "C" fn hold_event(
    kind: sys::spdk_bdev_event_type,
    bdev: *mut sys::spdk_bdev,
    _ctx: *mut c_void,
) {
    ffi::guard("examine hold_event", (), || {
        if kind != sys::SPDK_BDEV_EVENT_REMOVE {
            return;
        }
        let gone: Vec<Waiting> = {
            let mut waiting = WAITING.lock().unwrap();
            let (gone, still) = waiting
                .drain(..)
                .partition(|w| w.hold.as_ref().is_some_and(|h| h.bdev() == bdev));
            *waiting = still;
            gone
        };
        for w in gone {
            ffi::notice(&format!(
                "bdev_clone {}: its metadata bdev '{}' was removed; it no longer waits",
                w.params.name, w.params.metadata_bdev
            ));
        }
    })
}

/// The bdev is one of ours, or a base of a clone or of a waiting clone:
/// nothing to examine.
fn in_use(bdev: *mut sys::spdk_bdev, name: &str) -> bool {
    // SAFETY: a registered bdev.
    if unsafe { sys::spdk_bdev_get_module_name(bdev) } == module_name() {
        return true;
    }
    let mut used = false;
    for_each_clone(|c| {
        let p = &c.params;
        used |=
            [&p.source_bdev, &p.destination_bdev, &p.metadata_bdev].contains(&&name.to_string());
    });
    for_each_waiting(|w| {
        let p = &w.params;
        used |=
            [&p.source_bdev, &p.destination_bdev, &p.metadata_bdev].contains(&&name.to_string());
    });
    used
}

fn module_name() -> *const std::ffi::c_char {
    // SAFETY: our static module table.
    unsafe { (*module()).name }
}

/// One examine read in flight.
struct ExamineRead {
    bdev: *mut sys::spdk_bdev,
    name: String,
    desc: *mut sys::spdk_bdev_desc,
    chan: *mut sys::spdk_io_channel,
    buf: *mut c_void,
    len: u64,
    block_size: u32,
}

impl ExamineRead {
    /// Releases the read's resources and answers SPDK's examine.
    fn finish(self) {
        // SAFETY: each was got by examine_disk on this thread and is
        // released once (`self` is consumed); examine_disk is answered once.
        unsafe {
            if !self.buf.is_null() {
                sys::spdk_dma_free(self.buf);
            }
            if !self.chan.is_null() {
                sys::spdk_put_io_channel(self.chan);
            }
            sys::spdk_bdev_close(self.desc);
            sys::spdk_bdev_module_examine_done(module());
        }
    }
}

/// Examine's read desc: a removal is seen after the read (the bdev is no
/// longer found by name).
unsafe extern "C" fn read_event(
    _kind: sys::spdk_bdev_event_type,
    _bdev: *mut sys::spdk_bdev,
    _ctx: *mut c_void,
) {
}

/// The module's examine_disk: read both superblock slots of a new bdev.
/// Every path answers SPDK's examine exactly once.
pub(crate) fn examine_disk(bdev: *mut sys::spdk_bdev) {
    let done = || {
        // SAFETY: answering this examine_disk call.
        unsafe { sys::spdk_bdev_module_examine_done(module()) }
    };
    // SAFETY: a registered bdev, read on the app thread.
    let (name, block_size, num_blocks) = unsafe {
        (
            CStr::from_ptr(sys::spdk_bdev_get_name(bdev))
                .to_string_lossy()
                .into_owned(),
            sys::spdk_bdev_get_block_size(bdev),
            sys::spdk_bdev_get_num_blocks(bdev),
        )
    };
    let len = plan::examine_len(block_size);
    if !AUTO_EXAMINE.load(Ordering::Relaxed)
        || in_use(bdev, &name)
        || block_size == 0
        || num_blocks.saturating_mul(block_size as u64) < len
    {
        return done();
    }
    let Ok(cname) = CString::new(name.as_str()) else {
        return done();
    };
    let mut desc = null_mut();
    // SAFETY: opening read-only by name (no claim: reads are allowed on any
    // bdev); closed by ExamineRead::finish.
    let rc = unsafe {
        sys::spdk_bdev_open_ext(
            cname.as_ptr(),
            false,
            Some(read_event),
            null_mut(),
            &mut desc,
        )
    };
    if rc != 0 {
        return done();
    }
    let mut read = ExamineRead {
        bdev,
        name,
        desc,
        chan: null_mut(),
        buf: null_mut(),
        len,
        block_size,
    };
    // SAFETY: the desc is open on this thread; the buffer is plain DMA memory
    // aligned for any bdev seen here (a page, or the bdev's own alignment).
    unsafe {
        read.chan = sys::spdk_bdev_get_io_channel(desc);
        let align = sys::spdk_bdev_get_buf_align(bdev).max(4096);
        read.buf = sys::spdk_dma_zmalloc(len as usize, align, null_mut());
    }
    if read.chan.is_null() || read.buf.is_null() {
        return read.finish();
    }
    let (chan, buf) = (read.chan, read.buf);
    let ctx = Box::into_raw(Box::new(read));
    // SAFETY: the read fills our buffer; read_done gets the boxed context
    // back exactly once (or we take it back at once on failure).
    let rc = unsafe {
        sys::spdk_bdev_read(desc, chan, buf, 0, len, Some(read_done), ctx as *mut c_void)
    };
    if rc != 0 {
        // SAFETY: not submitted: the context is still ours.
        unsafe { Box::from_raw(ctx) }.finish();
    }
}

unsafe extern "C" fn read_done(io: *mut sys::spdk_bdev_io, success: bool, arg: *mut c_void) {
    // SAFETY: the context boxed by examine_disk, handed back once.
    let read = unsafe { Box::from_raw(arg as *mut ExamineRead) };
    // SAFETY: the completed bdev_io, freed once.
    unsafe { sys::spdk_bdev_free_io(io) };
    // A bdev being removed is no longer found by its name.
    let present = bdev_by_name(&read.name) == Some(read.bdev);
    let sb = ffi::guard("examine read_done", None, || {
        if !success || !present {
            return None;
        }
        // SAFETY: our buffer of `len` bytes, filled by the read.
        let data = unsafe { std::slice::from_raw_parts(read.buf as *const u8, read.len as usize) };
        plan::examined_superblock(data, read.block_size)
    });
    let name = read.name.clone();
    read.finish();
    if let Some(sb) = sb {
        ffi::guard("examine found", (), || found(&name, &sb));
    }
}

/// Examine found a valid superblock on the bdev `meta`: wait for the
/// clone's bases, holding `meta`, or assemble it now.
fn found(meta: &str, sb: &bdev_clone::metadata::Superblock) {
    let p = match plan::assembly_params(sb, meta) {
        Ok(p) => p,
        Err(e) => {
            return ffi::notice(&format!(
                "bdev_clone: bdev '{meta}' holds bdev_clone metadata but cannot be assembled: {e}"
            ))
        }
    };
    if find_clone(&p.name).is_some() {
        return ffi::notice(&format!(
            "bdev_clone: bdev '{meta}' holds the metadata of clone '{}', which already exists",
            p.name
        ));
    }
    {
        let mut waiting = WAITING.lock().unwrap();
        if let Some(w) = waiting.iter_mut().find(|w| w.params.name == p.name) {
            if w.params.metadata_bdev != meta {
                return ffi::warn(&format!(
                    "bdev_clone: bdev '{meta}' holds the metadata of clone '{}', which already \
                     waits for metadata bdev '{}'; not assembled",
                    p.name, w.params.metadata_bdev
                ));
            }
            // A config's create waited for it: hold it from now on.
            if w.hold.is_none() {
                w.hold = Hold::take(meta);
            }
        } else {
            let w = Waiting::new(p.clone(), FoundBy::Examine);
            if w.hold.is_none() {
                return ffi::warn(&format!(
                    "bdev_clone: bdev '{meta}' holds the metadata of clone '{}' but could not be \
                     claimed",
                    p.name
                ));
            }
            ffi::notice(&format!(
                "bdev_clone {}: found its metadata on '{meta}'",
                p.name
            ));
            waiting.push(w);
        }
    }
    assemble_ready();
}
