/*
 * bdev_clone's JSON-RPC methods: the one list both sides use. The C shim
 * (clone_shim.c) expands it into an enum of indices and one
 * SPDK_RPC_REGISTER per method, whose handler passes its index to
 * bdev_clone_rs_rpc; build.rs reads it and generates rpc::Method in Rust,
 * whose variants are in the same order (bdev_clone_get_clones → GetClones).
 *
 * One X(method name) per line; a method's index is its position.
 */
#ifndef BDEV_CLONE_RPC_METHODS_H
#define BDEV_CLONE_RPC_METHODS_H

#define BDEV_CLONE_RPC_METHODS(X)    \
	X(bdev_clone_create)         \
	X(bdev_clone_delete)         \
	X(bdev_clone_get_clones)     \
	X(bdev_clone_set_hydration)  \
	X(bdev_clone_release_source) \
	X(bdev_clone_set_options)

#endif
