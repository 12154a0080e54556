#!/usr/bin/env python3
"""`bdev-clone hydrate` against dd on this machine's disk (docs/cli.md, "Throughput").

Creates a random source image (1 GiB by default) in a directory on the real
disk (target/bench-cli; tmpfs is refused: O_DIRECT would not mean anything
there), then runs, in each round, one after the other on the same files:

  dd if=SRC of=DST bs=1M iflag=direct oflag=direct conv=fdatasync
  bdev-clone hydrate --source SRC --dest DST --metadata M      (io_uring, default settings)
  bdev-clone hydrate ... --io sync                             (the synchronous path)

each into a fresh destination (deleted; sparse `truncate -s` for bdev-clone,
which needs it to exist), and prints the wall-clock times and the paired
ratios (dd's time / bdev-clone's time = bdev-clone's throughput relative to
dd). No page-cache dropping is needed: every run uses O_DIRECT.

    cargo build --release -p bdev-clone-cli
    python3 bench/cli.py [--size-mib 1024] [--rounds 3] [--no-sync] [-- EXTRA HYDRATE ARGS]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "bdev-clone")
MIB = 1 << 20


def fs_type(path):
    out = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True)
    return out.stdout.strip()


def device_of(path):
    out = subprocess.run(["df", "--output=source", path], capture_output=True, text=True)
    lines = out.stdout.split()
    return lines[-1] if lines else "?"


def make_source(path, size):
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    print(f"writing {size // MIB} MiB of random data to {path}", flush=True)
    with open(path + ".part", "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MIB)
            f.write(os.urandom(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())
    os.rename(path + ".part", path)


def fresh(path, size=None):
    """Removes `path`; with `size`, creates it again as a sparse file."""
    if os.path.exists(path):
        os.remove(path)
    if size is not None:
        with open(path, "wb") as f:
            f.truncate(size)


def timed(argv):
    t = time.monotonic()
    r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    secs = time.monotonic() - t
    if r.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stderr}")
    return secs, r.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=os.path.join(ROOT, "target", "bench-cli"))
    ap.add_argument("--no-sync", action="store_true", help="skip the --io sync runs")
    ap.add_argument("--keep", action="store_true", help="keep the source image afterwards")
    ap.add_argument("extra", nargs="*", help="more `hydrate` arguments (after --)")
    a = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} missing: cargo build --release -p bdev-clone-cli")
    os.makedirs(a.dir, exist_ok=True)
    fs = fs_type(a.dir)
    if fs in ("tmpfs", "ramfs"):
        sys.exit(f"{a.dir} is on {fs}: pass --dir on a real disk")
    size = a.size_mib * MIB
    src, dst, meta = (os.path.join(a.dir, n) for n in ("src.img", "dst.img", "meta"))
    make_source(src, size)
    print(f"{a.size_mib} MiB, O_DIRECT, {a.dir} ({fs} on {device_of(a.dir)}), "
          f"{os.cpu_count()} CPUs, hydrate args: {a.extra or 'defaults'}", flush=True)

    dd = ["dd", f"if={src}", f"of={dst}", "bs=1M", "iflag=direct", "oflag=direct",
          "conv=fdatasync", "status=none"]
    hyd = [BIN, "hydrate", "--source", src, "--dest", dst, "--metadata", meta,
           "--progress", "none"] + a.extra
    kinds = [("dd", dd), ("uring", hyd)]
    if not a.no_sync:
        kinds.append(("sync", hyd + ["--io", "sync"]))
    times = {k: [] for k, _ in kinds}
    for r in range(a.rounds):
        for name, argv in kinds:
            fresh(meta)
            fresh(dst, None if name == "dd" else size)
            secs, err = timed(argv)
            if name != "dd" and "note:" in err:
                print(f"  {err.strip()}")
            times[name].append(secs)
            print(f"round {r + 1} {name:5}: {secs:6.2f} s  {size / MIB / secs:7.1f} MiB/s",
                  flush=True)
    fresh(dst)
    fresh(meta)
    if not a.keep:
        os.remove(src)

    print()
    print("| round | dd (MiB/s) | bdev-clone io_uring (MiB/s) | ratio |"
          + (" bdev-clone --io sync (MiB/s) | ratio |" if not a.no_sync else ""))
    print("|---|---|---|---|" + ("---|---|" if not a.no_sync else ""))
    ratios = {k: [] for k in times if k != "dd"}
    for r in range(a.rounds):
        d = times["dd"][r]
        row = f"| {r + 1} | {size / MIB / d:.0f} |"
        for k in ratios:
            t = times[k][r]
            ratios[k].append(d / t)
            row += f" {size / MIB / t:.0f} | {d / t:.2f}x |"
        print(row)
    for k, v in ratios.items():
        print(f"median ratio {k} / dd: {statistics.median(v):.2f}x "
              f"(runs: {', '.join(f'{x:.2f}' for x in v)})")


if __name__ == "__main__":
    main()
