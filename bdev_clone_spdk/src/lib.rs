//! bdev_clone inside SPDK: the virtual bdev module, its JSON-RPC methods and
//! the glue between SPDK's threads, channels and callbacks and the clone
//! engine (the `bdev_clone` crate, which decides everything: where an I/O
//! goes, what is copied, when metadata is committed, whether a create may go
//! ahead). This crate gathers what SPDK knows, does what the engine says and
//! carries completions back.
//!
//! Read it in the order of a bdev's life, as SPDK's
//! `module/bdev/passthru/vbdev_passthru.c` reads:
//! - `module`: what SPDK's module table calls (init, config_json, examine),
//!   the registry of live clones;
//! - `examine`: clones waiting for their base bdevs, and clones assembled
//!   from the metadata examine finds on new bdevs;
//! - `vbdev`: one clone: its function table, destruct, the engine's poller,
//!   what the clone does with the engine's notices;
//! - `io`: submit_request, io_type_supported, the pass-through of reads and
//!   of writes to hydrated regions, completing I/O on its own thread;
//! - `channel`: the io_device and the per-thread channels;
//! - `json`: get_clones / dump_info_json and save_config;
//! - `create`: create (facts → `bdev_clone::plan` → open, claim, register),
//!   hot removal of a base bdev, delete;
//! - `backend`: the engine's backend inside SPDK (`SpdkBackend`): its device
//!   requests on the clone thread's channels, deferred completions, notices,
//!   retries;
//! - `dma`: DMA-capable memory for the engine's buffers;
//! - `notify`: SPDK notifications (events) when a clone's state changes;
//! - `rpc`: the JSON-RPC methods (listed once, in shim/rpc_methods.h);
//! - `ffi`: panic guards, logging, JSON-RPC replies; `app`: the target app.
//!
//! The C shim (shim/clone_shim.c) holds what must be C: SPDK's registration
//! macros.
//!
//! Unsafe code: this crate (every call into SPDK, each with its `// SAFETY:`
//! comment; every `extern "C"` entry point runs inside `ffi::guard`) and
//! spdk-sys (the bindings). Outside SPDK, the CLI (apps/cli) has a little of
//! its own: ioctl, flock, signal handlers, getrandom and its O_DIRECT buffers.
//! The engine and the simulator have none.

pub mod app;
mod backend;
mod channel;
mod create;
mod dma;
mod examine;
mod ffi;
mod io;
mod json;
mod module;
mod notify;
mod rpc;
mod vbdev;
