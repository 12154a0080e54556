#!/usr/bin/env python3
"""Where a hydrated clone's I/O spends its cycles, next to passthru's, on
null bdevs (the devices cost nothing, so what is left is the stack's own
cost). Runs bdevperf (module preloaded) at 4 KiB random QD128 and samples it
with `perf record -e cpu-clock`, then prints each configuration's top
symbols and the IOPS it ran at.

    cargo build --release -p bdev_clone_spdk
    python3 bench/profile_io.py [--workload randread] [--secs 6] [--core 0x1]

Needs `perf` (Debian's linux-perf) in PATH; bdevperf as for run.py."""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import run

ap = argparse.ArgumentParser()
ap.add_argument("--workload", default="randread")
ap.add_argument("--secs", type=int, default=6)
ap.add_argument("--qd", type=int, default=128)
ap.add_argument("--top", type=int, default=25)
ap.add_argument("--core", default="0x1", help="reactor mask of bdevperf")
a = ap.parse_args()
if not shutil.which("perf"):
    sys.exit("perf is not in PATH (apt-get install linux-perf)")

MIB_SIZE = 1024
null3 = [run.null("src", MIB_SIZE), run.null("dst", MIB_SIZE), *run.malloc("meta", 8)]
configs = [
    ("passthru on null", [run.null("base", MIB_SIZE),
                          {"method": "bdev_passthru_create", "params": {"base_bdev_name": "base", "name": "pt"}}],
     "pt", False),
    ("bdev_clone hydrated, null -> null", null3 + [run.clone("c0")], "c0", True),
    ("bdev_clone unhydrated, null -> null", null3 + [run.clone("c0", no_hydration=True)], "c0", False),
]
with tempfile.TemporaryDirectory() as tmp:
    for label, config, target, hydrate in configs:
        app = run.App(tmp, "prof", [run.bdevperf(), "-z", "-T", target, "-q", "1", "-o", "4096",
                                    "-w", a.workload, "-t", "1"], config, 512, a.core)
        try:
            if hydrate:
                app.wait_hydrated("c0")
            data = os.path.join(tmp, "perf.data")
            result = {}
            t = threading.Thread(target=lambda: result.update(
                r=run.perf(app, a.workload, a.qd, a.secs)))
            t.start()
            subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-o", data, "-p", str(app.proc.pid),
                            "--", "sleep", str(max(1, a.secs - 2))], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t.join()
            rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "symbol",
                                  "--percent-limit", "0.5"], capture_output=True, text=True).stdout
            lines = [l for l in rep.splitlines() if l.strip() and not l.startswith("#")]
            print(f"== {label}: {result['r'][0]:,.0f} IOPS ({a.workload} QD{a.qd})")
            print("\n".join(lines[:a.top]))
        finally:
            app.stop()
