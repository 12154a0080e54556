//! Events: SPDK notifications (its notify library, which `bdev_register` and
//! `bdev_unregister` use) when a clone enters a state an operator acts on.
//! `notify_get_types` lists the types, `notify_get_notifications` returns
//! the events, each with the clone's name as its context:
//!
//! | type                        | the clone's `state` became |
//! |-----------------------------|----------------------------|
//! | `bdev_clone_hydrated`       | `hydrated`                 |
//! | `bdev_clone_source_released`| `source_released`          |
//! | `bdev_clone_read_only`      | `read_only`                |
//! | `bdev_clone_failed`         | `failed`                   |
//!
//! An event is sent once per change of the engine's state (`CloneState`)
//! into one of these, seen after every call into the engine
//! (`CloneBdev::after_engine`). `hydrated` is sent once it is durable: when
//! the commit that records the last region has completed (get_clones shows
//! `hydrated` a moment earlier; a commit that fails sends `read_only` or
//! `failed` instead). `source_released` is durable when the engine enters it.
//! A clone that opens (create, or resume after a restart) in `hydrated` or
//! `source_released` announces that state once too, so that a tool waiting
//! for the event after a restart does not wait forever.

use bdev_clone::io::Backend;
use bdev_clone::{CloneState, Engine};
use spdk_sys as sys;
use std::ffi::{CStr, CString};
use std::sync::Once;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Hydrated,
    SourceReleased,
    ReadOnly,
    Failed,
}

impl Event {
    pub const ALL: [Event; 4] = [
        Event::Hydrated,
        Event::SourceReleased,
        Event::ReadOnly,
        Event::Failed,
    ];

    /// The notification type, as `notify_get_notifications` shows it.
    pub fn type_name(self) -> &'static CStr {
        match self {
            Event::Hydrated => c"bdev_clone_hydrated",
            Event::SourceReleased => c"bdev_clone_source_released",
            Event::ReadOnly => c"bdev_clone_read_only",
            Event::Failed => c"bdev_clone_failed",
        }
    }

    /// The event a clone entering `state` sends, if any.
    pub fn on_entering(state: CloneState) -> Option<Event> {
        match state {
            CloneState::Hydrated => Some(Event::Hydrated),
            CloneState::SourceReleased => Some(Event::SourceReleased),
            CloneState::ReadOnly => Some(Event::ReadOnly),
            CloneState::Failed => Some(Event::Failed),
            CloneState::Opening | CloneState::Hydrating | CloneState::Paused => None,
        }
    }
}

/// Registers the notification types with SPDK, once per process. Called
/// from the module's init, as lib/bdev/bdev.c registers its own types in
/// spdk_bdev_initialize (the notify library needs no init of its own: its
/// list and lock are static).
pub fn register_types() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for e in Event::ALL {
            // SAFETY: a valid C string; SPDK copies the name.
            let t = unsafe { sys::spdk_notify_type_register(e.type_name().as_ptr()) };
            if t.is_null() {
                crate::ffi::error(&format!(
                    "bdev_clone: cannot register notification type {:?}",
                    e.type_name()
                ));
            }
        }
    });
}

/// Sends `event` with the clone's name as its context.
pub fn send(event: Event, clone: &str) {
    let ctx = context(clone);
    // SAFETY: valid C strings, copied by SPDK under its lock; callable from
    // any thread.
    unsafe { sys::spdk_notify_send(event.type_name().as_ptr(), ctx.as_ptr()) };
}

/// The event's context: the clone's name, cut to what SPDK's event holds
/// (SPDK_NOTIFY_MAX_CTX_SIZE with its NUL; a longer one would be stored
/// without a terminator), at a character boundary.
fn context(clone: &str) -> CString {
    let max = sys::SPDK_NOTIFY_MAX_CTX_SIZE as usize - 1;
    let mut end = clone.len().min(max);
    while !clone.is_char_boundary(end) {
        end -= 1;
    }
    CString::new(clone[..end].replace('\0', " ")).expect("no NUL left")
}

/// The state a clone last announced, so that each change is sent once.
#[derive(Debug)]
pub struct StateWatch {
    last: CloneState,
}

impl Default for StateWatch {
    fn default() -> Self {
        StateWatch {
            last: CloneState::Opening,
        }
    }
}

impl StateWatch {
    /// The event to send now that the engine is where it is: one when its
    /// state changed into one that has an event (`hydrated` only once every
    /// region's hydration is committed).
    pub fn observe<B: Backend>(&mut self, engine: &Engine<B>) -> Option<Event> {
        let state = engine.state();
        if state == self.last {
            return None;
        }
        if state == CloneState::Hydrated
            && engine.committed_regions() < engine.geometry().region_count
        {
            return None; // not durable yet: seen again after the commit
        }
        self.last = state;
        Event::on_entering(state)
    }
}
