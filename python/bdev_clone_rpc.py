#  SPDX-License-Identifier: BSD-3-Clause
"""bdev_clone commands for SPDK's rpc.py and spdk-rpc.

    PYTHONPATH=<bdev_clone>/python spdk-rpc -s /var/tmp/spdk.sock \
        --plugin bdev_clone_rpc bdev_clone_create -b clone0 -s Nvme0n1 -d Nvme1n1 -m Malloc0
"""

import json

HYDRATION_ORDERS = ('sequential', 'hot_first')


def _print(result):
    print(json.dumps(result, indent=2))


def _call(args, method, params):
    return args.client.call(method, params)


def bdev_clone_create(args):
    params = {
        'name': args.name,
        'source_bdev': args.source_bdev,
        'destination_bdev': args.destination_bdev,
        'metadata_bdev': args.metadata_bdev,
    }
    for key in ('region_size_kb', 'uuid', 'hydration_threshold', 'hydration_batch_size',
                'max_bandwidth_mb_sec', 'max_bandwidth_busy_mb_sec', 'commit_interval_ms',
                'hydration_order'):
        value = getattr(args, key)
        if value is not None:
            params[key] = value
    for flag in ('no_hydration', 'no_discard_passdown', 'format', 'allow_unflushed_destination',
                 'wait_for_bases', 'source_released'):
        if getattr(args, flag):
            params[flag] = True
    print(_call(args, 'bdev_clone_create', params))


def bdev_clone_delete(args):
    _print(_call(args, 'bdev_clone_delete', {'name': args.name}))


def bdev_clone_get_clones(args):
    params = {'name': args.name} if args.name else None
    _print(_call(args, 'bdev_clone_get_clones', params))


def bdev_clone_set_hydration(args):
    params = {'name': args.name}
    if args.enable is not None:
        params['enabled'] = args.enable
    for key in ('hydration_threshold', 'hydration_batch_size', 'max_bandwidth_mb_sec',
                'max_bandwidth_busy_mb_sec', 'commit_interval_ms', 'hydration_order'):
        value = getattr(args, key)
        if value is not None:
            params[key] = value
    _print(_call(args, 'bdev_clone_set_hydration', params))


def bdev_clone_release_source(args):
    _print(_call(args, 'bdev_clone_release_source', {'name': args.name}))


def bdev_clone_set_options(args):
    params = {}
    if args.auto_examine is not None:
        params['auto_examine'] = args.auto_examine
    _print(_call(args, 'bdev_clone_set_options', params))


def spdk_rpc_plugin_initialize(subparsers):
    p = subparsers.add_parser('bdev_clone_create',
                              help='Create a clone of a source bdev on a destination bdev')
    p.add_argument('-b', '--name', required=True, help='name of the clone bdev')
    p.add_argument('-s', '--source-bdev', required=True, help='bdev to clone (read only)')
    p.add_argument('-d', '--destination-bdev', required=True, help='bdev the clone hydrates into')
    p.add_argument('-m', '--metadata-bdev', required=True, help='bdev for the hydration metadata')
    p.add_argument('-r', '--region-size-kb', type=int, help='region size in KiB (power of two; default 64)')
    p.add_argument('-u', '--uuid', help='UUID of the clone bdev')
    p.add_argument('--no-hydration', action='store_true', help='do not hydrate in the background')
    p.add_argument('--hydration-threshold', type=int, help='regions copied at once')
    p.add_argument('--hydration-batch-size', type=int, help='contiguous regions per copy')
    p.add_argument('--max-bandwidth-mb-sec', type=int, help='hydration rate limit in MiB/s (0 = unlimited)')
    p.add_argument('--max-bandwidth-busy-mb-sec', type=int,
                   help='hydration rate limit in MiB/s while user I/O runs (default 64; 0 = no separate limit)')
    p.add_argument('--commit-interval-ms', type=int, help='metadata commit period (default 1000)')
    p.add_argument('--hydration-order', choices=HYDRATION_ORDERS,
                   help='copy regions users read first (hot_first, the default) or in address order only')
    p.add_argument('--no-discard-passdown', action='store_true', help='do not pass unmaps to the destination')
    p.add_argument('--format', action='store_true',
                   help='overwrite metadata that belongs to other devices or is corrupt')
    p.add_argument('--allow-unflushed-destination', action='store_true',
                   help='accept a destination whose volatile write cache is never flushed')
    p.add_argument('--wait-for-bases', action='store_true',
                   help='if a base bdev does not exist yet, create the clone when it appears')
    p.add_argument('--source-released', action='store_true',
                   help='the metadata says the source was released: open without it')
    p.set_defaults(func=bdev_clone_create)

    p = subparsers.add_parser('bdev_clone_delete', help='Delete a clone (commits first)')
    p.add_argument('name', nargs='?', help='clone name')
    p.add_argument('-b', '--name', dest='name_opt', help='clone name')
    p.set_defaults(func=lambda a: bdev_clone_delete(_name(a)))

    p = subparsers.add_parser('bdev_clone_get_clones', help='Show clones and their hydration progress')
    p.add_argument('-b', '--name', help='only this clone')
    p.set_defaults(func=bdev_clone_get_clones)

    p = subparsers.add_parser('bdev_clone_set_hydration', help='Change hydration at run time')
    p.add_argument('-b', '--name', required=True, help='clone name')
    g = p.add_mutually_exclusive_group()
    g.add_argument('-e', '--enable', dest='enable', action='store_true', default=None, help='resume hydration')
    g.add_argument('-x', '--disable', dest='enable', action='store_false', help='pause hydration')
    p.add_argument('--hydration-threshold', type=int, help='regions copied at once')
    p.add_argument('--hydration-batch-size', type=int, help='contiguous regions per copy')
    p.add_argument('--max-bandwidth-mb-sec', type=int, help='hydration rate limit in MiB/s (0 = unlimited)')
    p.add_argument('--max-bandwidth-busy-mb-sec', type=int,
                   help='hydration rate limit in MiB/s while user I/O runs (default 64; 0 = no separate limit)')
    p.add_argument('--commit-interval-ms', type=int, help='metadata commit period')
    p.add_argument('--hydration-order', choices=HYDRATION_ORDERS,
                   help='copy regions users read first (hot_first) or in address order only (sequential)')
    p.set_defaults(func=bdev_clone_set_hydration)

    p = subparsers.add_parser('bdev_clone_release_source',
                              help='Stop using the source of a fully hydrated clone')
    p.add_argument('name', nargs='?', help='clone name')
    p.add_argument('-b', '--name', dest='name_opt', help='clone name')
    p.set_defaults(func=lambda a: bdev_clone_release_source(_name(a)))

    p = subparsers.add_parser('bdev_clone_set_options', help="Set the bdev_clone module's options")
    g = p.add_mutually_exclusive_group()
    g.add_argument('--enable-auto-examine', dest='auto_examine', action='store_true', default=None,
                   help='assemble clones from the metadata found on new bdevs (the default)')
    g.add_argument('--disable-auto-examine', dest='auto_examine', action='store_false',
                   help='do not examine new bdevs for clone metadata')
    p.set_defaults(func=bdev_clone_set_options)


def _name(args):
    args.name = args.name_opt or args.name
    if not args.name:
        raise SystemExit('a clone name is required (-b NAME)')
    return args
