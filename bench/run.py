#!/usr/bin/env python3
"""bdev_clone benchmarks against the references a user would pick instead.

Runs SPDK's bdevperf and spdk_dd (stock, with libbdev_clone_spdk.so preloaded)
on malloc and null bdevs, one reactor core, --no-huge; every configuration in
the same run so that ratios hold on a noisy machine. Writes a Markdown table.

    cargo build --release -p bdev_clone_spdk
    python3 bench/run.py [--quick] [--out bench/results.md]
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(ROOT, "target", "release", "libbdev_clone_spdk.so")
# --hugepages: the apps run on hugepages (production's setting), not --no-huge.
HUGEPAGES = False


def app_args(mask="0x1"):
    """The SPDK app flags of every run: no PCI devices, this machine's memory
    setting, reactors on `mask`."""
    return ["--no-pci", *([] if HUGEPAGES else ["--no-huge"]), "--disable-cpumask-locks", "-m", mask]
MIB = 1 << 20


def rpc(sock, method, params=None, timeout=600):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(sock)
    req = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        req["params"] = params
    s.sendall(json.dumps(req).encode())
    buf = b""
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            raise RuntimeError(f"{method}: connection closed")
        buf += chunk
        try:
            v = json.loads(buf)
            break
        except ValueError:
            continue
    s.close()
    if "error" in v:
        raise RuntimeError(f"{method}: {v['error']}")
    return v["result"]


def wait_sock(sock, proc, log):
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"app exited:\n{open(log).read()[-3000:]}")
        if os.path.exists(sock):
            try:
                rpc(sock, "spdk_get_version", timeout=2)
                return
            except (OSError, RuntimeError):
                pass
        time.sleep(0.1)
    raise RuntimeError("app did not come up")


class App:
    """An SPDK app (bdevperf in -z mode or spdk_tgt) with a JSON config."""

    def __init__(self, tmp, name, argv, config, mem_mb, mask="0x1"):
        self.sock = os.path.join(tmp, name + ".sock")
        self.log = os.path.join(tmp, name + ".log")
        cfg = os.path.join(tmp, name + ".json")
        with open(cfg, "w") as f:
            json.dump({"subsystems": [{"subsystem": "bdev", "config": config}]}, f)
        env = dict(os.environ, LD_PRELOAD=LIB)
        self.proc = subprocess.Popen(
            argv + app_args(mask) + ["-s", str(mem_mb), "-r", self.sock, "--json", cfg],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env=env)
        wait_sock(self.sock, self.proc, self.log)

    def call(self, method, params=None, timeout=600):
        return rpc(self.sock, method, params, timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def wait_hydrated(self, name, timeout=600):
        t0 = time.monotonic()
        while True:
            c = self.call("bdev_clone_get_clones", {"name": name})[0]
            if c["state"] in ("hydrated", "source_released") and c["regions_committed"] == c["regions_total"]:
                return time.monotonic() - t0, c
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"{name} not hydrated: {c}")
            time.sleep(0.01)


def malloc(name, mib, bs=512, touch=True):
    """A malloc bdev, by default with all its memory faulted in.

    With --no-huge a malloc bdev's memory is faulted in page by page on first
    touch, which in this VM costs about as much as the copy itself. An lvstore
    created on a malloc bdev zeroes (touches) all of it, so without this every
    lvol configuration would run on warm memory and every other on cold memory.
    Production runs on hugepages (pinned, never faulted): warm memory is the
    fair setting. Creating and deleting a throwaway lvstore is the one way
    through the RPC interface to touch a whole bdev.
    """
    create = {"method": "bdev_malloc_create", "params": {"name": name, "num_blocks": mib * MIB // bs, "block_size": bs}}
    if not touch:
        return [create]
    return [create,
            {"method": "bdev_lvol_create_lvstore", "params": {"bdev_name": name, "lvs_name": "touch_" + name,
                                                             "clear_method": "unmap", "cluster_sz": MIB}},
            {"method": "bdev_lvol_delete_lvstore", "params": {"lvs_name": "touch_" + name}}]


def null(name, mib, bs=512):
    return {"method": "bdev_null_create", "params": {"name": name, "num_blocks": mib * MIB // bs, "block_size": bs}}


def esnap_clone(cluster_sz):
    """SPDK's own clone of "src": an lvstore on "lvsbase" and an esnap clone, lvs/esnap."""
    return [{"method": "bdev_lvol_create_lvstore", "params": {"bdev_name": "lvsbase", "lvs_name": "lvs",
                                                             "cluster_sz": cluster_sz}},
            {"method": "bdev_lvol_clone_bdev", "params": {"bdev": "src", "lvs_name": "lvs", "clone_name": "esnap"}}]


def clone(name, **kw):
    p = {"name": name, "source_bdev": "src", "destination_bdev": "dst", "metadata_bdev": "meta"}
    p.update(kw)
    return {"method": "bdev_clone_create", "params": p}


def bdevperf():
    path = shutil.which("bdevperf")
    if not path:
        sys.exit("bdevperf is not in PATH (copy SPDK's build/examples/bdevperf)")
    return path


def perf(app, workload, qd, secs, size=4096):
    """One bdevperf run: (IOPS summed over its jobs, mean latency in µs of its jobs)."""
    r = app.call("perform_tests", {"workload_type": workload, "queue_depth": qd, "io_size": str(size),
                                   "time_in_sec": secs}, timeout=secs + 120)
    jobs = r["results"]
    return sum(j["iops"] for j in jobs), statistics.mean(j["avg_latency_us"] for j in jobs)


# ------------------------------------------------------------------ 1. I/O path

def base_dev(kind, name, mib):
    """A base bdev of `kind`: malloc (memcpy per I/O) or null (no data: what is
    left is the stack's own cost)."""
    return malloc(name, mib) if kind == "malloc" else [null(name, mib)]


def io_configs(size_mib, kind="malloc"):
    dev = lambda name, mib=size_mib: base_dev(kind, name, mib)
    src_dst = [*dev("src"), *dev("dst"), *malloc("meta", 8)]
    cfgs = [
        (f"base bdev ({kind})", [*dev("base")], "base", None),
        ("passthru vbdev", [*dev("base"), {"method": "bdev_passthru_create",
                                           "params": {"base_bdev_name": "base", "name": "pt"}}], "pt", None),
        ("bdev_clone, hydrated", src_dst + [clone("c0")], "c0", "hydrate"),
        ("bdev_clone, unhydrated", src_dst + [clone("c0", no_hydration=True)], "c0", None),
    ]
    if kind == "malloc":
        esnap = [*malloc("src", size_mib), *malloc("lvsbase", size_mib * 2, touch=False), *esnap_clone(65536)]
        cfgs += [("lvol esnap clone", esnap, "lvs/esnap", None),
                 ("lvol esnap clone, inflated", esnap, "lvs/esnap", "inflate")]
    return cfgs


def copied_share(app, target):
    """How much of an unhydrated clone (or esnap clone) the cell's writes had
    copied by its end: regions hydrated, or clusters allocated, over the total."""
    if target == "c0":
        c = app.call("bdev_clone_get_clones", {"name": "c0"})[0]
        return c["regions_hydrated"] / c["regions_total"]
    b = app.call("bdev_get_bdevs", {"name": target})[0]
    lvol = b["driver_specific"]["lvol"]
    total = b["num_blocks"] * b["block_size"] // (64 << 10)
    return lvol["num_allocated_clusters"] / total


def bench_io(tmp, size_mib, secs, rows, rounds, kind="malloc", cores=1, qds=(1, 32, 128)):
    """4 KiB random reads and writes. Every cell starts a fresh app (a fresh
    clone): a write cell on an unhydrated clone would otherwise run on regions
    earlier cells had already copied. With two cores, bdevperf runs one job
    per core on the same bdev (-C), each at the cell's queue depth."""
    mask = "0x3" if cores == 2 else "0x1"
    extra = ["-C"] if cores == 2 else []
    samples, shares = {}, {}
    cells = [(w, q) for w in ("randread", "randwrite") for q in qds]
    mem = size_mib * 4 + 512 if kind == "malloc" else 1024
    for rnd in range(rounds):
        # Interleaved rounds: a slow spell of the machine hits every configuration.
        for label, config, target, prep in io_configs(size_mib, kind):
            for w, q in cells:
                app = App(tmp, "io", [bdevperf(), "-z", *extra, "-T", target, "-q", "1", "-o", "4096",
                                      "-w", "randread", "-t", "1"], config, mem, mask)
                try:
                    if prep == "hydrate":
                        app.wait_hydrated("c0")
                    elif prep == "inflate":
                        app.call("bdev_lvol_inflate", {"name": "lvs/esnap"})
                    samples.setdefault((label, w, q), []).append(perf(app, w, q, secs))
                    if prep is None and target != "base" and target != "pt" and w == "randwrite":
                        shares.setdefault((label, q), []).append(copied_share(app, target))
                finally:
                    app.stop()
        print(f"  I/O path ({kind}, {cores} core(s)): round {rnd + 1} of {rounds} done", file=sys.stderr)
    results = {k: sorted(v)[len(v) // 2] for k, v in samples.items()}
    where = "one core" if cores == 1 else "two reactors (-m 0x3, one bdevperf job per core, QD per core)"
    mem = ("hugepages" if HUGEPAGES else "--no-huge")
    rows.append(f"## 1{'' if kind == 'malloc' and cores == 1 else f' ({kind}, {cores} cores)'}. I/O path: 4 KiB "
                f"random I/O on {kind} bdevs, {where}, {mem} (median of {rounds} interleaved rounds, {secs} s per "
                "cell, a fresh app and clone per cell)\n")
    rows.append("| configuration | " + " | ".join(f"{'read' if w == 'randread' else 'write'} QD{q}" for w, q in cells)
                + (" | cycles/IO (read QD128) |" if cores == 1 else " |"))
    rows.append("|---|" + "---|" * len(cells) + ("---|" if cores == 1 else ""))
    hz = tsc_hz()
    for label, *_ in io_configs(size_mib, kind):
        line = f"| {label} | " + " | ".join(f"{results[(label, w, q)][0]:,.0f}" for w, q in cells) + " |"
        if cores == 1:
            cyc = hz / results[(label, "randread", 128)][0] if hz else 0
            line += f" {cyc:,.0f} |"
        rows.append(line)
    pt = "passthru vbdev"
    ratio_qds = [q for q in qds if q != 1]
    rows.append("\nRatios to passthru (IOPS), the median over the rounds of each round's ratio (the two ran "
                "seconds apart, so a slow spell of the VM hits both):\n")
    rows.append("| configuration | " + " | ".join(f"{'read' if w == 'randread' else 'write'} QD{q}"
                                               for w in ("randread", "randwrite") for q in ratio_qds) + " |")
    rows.append("|---|" + "---|" * (2 * len(ratio_qds)))
    for label, *_ in io_configs(size_mib, kind)[2:]:
        r = [statistics.median(c[0] / p[0] for c, p in zip(samples[(label, w, q)], samples[(pt, w, q)]))
             for w in ("randread", "randwrite") for q in ratio_qds]
        rows.append(f"| {label} | " + " | ".join(f"{x * 100:.1f}%" for x in r) + " |")
    write_io_json(kind, cores, rounds, secs, [(w, q) for w in ("randread", "randwrite") for q in ratio_qds],
                  [label for label, *_ in io_configs(size_mib, kind)], samples, pt)
    if shares:
        rows.append("\nThe unhydrated configurations' write cells are first writes only at their start: how much "
                    "of the volume the cell had copied (regions hydrated, or clusters allocated) by its end "
                    "(median):\n")
        rows.append("| configuration | " + " | ".join(f"write QD{q}" for q in qds) + " |")
        rows.append("|---|" + "---|" * len(qds))
        for label in sorted({k[0] for k in shares}, key=lambda l: [c[0] for c in io_configs(size_mib, kind)].index(l)):
            rows.append(f"| {label} | " + " | ".join(f"{statistics.median(shares[(label, q)]) * 100:.0f}%"
                                                    for q in qds) + " |")
    rows.append("")
    return results


def write_io_json(kind, cores, rounds, secs, cells, labels, samples, pt):
    """bench/results/io_<kind>_<cores>.json: the I/O table's data for bench/charts.py
    (median IOPS per configuration and cell, and the ratio to passthru as in the table)."""
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "kind": kind, "cores": cores, "rounds": rounds,
           "secs": secs, "memory": "hugepages" if HUGEPAGES else "--no-huge", "reference": pt,
           "cells": [f"{'read' if w == 'randread' else 'write'} QD{q}" for w, q in cells],
           "configurations": []}
    for label in labels:
        iops = [sorted(c[0] for c in samples[(label, w, q)]) for w, q in cells]
        out["configurations"].append({
            "name": label,
            "iops": [v[len(v) // 2] for v in iops],
            "ratio": [statistics.median(c[0] / p[0] for c, p in zip(samples[(label, w, q)], samples[(pt, w, q)]))
                      for w, q in cells]})
    path = os.path.join(ROOT, "bench", "results", f"io_{kind}_{cores}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


def tsc_hz():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":")[1]) * 1e6
    except OSError:
        pass
    return 0


# ------------------------------------------------------------------ 2. hydration

def bench_hydration(tmp, size_mib, load_mib, rows, secs, rounds):
    mem = size_mib * 4 + 1024
    times = {}
    for rnd in range(rounds):
        # bdev_clone, no load.
        app = App(tmp, "hyd", [shutil.which("spdk_tgt")],
                  [*malloc("src", size_mib), *malloc("dst", size_mib), *malloc("meta", 8)], mem)
        try:
            # Wall time from the create RPC until every region is committed
            # (copied, flushed and recorded): the clock lvol inflate gets below.
            t0 = time.monotonic()
            app.call("bdev_clone_create", clone("c0")["params"])
            app.wait_hydrated("c0")
            times.setdefault("bdev_clone", []).append(time.monotonic() - t0)
        finally:
            app.stop()
        # spdk_dd, same bdevs: the copy time it reports itself.
        cfg = os.path.join(tmp, "dd.json")
        with open(cfg, "w") as f:
            json.dump({"subsystems": [{"subsystem": "bdev", "config": [*malloc("src", size_mib), *malloc("dst", size_mib)]}]}, f)
        p = subprocess.run([shutil.which("spdk_dd")] + app_args() + ["-s", str(mem), "--json", cfg, "--ib", "src", "--ob", "dst",
                           "--bs", str(MIB)], capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(p.stdout + p.stderr)
        avg = [line for line in p.stdout.splitlines() if "average" in line]
        times.setdefault("spdk_dd", []).append(size_mib / parse_mbps(avg[-1]))
        # lvol inflate of an esnap clone: the RPC answers when the copy is done.
        app = App(tmp, "inf", [shutil.which("spdk_tgt")],
                  [*malloc("src", size_mib), *malloc("lvsbase", size_mib + 256, touch=False),
                   *esnap_clone(1 << 20)], mem)
        try:
            t0 = time.monotonic()
            app.call("bdev_lvol_inflate", {"name": "lvs/esnap"})
            times.setdefault("lvol inflate", []).append(time.monotonic() - t0)
        finally:
            app.stop()
        print(f"  hydration: round {rnd + 1} of {rounds} done", file=sys.stderr)
    out = {k: statistics.median(v) for k, v in times.items()}
    # Under load: bdevperf randread QD32 on the clone while it hydrates;
    # interleaved rounds, each row against the same round's unhydrating run.
    mem = load_mib * 4 + 1024
    situations = (("no hydration running", None), ("hydrating, default settings", {}),
                  ("hydrating, no rate limit", {"max_bandwidth_mb_sec": 0, "max_bandwidth_busy_mb_sec": 0}),
                  ("hydrating, 100 MiB/s limit", {"max_bandwidth_mb_sec": 100, "max_bandwidth_busy_mb_sec": 0}),
                  ("hydrating, 50 MiB/s limit", {"max_bandwidth_mb_sec": 50, "max_bandwidth_busy_mb_sec": 0}))
    load = {}
    for rnd in range(rounds):
        for label, kw in situations:
            app = App(tmp, "load", [bdevperf(), "-z", "-T", "c0", "-q", "32", "-o", "4096", "-w", "randread", "-t", "1"],
                      [*malloc("src", load_mib), *malloc("dst", load_mib), *malloc("meta", 8),
                       clone("c0", no_hydration=True, **(kw or {}))], mem)
            try:
                if kw is not None:
                    app.call("bdev_clone_set_hydration", {"name": "c0", "enabled": True})
                iops, _ = perf(app, "randread", 32, secs)
                c = app.call("bdev_clone_get_clones", {"name": "c0"})[0]
                load.setdefault(label, []).append((iops, c["hydration_seconds"], c["percent"]))
            finally:
                app.stop()
        print(f"  hydration under load: round {rnd + 1} of {rounds} done", file=sys.stderr)
    rows.append(f"## 2. Hydration of {size_mib} MiB (malloc to malloc, median of {rounds} interleaved rounds)\n")
    rows.append("Wall time, one clock for all: bdev_clone from its create RPC until every region is committed "
                "(copied, the destination flushed, the metadata written), lvol from the inflate RPC until it "
                "answers (copy done, blob metadata synced), spdk_dd as it reports its copy.\n")
    rows.append("| method | seconds | MiB/s | vs spdk_dd |")
    rows.append("|---|---|---|---|")
    for k in ("bdev_clone", "spdk_dd", "lvol inflate"):
        rows.append(f"| {k} | {out[k]:.3f} | {size_mib / out[k]:,.0f} | {out['spdk_dd'] / out[k] * 100:.0f}% |")
    rows.append(f"\nConcurrent load: bdevperf randread QD32 on a {load_mib} MiB clone for {secs} s, hydration "
                f"enabled as it starts; medians of {rounds} interleaved rounds, the ratio taken per round against the "
                "same round's run without hydration. Hydration seconds and percent hydrated as the load ended, "
                "from the engine.\n")
    rows.append("| situation | load IOPS | vs no hydration | hydration seconds | hydrated at the end |")
    rows.append("|---|---|---|---|---|")
    base = load["no hydration running"]
    for label, kw in situations:
        v = load[label]
        iops = statistics.median(x[0] for x in v)
        ratio = statistics.median(x[0] / b[0] for x, b in zip(v, base)) * 100
        extra = "| | |" if kw is None else (f"| {statistics.median(x[1] for x in v):.2f} | "
                                           f"{statistics.median(x[2] for x in v):.0f}% |")
        rows.append(f"| {label} | {iops:,.0f} | {ratio:.1f}% " + extra)
    rows.append("")


def parse_mbps(line):
    import re
    m = re.search(r"average ([0-9.]+) ([kMGT]?)Bps", line)
    if not m:
        return 1
    v = float(m.group(1))
    return v * {"": 1e-6, "k": 1e-3, "M": 1, "G": 1e3, "T": 1e6}[m.group(2)] * 1e6 / MIB


# ------------------------------------------------------------------ 3. first write

def first_writes(app, target):
    """How many regions (clusters) the run allocated, i.e. how many of its writes were first writes."""
    if target == "c0":
        return app.call("bdev_clone_get_clones", {"name": "c0"})[0]["regions_hydrated"]
    return app.call("bdev_get_bdevs", {"name": target})[0]["driver_specific"]["lvol"]["num_allocated_clusters"]


def slowest_mean(log, n):
    """Mean latency (µs) of the n slowest I/Os, from the histogram bdevperf -ll prints.

    A first write copies its region and takes tens of µs or more; a write into a
    region that is already copied takes a few. So the slowest n writes of a run,
    n being the regions it allocated, are its first writes.
    """
    import re
    buckets = []
    for line in open(log):
        m = re.match(r"\s*([0-9.]+)\s*-\s*([0-9.]+):\s*[0-9.]+%\s*\(\s*(\d+)\)", line)
        if m:
            buckets.append(((float(m.group(1)) + float(m.group(2))) / 2, int(m.group(3))))
    total, left = 0.0, n
    # Several jobs print one histogram each: merge them by latency.
    for mid, count in sorted(buckets, reverse=True):
        take = min(count, left)
        total += take * mid
        left -= take
        if left == 0:
            break
    return total / (n - left) if n > left else float("nan")


def delay(base, name, read_us, write_us):
    """SPDK's delay bdev over `base`: fixed read and write latencies."""
    return {"method": "bdev_delay_create", "params": {
        "base_bdev_name": base, "name": name, "avg_read_latency": read_us, "p99_read_latency": read_us,
        "avg_write_latency": write_us, "p99_write_latency": write_us}}


def bench_first_write(tmp, rows, rounds):
    size = 1024  # MiB; the run copies every region or most of them
    src_img = os.path.join(tmp, "fw_src.img")
    with open(src_img, "wb") as f:
        for _ in range(size):
            f.write(os.urandom(MIB))
    # Three kinds of devices, each a function (name, MiB, touch) -> config:
    # - malloc, zeroed: the clone's own cost, with copies at memory speed;
    # - the source an aio file of random data (no copy skippable as zeroes),
    #   read with O_DIRECT from the VM's disk: disk-bound;
    # - NVMe-like: delay bdevs over malloc, reads 80 µs, writes 20 µs (an NVMe
    #   drive's order at QD1), on every device of both clones, metadata too.
    def plain(name, mib, touch=True):
        return malloc(name, mib, touch=touch)

    def aio_source(name, mib, touch=True):
        if name != "src":
            return malloc(name, mib, touch=touch)
        return [{"method": "bdev_aio_create", "params": {"name": "src", "filename": src_img, "block_size": 512}}]

    def nvme_like(name, mib, touch=True):
        return [*malloc(name + "_mem", mib, touch=touch), delay(name + "_mem", name, 80, 20)]

    kinds = [("zeroed malloc", plain), ("random-data aio source", aio_source),
             ("NVMe-like (delay bdevs)", nvme_like)]
    rows.append(f"## 3. First write into an unhydrated region: 4 KiB random writes, QD1, 1 s, {size} MiB clone, "
                f"median of {rounds} interleaved rounds\n")
    rows.append("Mean latency in µs of a first write into a region (the slowest writes of the run, as many as regions it "
                "copied, from bdevperf's latency histogram); in brackets the average over all writes, including "
                "those into regions an earlier write had already copied.\n")
    rows.append("| region / cluster | " + " | ".join(f"bdev_clone, {k} | lvol esnap, {k}" for k, _ in kinds) + " |")
    rows.append("|---|" + "---|---|" * len(kinds))
    samples = {}
    for rnd in range(rounds):
        for kb in (4, 64, 256, 1024):
            for kind, dev in kinds:
                cfgs = [
                    ([*dev("src", size), *dev("dst", size), *dev("meta", 8),
                      clone("c0", region_size_kb=kb, no_hydration=True)], "c0"),
                    ([*dev("src", size), *dev("lvsbase", size + 256, touch=False),
                      *esnap_clone(kb * 1024)], "lvs/esnap"),
                ]
                for cfg, target in cfgs:
                    key = (kb, kind, target)
                    try:
                        app = App(tmp, "fw", [bdevperf(), "-z", "-T", target, "-q", "1", "-o", "4096", "-w", "randwrite",
                                              "-t", "1", "-l", "-l"], cfg, size * 3 + 1024)
                    except RuntimeError as e:
                        print(f"  {target} {kb} KiB: {str(e)[-300:]}", file=sys.stderr)
                        continue
                    try:
                        _, lat = perf(app, "randwrite", 1, 1)
                        first = first_writes(app, target)
                        time.sleep(0.5)  # the histogram is printed after the RPC answer
                        samples.setdefault(key, []).append((slowest_mean(app.log, first), lat))
                    except RuntimeError as e:
                        print(f"  {target} {kb} KiB: {e}", file=sys.stderr)
                    finally:
                        app.stop()
        print(f"  first write: round {rnd + 1} of {rounds} done", file=sys.stderr)
    for kb in (4, 64, 256, 1024):
        cells = []
        for kind, _ in kinds:
            for target in ("c0", "lvs/esnap"):
                v = samples.get((kb, kind, target))
                if not v:
                    cells.append("failed")
                    continue
                first = statistics.median(x for x, _ in v)
                avg = statistics.median(y for _, y in v)
                cells.append(f"{first:.1f} ({avg:.1f})")
        what = f"{kb} KiB" if kb != 4 else "4 KiB (= the write: no copy, the write replaces the region)"
        rows.append(f"| {what} | " + " | ".join(cells) + " |")
    rows.append("")


# ------------------------------------------------------------------ 7. two reactors

def all_committed(app, names, timeout=600):
    t0 = time.monotonic()
    while True:
        cs = app.call("bdev_clone_get_clones")
        done = [c for c in cs if c["name"] in names and c["regions_committed"] == c["regions_total"]]
        if len(done) == len(names):
            return
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"not hydrated: {cs}")
        time.sleep(0.01)


def bench_reactors(tmp, rows, rounds, secs):
    """What a second reactor brings: 8 clones of one source hydrating at once
    (no load) on one and on two reactors; a load on core 1 while they hydrate;
    first writes from both cores, bdev_clone against the lvol esnap clone."""
    # 64 GiB null volumes: no memory, and the copies last seconds, so the
    # load below runs while they hydrate.
    n, mib = 8, 65536
    many = [null("src", mib), *[x for i in range(n) for x in (null(f"dst{i}", mib), *malloc(f"meta{i}", 8))]]
    names = [f"c{i}" for i in range(n)]
    creates = [clone(f"c{i}", destination_bdev=f"dst{i}", metadata_bdev=f"meta{i}", no_hydration=True)
               for i in range(n)]
    rate = {}
    for rnd in range(rounds):
        for mask in ("0x1", "0x3"):
            app = App(tmp, "many", [shutil.which("spdk_tgt")], many + creates, 1024, mask)
            try:
                t0 = time.monotonic()
                for c in names:
                    app.call("bdev_clone_set_hydration", {"name": c, "enabled": True})
                all_committed(app, names)
                rate.setdefault(mask, []).append(n * mib / (time.monotonic() - t0))
            finally:
                app.stop()
        print(f"  8 clones: round {rnd + 1} of {rounds} done", file=sys.stderr)
    # A load on core 1 (a passthru over its own null bdev, pinned by bdevperf's
    # job file) while the 8 clones hydrate with default settings; against the
    # same load with the clones paused. 256 GiB clones: their copies outlast
    # the load.
    big = 262144
    many = [null("src", big), *[x for i in range(n) for x in (null(f"dst{i}", big), *malloc(f"meta{i}", 8))]]
    jobs = os.path.join(tmp, "jobs.ini")
    with open(jobs, "w") as f:
        f.write("[global]\nrw=randread\nbs=4096\niodepth=32\n[load]\nfilename=pt\ncpumask=0x2\n")
    load = {}
    for rnd in range(rounds):
        for hydrating in (False, True):
            cfg = many + creates + [null("lbase", 1024), {"method": "bdev_passthru_create",
                                                          "params": {"base_bdev_name": "lbase", "name": "pt"}}]
            app = App(tmp, "load2", [bdevperf(), "-z", "-j", jobs], cfg, 1024, "0x3")
            try:
                if hydrating:
                    for c in names:
                        app.call("bdev_clone_set_hydration", {"name": c, "enabled": True})
                r = app.call("perform_tests", {"time_in_sec": secs}, timeout=secs + 120)
                iops = sum(j["iops"] for j in r["results"])
                pct = statistics.mean(c["percent"] for c in app.call("bdev_clone_get_clones"))
                load.setdefault(hydrating, []).append((iops, pct))
            finally:
                app.stop()
        print(f"  load on core 1: round {rnd + 1} of {rounds} done", file=sys.stderr)
    # First writes from both cores: a fresh clone (64 KiB regions, none
    # hydrated) or esnap clone (64 KiB clusters) per round, randwrite QD1 per
    # core. Writes into regions an earlier write copied are not first writes:
    # the mean of the slowest writes, as many as regions were copied, is the
    # first writes' latency (as in section 3).
    size = 1024
    fw = {}
    for rnd in range(rounds):
        for label, cfg, target in (
                ("bdev_clone", [*malloc("src", size), *malloc("dst", size), *malloc("meta", 8),
                                clone("c0", no_hydration=True)], "c0"),
                ("lvol esnap clone", [*malloc("src", size), *malloc("lvsbase", size + 256, touch=False),
                                      *esnap_clone(65536)], "lvs/esnap")):
            app = App(tmp, "fw2", [bdevperf(), "-z", "-C", "-T", target, "-q", "1", "-o", "4096", "-w", "randwrite",
                                   "-t", "1", "-l", "-l"], cfg, size * 3 + 1024, "0x3")
            try:
                iops, lat = perf(app, "randwrite", 1, 1)
                copied = copied_share(app, target)
                time.sleep(0.5)  # the histograms are printed after the RPC answer
                first = slowest_mean(app.log, round(copied * size * MIB / 65536))
                fw.setdefault(label, []).append((first, lat, copied))
            finally:
                app.stop()
        print(f"  first writes, two cores: round {rnd + 1} of {rounds} done", file=sys.stderr)
    med = lambda v: statistics.median(v)
    rows.append(f"## 7. Two reactors (-m 0x3), null and malloc bdevs, {'hugepages' if HUGEPAGES else '--no-huge'} "
                f"(median of {rounds} interleaved rounds)\n")
    one, two = med(rate["0x1"]), med(rate["0x3"])
    rows.append(f"8 clones of one null source hydrating at once into null destinations ({mib // 1024} GiB each), no load, "
                "wall time from enabling hydration until all are committed:\n")
    rows.append("| reactors | total MiB/s | vs one reactor |")
    rows.append("|---|---|---|")
    rows.append(f"| one (-m 0x1) | {one:,.0f} | 100% |")
    rows.append(f"| two (-m 0x3) | {two:,.0f} | {two / one * 100:.0f}% |")
    rows.append("\nEvery clone's engine (hydration, commits) runs on the thread that created it, the app thread "
                "on core 0, so the copies cannot spread over the second reactor (issue 15 item 1, open).\n")
    base = [x[0] for x in load[False]]
    rows.append(f"A load on core 1 (4 KiB randread QD32 on a passthru over null, {secs} s) while 8 clones "
                f"({big // 1024} GiB each) hydrate with default settings, against the same load with them paused:\n")
    rows.append("| clones | load IOPS | vs paused | clones hydrated at the end (mean) |")
    rows.append("|---|---|---|---|")
    for h in (False, True):
        v = load[h]
        ratio = med([x[0] / b for x, b in zip(v, base)]) * 100
        rows.append(f"| {'hydrating' if h else 'paused'} | {med([x[0] for x in v]):,.0f} | {ratio:.1f}% | "
                    f"{med([x[1] for x in v]):.0f}% |")
    rows.append("\nFirst writes from both cores: 4 KiB random writes, QD1 per core, 1 s, on a fresh 1 GiB clone "
                "(64 KiB regions) or esnap clone (64 KiB clusters) over malloc. Mean latency of a first write (the "
                "slowest writes of the run, as many as regions it copied, from bdevperf's histograms), in brackets "
                "the mean over all writes:\n")
    rows.append("| clone | first write µs (all writes) | copied at the end |")
    rows.append("|---|---|---|")
    for label in ("bdev_clone", "lvol esnap clone"):
        v = fw[label]
        rows.append(f"| {label} | {med([x[0] for x in v]):.1f} ({med([x[1] for x in v]):.1f}) | "
                    f"{med([x[2] for x in v]) * 100:.1f}% |")
    rows.append("")


# ------------------------------------------------------------------ 6. scale

def bench_scale(tmp, rows, rounds):
    """Create, hydration, resume and memory from 16 GiB to 64 TiB.

    Null source and destination (no memory, no data moved: the stack's own
    cost), a malloc metadata bdev, 64 KiB regions, default settings. Each size
    hydrates the same amount (TARGET regions, 16 GiB of clone data); its rate
    is regions_hydrated x region size / hydration_seconds, both from the
    first bdev_clone_get_clones answer at or past the target (the engine's
    clock, so the polling interval does not count).

    Twice per size: with SPDK's auto-examine off (no I/O at all but the
    clone's own: what the stack costs), and as spdk_tgt comes (the bdev
    modules examine the new clone bdev: reads the clone counts as user I/O).
    """
    region_kb = 64
    target = (16 << 30) // (region_kb << 10)
    sizes = [("16 GiB", 16 << 10), ("1 TiB", 1 << 20), ("16 TiB", 16 << 20), ("64 TiB", 64 << 20)]
    no_examine = [{"method": "bdev_set_options", "params": {"bdev_auto_examine": False}}]
    samples = {}
    for rnd in range(rounds):
        for label, mib in sizes:
            for examine in (False, True):
                regions = mib * MIB // (region_kb << 10)
                # Two copies of the bitmap (2 bits per region) and a page
                # table under 1%: 270,565,376 bytes at 64 TiB.
                meta_mib = max(8, regions // 4 * 17 // 16 // MIB + 4)
                app = App(tmp, "scale", [shutil.which("spdk_tgt")],
                          ([] if examine else no_examine)
                          + [null("src", mib), null("dst", mib), *malloc("meta", meta_mib)], 2048)
                try:
                    params = clone("c0", region_size_kb=region_kb)["params"]
                    t0 = time.monotonic()
                    app.call("bdev_clone_create", params)
                    create = time.monotonic() - t0
                    while True:
                        c = app.call("bdev_clone_get_clones", {"name": "c0"})[0]
                        if c["regions_hydrated"] >= target:
                            break
                        if c["state"] != "hydrating":
                            raise RuntimeError(f"scale {label}: {c}")
                        time.sleep(0.002)
                    mib_s = c["regions_hydrated"] * region_kb / 1024 / c["hydration_seconds"]
                    memory = c["memory_bytes"]
                    t0 = time.monotonic()
                    app.call("bdev_clone_delete", {"name": "c0"})
                    delete = time.monotonic() - t0
                    t0 = time.monotonic()
                    app.call("bdev_clone_create", params)
                    resume = time.monotonic() - t0
                    c = app.call("bdev_clone_get_clones", {"name": "c0"})[0]
                    if "resumed from metadata" not in open(app.log).read():
                        raise RuntimeError(f"scale {label}: the second create did not resume")
                    app.call("bdev_clone_delete", {"name": "c0"})
                    samples.setdefault((label, examine), []).append(
                        (create, mib_s, delete, resume, memory, c["memory_bytes"]))
                finally:
                    app.stop()
        print(f"  scale: round {rnd + 1} of {rounds} done", file=sys.stderr)
    med = {k: [statistics.median(x[i] for x in v) for i in range(6)] for k, v in samples.items()}
    rows.append(f"## 6. Scale: 16 GiB to 64 TiB, null to null, {region_kb} KiB regions "
                f"(median of {rounds} interleaved rounds)\n")
    rows.append(f"Null source and destination, malloc metadata (touched), spdk_tgt with the module preloaded, "
                f"default settings. Hydration: {target} regions ({target * region_kb >> 20} GiB of clone data) "
                "per size from the create on, as regions_hydrated x region size / hydration_seconds (the "
                "engine's clock) from the first bdev_clone_get_clones answer at or past that count; without "
                "examine: `bdev_set_options --no-auto-examine`, so no I/O reaches the clone but its own; "
                "with examine: spdk_tgt's default, SPDK's bdev modules read the new clone bdev as it registers. "
                "Create and resume: the bdev_clone_create RPC's answer time (wall clock, client side, examine "
                "off); resume is the create after a delete, over the same metadata.\n")
    rows.append("| clone | regions | create (format) RPC | hydration null → null, first 16 GiB, no examine: "
                "median (best) | same, with SPDK's examine: median (best) | delete RPC | resume (create again) RPC | memory_bytes while "
                "hydrating | memory_bytes after resume |")
    rows.append("|---|---|---|---|---|---|---|---|---|")
    for label, mib in sizes:
        cr, rate, de, re, mem, mem2 = med[(label, False)]
        rate_ex = med[(label, True)][1]
        best = max(x[1] for x in samples[(label, False)])
        best_ex = max(x[1] for x in samples[(label, True)])
        rows.append(f"| {label} | {mib * MIB // (region_kb << 10):,} | {cr:.3f} s | {rate:,.0f} ({best:,.0f}) MiB/s | "
                    f"{rate_ex:,.0f} ({best_ex:,.0f}) MiB/s | {de:.3f} s | {re:.3f} s | {mem / MIB:.1f} MiB | "
                    f"{mem2 / MIB:.1f} MiB |")
    rows.append("")
    for examine, what in ((False, "no examine"), (True, "with SPDK's examine")):
        small, big = samples[("16 GiB", examine)], samples[("64 TiB", examine)]
        ratio = statistics.median(b[1] / a[1] for a, b in zip(small, big)) * 100
        medians = statistics.median(x[1] for x in big) / statistics.median(x[1] for x in small) * 100
        bests = max(x[1] for x in big) / max(x[1] for x in small) * 100
        rows.append(f"Hydration MiB/s at 64 TiB / at 16 GiB, {what}: {medians:.1f}% of the medians, {bests:.1f}% "
                    f"of the best runs, {ratio:.1f}% the median of the rounds' ratios.\n")


def reserve_hugepages(mib):
    """Hugepages for the apps: reserved (2 MiB pages) and hugetlbfs mounted if
    there are fewer and this runs as root; otherwise a clear error."""
    def total():
        for line in open("/proc/meminfo"):
            if line.startswith("HugePages_Total:"):
                return int(line.split()[1]) * 2
        return 0
    if total() < mib and os.geteuid() == 0:
        with open("/proc/sys/vm/nr_hugepages", "w") as f:
            f.write(str(mib // 2))
    if total() < mib:
        sys.exit(f"--hugepages: {total()} MiB of hugepages reserved, {mib} needed (as root: "
                 f"echo {mib // 2} > /proc/sys/vm/nr_hugepages)")
    mounted = any(line.split()[2] == "hugetlbfs" for line in open("/proc/mounts"))
    if not mounted:
        if os.geteuid() != 0:
            sys.exit("--hugepages: no hugetlbfs mounted (as root: mount -t hugetlbfs nodev /dev/hugepages)")
        os.makedirs("/dev/hugepages", exist_ok=True)
        subprocess.run(["mount", "-t", "hugetlbfs", "nodev", "/dev/hugepages"], check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results.md"))
    ap.add_argument("--only", choices=["io", "io-null", "io-2cores", "hydration", "firstwrite", "scale",
                                       "reactors"])
    ap.add_argument("--hugepages", action="store_true",
                    help="run the apps on hugepages (reserved and mounted here if root and none are)")
    a = ap.parse_args()
    if a.hugepages:
        global HUGEPAGES
        HUGEPAGES = True
        reserve_hugepages(3072)
    if not os.path.exists(LIB):
        sys.exit(f"{LIB} missing: cargo build --release -p bdev_clone_spdk")
    secs = 1 if a.quick else 4
    rows = [f"# bdev_clone benchmarks ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
            f"{subprocess.run(['uname', '-r'], capture_output=True, text=True).stdout.strip()})\n"]
    with tempfile.TemporaryDirectory() as tmp:
        io_secs, io_rounds = (1, 1) if a.quick else (2, 3)
        if a.only in (None, "io"):
            bench_io(tmp, 256, io_secs, rows, io_rounds)
        if a.only in (None, "io-null"):
            bench_io(tmp, 1024, io_secs, rows, io_rounds, kind="null", qds=(32, 128))
        if a.only in (None, "io-2cores"):
            bench_io(tmp, 1024, io_secs, rows, io_rounds, kind="null", cores=2, qds=(32, 128))
            bench_io(tmp, 256, io_secs, rows, io_rounds, kind="malloc", cores=2, qds=(32, 128))
        if a.only in (None, "hydration"):
            bench_hydration(tmp, 256 if a.quick else 2048, 1024, rows, secs * 2, 1 if a.quick else 3)
        if a.only in (None, "firstwrite"):
            bench_first_write(tmp, rows, 1 if a.quick else 3)
        if a.only in (None, "scale"):
            bench_scale(tmp, rows, 1 if a.quick else 25)
        if a.only in (None, "reactors"):
            bench_reactors(tmp, rows, 1 if a.quick else 3, 2 if a.quick else 4)
    text = "\n".join(rows) + "\n"
    with open(a.out, "w") as f:
        f.write(text)
    print(text)
    draw_charts()


def draw_charts():
    """Redraw bench/charts/*.png from bench/results/ (bench/charts.py) when matplotlib is
    installed; a failure to draw never fails the benchmark run."""
    try:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import charts
        charts.draw_all()
    except Exception as e:  # noqa: BLE001 - the results are written; the charts are extra
        print(f"charts not drawn: {e}", file=sys.stderr)


if __name__ == "__main__":
    main()
