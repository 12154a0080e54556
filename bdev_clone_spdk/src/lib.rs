//! bdev_clone inside SPDK: the virtual bdev module, its JSON-RPC methods and
//! the glue between SPDK's threads, channels and callbacks and the clone
//! engine. All unsafe code of the project lives here and in spdk-sys.

pub mod app;
mod backend;
mod channel;
mod create;
mod dma;
mod ffi;
mod io;
mod json;
mod module;
mod rpc;
mod vbdev;
