/* What bdev_clone uses of SPDK; bindgen allowlists spdk_ and SPDK_ names. */
#include <spdk/stdinc.h>
#include <spdk/bdev.h>
#include <spdk/bdev_module.h>
#include <spdk/env.h>
#include <spdk/event.h>
#include <spdk/json.h>
#include <spdk/jsonrpc.h>
#include <spdk/log.h>
#include <spdk/notify.h>
#include <spdk/rpc.h>
#include <spdk/string.h>
#include <spdk/thread.h>
#include <spdk/util.h>
#include <spdk/uuid.h>
#include <spdk/module/bdev/nvme.h>
