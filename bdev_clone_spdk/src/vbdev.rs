//! One clone: the bdev SPDK sees (its function table and destruct), the
//! engine behind it, the poller that drives the engine, and what the clone
//! does with the engine's notices.
//!
//! Threads: the engine lives on the thread that created the clone (the app
//! thread, where RPCs run). I/O arrives on any thread. Reads, and writes to
//! hydrated regions, go straight to the base bdev on the submitting thread
//! (a lock-free bitmap test, the caller's iovecs, no copy); everything else is
//! sent to the clone thread, and its completion sent back.

use crate::backend::SpdkBackend;
use crate::channel::fn_get_io_channel;
use crate::channel::IoDevice;
use crate::ffi::{self, Responder};
use crate::io::{fn_io_type_supported, fn_submit};
use crate::json::fn_dump_info_json;
use crate::module::CLONES;
use crate::notify::{self, StateWatch};
use bdev_clone::params::CreateParams;
use bdev_clone::plan;
use bdev_clone::{Engine, Notice, Settings};
use serde_json::json;
use spdk_sys as sys;
use std::ffi::{c_int, c_void, CString};
use std::sync::Arc;

/// One clone: the bdev SPDK sees, and everything behind it.
pub struct CloneBdev {
    /// Boxed: SPDK reads and writes it from any thread.
    pub(crate) bdev: Box<sys::spdk_bdev>,
    /// What other threads may touch; the io_device and the bdev's ctxt.
    pub(crate) iodev: Option<Arc<IoDevice>>,
    pub(crate) name: CString,
    pub params: CreateParams,
    pub(crate) engine: Option<Engine<SpdkBackend>>,
    pub(crate) thread: *mut sys::spdk_thread,
    pub(crate) poller: *mut sys::spdk_poller,
    /// Torn down: no poller may be registered again.
    pub(crate) stopped: bool,
    /// The engine stopped; teardown waits for SPDK's callbacks.
    pub(crate) teardown_pending: bool,
    /// The source was removed: close it once the engine's reads are done.
    pub(crate) close_source_pending: bool,
    pub(crate) uuid: sys::spdk_uuid,
    pub(crate) registered: bool,
    pub(crate) unregistering: bool,
    pub(crate) create_req: Option<Responder>,
    pub(crate) release_req: Option<Responder>,
    pub dest_write_cache: bool,
    pub dest_flush_sent: bool,
    /// What the walks down the destination's and metadata's stacks found.
    pub flush_checks: [Option<bdev_clone::stack::FlushCheck>; 2],
    /// The state last announced as an SPDK notification (`notify`).
    pub(crate) events: StateWatch,
}

/// Only the callbacks the clone implements; the rest stay NULL, whatever
/// fields this SPDK version's table has (it grows between releases).
pub(crate) static FN_TABLE: sys::spdk_bdev_fn_table = {
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
        let c = unsafe { (*(ctx as *const IoDevice)).clone };
        CloneBdev::guarded(c, "destruct", |c| {
            c.unregistering = true;
            c.engine_mut().shutdown();
            c.after_engine();
        });
        1 // finished by spdk_bdev_destruct_done in io_device_gone
    })
}

pub(crate) unsafe extern "C" fn io_device_gone(arg: *mut c_void) {
    ffi::guard("io_device_gone", (), || {
        // SAFETY: the IoDevice outlives this call (the clone holds it).
        let me = unsafe { (*(arg as *const IoDevice)).clone };
        CLONES.lock().unwrap().0.retain(|&p| p != me as usize);
        // SAFETY: the last reference: channels are gone, the bdev is being destructed.
        let mut c = unsafe { Box::from_raw(me) };
        if let Some(e) = c.engine.as_mut() {
            e.backend_mut().close();
        }
        // SAFETY: finishing the destruct we returned 1 for.
        unsafe { sys::spdk_bdev_destruct_done(&mut *c.bdev, 0) };
        ffi::notice(&format!("bdev_clone {}: stopped", c.params.name));
        drop(c);
    })
}

pub(crate) unsafe extern "C" fn clone_poll(arg: *mut c_void) -> c_int {
    ffi::guard("clone_poll", sys::SPDK_POLLER_IDLE as c_int, || {
        let mut busy = false;
        // The poller's arg is the live clone; unregistered before free.
        CloneBdev::guarded(arg as *mut CloneBdev, "clone_poll", |c| {
            let e = c.engine_mut();
            busy = e.backend_mut().resubmit_retries();
            busy |= e.poll();
            c.after_engine();
        });
        if busy {
            sys::SPDK_POLLER_BUSY as c_int
        } else {
            sys::SPDK_POLLER_IDLE as c_int
        }
    })
}

impl CloneBdev {
    pub(crate) fn engine_mut(&mut self) -> &mut Engine<SpdkBackend> {
        self.engine.as_mut().expect("engine")
    }

    pub fn engine(&self) -> &Engine<SpdkBackend> {
        self.engine.as_ref().expect("engine")
    }

    /// Runs `f` on the clone, on its thread. A panic inside is the panic
    /// policy's case (README, "When something panics"): the clone goes to
    /// `failed` with the panic message as its error, every user I/O and RPC
    /// it holds is answered with an error, and the target carries on.
    pub(crate) fn guarded(clone: *mut CloneBdev, what: &str, f: impl FnOnce(&mut CloneBdev)) {
        // SAFETY: callers pass a live clone on its own thread.
        if let Err(msg) = ffi::catch(what, || f(unsafe { &mut *clone })) {
            // SAFETY: as above; the clone is freed only by io_device_gone
            // or free_unregistered, neither of which panics half-way.
            let _ = ffi::catch("after a panic", || unsafe { &mut *clone }.after_panic(&msg));
        }
    }

    fn after_panic(&mut self, msg: &str) {
        ffi::error(&format!(
            "bdev_clone {}: failed after an internal error: {msg}",
            self.params.name
        ));
        if let Some(e) = self.engine.as_mut() {
            e.abort_after_panic(msg);
        }
        self.after_engine();
    }

    /// Delivers what the engine queued (immediate failures, notices) until
    /// nothing is left, then pauses or resumes the poller as the engine
    /// wants. Called after every call into the engine.
    pub(crate) fn after_engine(&mut self) {
        loop {
            self.announce_state();
            if let Some((id, r)) = self.engine_mut().backend_mut().pop_deferred() {
                self.engine_mut().complete(id, r);
                continue;
            }
            match self.engine_mut().backend_mut().pop_notice() {
                Some(n) => {
                    if self.handle_notice(n) {
                        return; // the clone is gone
                    }
                }
                None => break,
            }
        }
        if self.teardown_if_drained() {
            return; // the clone is going away
        }
        if self.close_source_pending && self.engine().backend().source_in_flight() == 0 {
            self.close_source_pending = false;
            self.close_source();
        }
        self.update_poller();
    }

    /// Sends the SPDK notification of a state the engine just entered
    /// (`notify`), once registered: a create that fails announces nothing.
    fn announce_state(&mut self) {
        if !self.registered {
            return;
        }
        let Some(engine) = self.engine.as_ref() else {
            return;
        };
        if let Some(event) = self.events.observe(engine) {
            notify::send(event, &self.params.name);
        }
    }

    /// An idle clone costs nothing: it has a poller only while the engine
    /// has something that needs time to pass; the next call into the engine
    /// that gives it some registers one again. (Unregistered rather than
    /// paused: under --interrupt-mode a paused timed poller's timerfd keeps
    /// firing.)
    pub(crate) fn update_poller(&mut self) {
        if !self.registered || self.stopped {
            return;
        }
        let wants = self.engine().wants_poll() || self.engine().backend().has_retries();
        let me = self as *mut CloneBdev as *mut c_void;
        // SAFETY: our poller, on the clone thread (SPDK allows unregistering
        // from the poller's own callback); its arg is this clone, which
        // outlives it (teardown unregisters it before the clone is freed).
        unsafe {
            if wants && self.poller.is_null() {
                self.poller = sys::spdk_poller_register(Some(clone_poll), me, 100);
            } else if !wants && !self.poller.is_null() {
                sys::spdk_poller_unregister(&mut self.poller);
            }
        }
    }

    /// Returns true when the clone was freed.
    pub(crate) fn handle_notice(&mut self, n: Notice) -> bool {
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
                // Identity: the UUID the superblock holds (the one asked
                // for, or the one this clone was formatted with).
                self.uuid.u.raw = info.uuid;
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
                let errno = plan::open_errno(&e);
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
                        Err(m) => req.err(libc::EIO, &m),
                    }
                }
            }
            Notice::Stopped => {
                // Requests still with SPDK (only after a panic) keep the
                // clone alive until their callbacks have run.
                self.teardown_pending = true;
                return self.teardown_if_drained();
            }
        }
        false
    }

    /// Tears down once stopped and nothing is left with SPDK; true when it
    /// did (the clone is freed soon after: touch nothing more).
    pub(crate) fn teardown_if_drained(&mut self) -> bool {
        let drained = self
            .engine
            .as_ref()
            .is_none_or(|e| e.backend().in_flight() == 0);
        if self.teardown_pending && drained {
            self.teardown_pending = false;
            self.teardown();
            return true;
        }
        false
    }

    pub(crate) fn teardown(&mut self) {
        self.stopped = true;
        if !self.poller.is_null() {
            // SAFETY: our poller, on its thread.
            unsafe { sys::spdk_poller_unregister(&mut self.poller) };
        }
        // SAFETY: our io_device; the callback finishes the destruct.
        unsafe { sys::spdk_io_device_unregister(self.io_device(), Some(io_device_gone)) };
    }

    pub fn set_settings(&mut self, s: Settings) {
        self.engine_mut().set_settings(s);
        // Enabling hydration gives an idle clone (no poller) work to do.
        self.after_engine();
    }

    pub fn settings(&self) -> Settings {
        self.engine().settings().clone()
    }

    pub fn release_source(&mut self, reply: Responder) {
        if self.release_req.is_some() {
            return reply.err(libc::EBUSY, "release already in progress");
        }
        match self.engine_mut().release_source() {
            Ok(()) => {
                self.release_req = Some(reply);
                self.after_engine();
            }
            Err(m) => {
                let errno = if m.contains("not fully hydrated") {
                    libc::EBUSY
                } else {
                    libc::EINVAL
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
}
