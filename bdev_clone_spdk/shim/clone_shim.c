/*
 * The parts of bdev_clone that must be C: SPDK's registration macros expand
 * to constructors and static tables. Everything else is Rust.
 */
#include <spdk/stdinc.h>
#include <spdk/bdev_module.h>
#include <spdk/rpc.h>

#include "rpc_methods.h"

/* Implemented in Rust: src/module.rs (the module table) and src/rpc.rs. */
int bdev_clone_rs_module_init(void);
void bdev_clone_rs_module_fini(void);
int bdev_clone_rs_get_ctx_size(void);
int bdev_clone_rs_config_json(struct spdk_json_write_ctx *w);
void bdev_clone_rs_examine_config(struct spdk_bdev *bdev);
void bdev_clone_rs_examine_disk(struct spdk_bdev *bdev);
void bdev_clone_rs_rpc(int method, struct spdk_jsonrpc_request *request,
		       const struct spdk_json_val *params);

static struct spdk_bdev_module g_bdev_clone_if = {
	.name = "bdev_clone",
	.module_init = bdev_clone_rs_module_init,
	.module_fini = bdev_clone_rs_module_fini,
	.get_ctx_size = bdev_clone_rs_get_ctx_size,
	.config_json = bdev_clone_rs_config_json,
	.examine_config = bdev_clone_rs_examine_config,
	.examine_disk = bdev_clone_rs_examine_disk,
};

SPDK_BDEV_MODULE_REGISTER(bdev_clone, &g_bdev_clone_if)

struct spdk_bdev_module *
bdev_clone_module(void)
{
	return &g_bdev_clone_if;
}

/* The methods' indices, in the order of rpc_methods.h (rpc::Method in Rust). */
enum bdev_clone_rpc_method {
#define BDEV_CLONE_RPC_INDEX(method) BDEV_CLONE_RPC_##method,
	BDEV_CLONE_RPC_METHODS(BDEV_CLONE_RPC_INDEX)
#undef BDEV_CLONE_RPC_INDEX
};

/*
 * When a method may be called: the module's options also before
 * framework_start_init, so that a config (or --wait-for-rpc) sets them before
 * any bdev is examined.
 */
static uint32_t
rpc_state_mask(const char *method)
{
	return strcmp(method, "bdev_clone_set_options") == 0 ?
	       SPDK_RPC_STARTUP | SPDK_RPC_RUNTIME : SPDK_RPC_RUNTIME;
}

/* One handler per method, registered from a constructor by SPDK_RPC_REGISTER. */
#define BDEV_CLONE_RPC_REGISTER(method)                                              \
	static void rpc_##method(struct spdk_jsonrpc_request *r,                     \
				 const struct spdk_json_val *p)                      \
	{                                                                            \
		bdev_clone_rs_rpc(BDEV_CLONE_RPC_##method, r, p);                    \
	}                                                                            \
	SPDK_RPC_REGISTER(#method, rpc_##method, rpc_state_mask(#method))

BDEV_CLONE_RPC_METHODS(BDEV_CLONE_RPC_REGISTER)

/* Inline in SPDK's headers, so bindgen has no symbol for it. */
void *
bdev_clone_channel_ctx(struct spdk_io_channel *ch)
{
	return spdk_io_channel_get_ctx(ch);
}
