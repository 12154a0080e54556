#!/usr/bin/env python3
"""Two builds of libbdev_clone_spdk.so side by side on the I/O path: a
hydrated clone against passthru, 4 KiB random reads and writes at QD32 and
QD128, the builds interleaved round by round so that the VM's slow spells hit
both. Tells a code change from the machine's noise.

    python3 bench/ab_io.py OTHER.so [--rounds 5] [--kind malloc|null]

OTHER.so: the build to compare with (e.g. built from an older commit with
`CARGO_TARGET_DIR=/some/dir cargo build --release -p bdev_clone_spdk`); the
current one is target/release/libbdev_clone_spdk.so."""

import argparse
import statistics
import sys
import tempfile

import run

ap = argparse.ArgumentParser()
ap.add_argument("other", help="the other build's libbdev_clone_spdk.so")
ap.add_argument("--rounds", type=int, default=5)
ap.add_argument("--kind", choices=["malloc", "null"], default="malloc", help="the base bdevs")
a = ap.parse_args()
this = run.LIB
size = 256 if a.kind == "malloc" else 1024
cfgs = {c[0]: c for c in run.io_configs(size, a.kind)}
rows = [("passthru", cfgs["passthru vbdev"], this),
        ("this build", cfgs["bdev_clone, hydrated"], this),
        ("other build", cfgs["bdev_clone, hydrated"], a.other)]
cells = [(w, q) for w in ("randread", "randwrite") for q in (32, 128)]
samples = {}
with tempfile.TemporaryDirectory() as tmp:
    for rnd in range(a.rounds):
        for label, (_, config, target, prep), lib in rows:
            run.LIB = lib
            app = run.App(tmp, "io", [run.bdevperf(), "-z", "-T", target, "-q", "1", "-o", "4096",
                                      "-w", "randread", "-t", "1"], config, 1536)
            try:
                if prep == "hydrate":
                    app.wait_hydrated("c0")
                for w, q in cells:
                    samples.setdefault((label, w, q), []).append(run.perf(app, w, q, 2)[0])
            finally:
                app.stop()
        print(f"round {rnd + 1} of {a.rounds}", file=sys.stderr)
print("| build | " + " | ".join(f"{w} QD{q}" for w, q in cells) + " |")
print("|---|" + "---|" * len(cells))
for label in ("this build", "other build"):
    r = [statistics.median(c / p for c, p in zip(samples[(label, w, q)], samples[("passthru", w, q)]))
         for w, q in cells]
    print(f"| bdev_clone, hydrated, {label} | " + " | ".join(f"{x * 100:.1f}%" for x in r) + " |")
