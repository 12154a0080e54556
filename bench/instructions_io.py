#!/usr/bin/env python3
"""Instructions per I/O through the stack, counted by valgrind (callgrind),
on null bdevs: repeatable whatever else the VM does, unlike IOPS. bdevperf
(module preloaded) runs 4 KiB random I/O at QD128 twice, for a short and a
long time; the difference in instructions over the difference in I/Os is the
cost of one I/O at saturation (start-up cancels out; the reactor's polling
between I/Os is included, as in cycles/IO).

    cargo build --release -p bdev_clone_spdk
    python3 bench/instructions_io.py [--workload randread|randwrite]

The hydrated clone opens metadata (an aio file) that a first spdk_tgt run
hydrated completely, so no copy runs while it is measured. Needs valgrind and
patchelf (a copy of bdevperf is made to load the module: valgrind's launcher
is a shell script, which LD_PRELOAD would reach too)."""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import run

ap = argparse.ArgumentParser()
ap.add_argument("--workload", default="randread")
ap.add_argument("--short", type=int, default=2, help="seconds of the short run")
ap.add_argument("--long", type=int, default=5, help="seconds of the long run")
ap.add_argument("--keep", help="copy the clone's long run's callgrind output here (for callgrind_annotate)")
ap.add_argument("--lib", default=run.LIB, help="the libbdev_clone_spdk.so to measure (default: the release build)")
a = ap.parse_args()
run.LIB = os.path.abspath(a.lib)
if not shutil.which("valgrind"):
    sys.exit("valgrind is not in PATH")
MIB = 1024
BS = 4096


def null(name):
    return {"method": "bdev_null_create", "params": {"name": name, "num_blocks": MIB * 256, "block_size": BS}}


def configs(meta_file):
    meta = {"method": "bdev_aio_create", "params": {"name": "meta", "filename": meta_file, "block_size": BS}}
    clone = {"method": "bdev_clone_create", "params": {"name": "c0", "source_bdev": "src", "destination_bdev": "dst",
                                                       "metadata_bdev": "meta", "region_size_kb": 64,
                                                       "no_hydration": True}}
    return [
        ("null bdev", [null("base")], "base"),
        ("passthru on null", [null("base"), {"method": "bdev_passthru_create",
                                             "params": {"base_bdev_name": "base", "name": "pt"}}], "pt"),
        ("bdev_clone, hydrated, null -> null", [null("src"), null("dst"), meta, clone], "c0"),
    ]


def run_counted(tmp, config, target, secs):
    cfg = os.path.join(tmp, "cg.json")
    with open(cfg, "w") as f:
        json.dump({"subsystems": [{"subsystem": "bdev", "config": config}]}, f)
    out = os.path.join(tmp, "cg.out")
    p = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", BDEVPERF,
                        *run.app_args("0x1"), "-s", "512", "--json", cfg, "-T", target, "-q", "128", "-o", str(BS),
                        "-w", a.workload, "-t", str(secs)], capture_output=True, text=True)
    text = p.stdout + p.stderr
    irs = re.findall(r"Collected : (\d+)", text)
    ir = re.search(r"(\d+)", irs[-1]) if irs else None
    total = re.search(r"Total\s*:\s*([0-9.]+)", text)
    if p.returncode != 0 or not ir or not total:
        raise RuntimeError(text[-3000:])
    return int(ir.group(1)), float(total.group(1)) * secs


with tempfile.TemporaryDirectory() as tmp:
    # A copy of bdevperf that loads the module itself (valgrind's launcher is
    # a shell script: LD_PRELOAD would reach it, not only bdevperf).
    if not shutil.which("patchelf"):
        sys.exit("patchelf is not in PATH (apt-get install patchelf)")
    BDEVPERF = os.path.join(tmp, "bdevperf")
    shutil.copy(run.bdevperf(), BDEVPERF)
    subprocess.run(["patchelf", "--add-needed", run.LIB, BDEVPERF], check=True)
    meta_file = os.path.join(tmp, "meta.img")
    with open(meta_file, "wb") as f:
        f.truncate(8 << 20)
    # Hydrate the clone once (its metadata persists in the aio file).
    cfgs = configs(meta_file)
    app = run.App(tmp, "prep", [shutil.which("spdk_tgt")], cfgs[2][1][:3], 1024)
    try:
        app.call("bdev_clone_create", dict(cfgs[2][1][3]["params"], no_hydration=False))
        app.wait_hydrated("c0")
    finally:
        app.stop()
    print(f"| configuration | instructions per I/O ({a.workload}, 4 KiB, QD128) |")
    print("|---|---|")
    for label, config, target in cfgs:
        ir1, n1 = run_counted(tmp, config, target, a.short)
        ir2, n2 = run_counted(tmp, config, target, a.long)
        print(f"| {label} | {(ir2 - ir1) / (n2 - n1):,.0f} |", flush=True)
        if a.keep:
            shutil.copy(os.path.join(tmp, "cg.out"), f"{a.keep}.{target}")
