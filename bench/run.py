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
APP = ["--no-pci", "--no-huge", "--disable-cpumask-locks", "-m", "0x1"]
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

    def __init__(self, tmp, name, argv, config, mem_mb):
        self.sock = os.path.join(tmp, name + ".sock")
        self.log = os.path.join(tmp, name + ".log")
        cfg = os.path.join(tmp, name + ".json")
        with open(cfg, "w") as f:
            json.dump({"subsystems": [{"subsystem": "bdev", "config": config}]}, f)
        env = dict(os.environ, LD_PRELOAD=LIB)
        self.proc = subprocess.Popen(
            argv + APP + ["-s", str(mem_mb), "-r", self.sock, "--json", cfg],
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
    r = app.call("perform_tests", {"workload_type": workload, "queue_depth": qd, "io_size": str(size),
                                   "time_in_sec": secs}, timeout=secs + 120)
    job = r["results"][0]
    return job["iops"], job["avg_latency_us"]


# ------------------------------------------------------------------ 1. I/O path

def io_configs(size_mib):
    src_dst = [*malloc("src", size_mib), *malloc("dst", size_mib), *malloc("meta", 8)]
    esnap = [*malloc("src", size_mib), *malloc("lvsbase", size_mib * 2, touch=False),
             *esnap_clone(65536)]
    return [
        ("base bdev (malloc)", [*malloc("base", size_mib)], "base", None),
        ("passthru vbdev", [*malloc("base", size_mib), {"method": "bdev_passthru_create", "params": {"base_bdev_name": "base", "name": "pt"}}], "pt", None),
        ("bdev_clone, hydrated", src_dst + [clone("c0")], "c0", "hydrate"),
        ("bdev_clone, unhydrated", src_dst + [clone("c0", no_hydration=True)], "c0", None),
        ("lvol esnap clone", esnap, "lvs/esnap", None),
        ("lvol esnap clone, inflated", esnap, "lvs/esnap", "inflate"),
    ]


def bench_io(tmp, size_mib, secs, rows, rounds):
    samples = {}
    for rnd in range(rounds):
        # Interleaved rounds: a slow spell of the machine hits every configuration.
        for label, config, target, prep in io_configs(size_mib):
            app = App(tmp, "io", [bdevperf(), "-z", "-T", target, "-q", "1", "-o", "4096", "-w", "randread", "-t", "1"],
                      config, size_mib * 4 + 512)
            try:
                if prep == "hydrate":
                    app.wait_hydrated("c0")
                elif prep == "inflate":
                    app.call("bdev_lvol_inflate", {"name": "lvs/esnap"})
                for workload in ("randread", "randwrite"):
                    for qd in (1, 32, 128):
                        samples.setdefault((label, workload, qd), []).append(perf(app, workload, qd, secs))
            finally:
                app.stop()
        print(f"  I/O path: round {rnd + 1} of {rounds} done", file=sys.stderr)
    # Median of the rounds.
    results = {k: sorted(v)[len(v) // 2] for k, v in samples.items()}
    rows.append(f"## 1. I/O path: 4 KiB random I/O, one core (median of {rounds} interleaved rounds, {secs} s per cell)\n")
    rows.append("| configuration | read QD1 IOPS | read QD32 | read QD128 | write QD1 | write QD32 | write QD128 | cycles/IO (read QD128) |")
    rows.append("|---|---|---|---|---|---|---|---|")
    hz = tsc_hz()
    for label, *_ in io_configs(size_mib):
        cells = [f"{results[(label, w, q)][0]:,.0f}" for w in ("randread", "randwrite") for q in (1, 32, 128)]
        cyc = hz / results[(label, "randread", 128)][0] if hz else 0
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {cyc:,.0f} |")
    pt = "passthru vbdev"
    rows.append("\nRatios to passthru (IOPS), the median over the rounds of each round's ratio (the two ran "
                "seconds apart, so a slow spell of the VM hits both):\n")
    rows.append("| configuration | read QD32 | read QD128 | write QD32 | write QD128 |")
    rows.append("|---|---|---|---|---|")
    for label in ("bdev_clone, hydrated", "bdev_clone, unhydrated", "lvol esnap clone", "lvol esnap clone, inflated"):
        cells = [f"{statistics.median(c[0] / p[0] for c, p in zip(samples[(label, w, q)], samples[(pt, w, q)])) * 100:.1f}%"
                 for w in ("randread", "randwrite") for q in (32, 128)]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    rows.append("")
    return results


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
        # bdev_clone, no load: the engine's own hydration clock (first copy to last).
        app = App(tmp, "hyd", [shutil.which("spdk_tgt")],
                  [*malloc("src", size_mib), *malloc("dst", size_mib), *malloc("meta", 8)], mem)
        try:
            app.call("bdev_clone_create", clone("c0")["params"])
            _, c = app.wait_hydrated("c0")
            times.setdefault("bdev_clone", []).append(c["hydration_seconds"])
        finally:
            app.stop()
        # spdk_dd, same bdevs: the copy time it reports itself.
        cfg = os.path.join(tmp, "dd.json")
        with open(cfg, "w") as f:
            json.dump({"subsystems": [{"subsystem": "bdev", "config": [*malloc("src", size_mib), *malloc("dst", size_mib)]}]}, f)
        p = subprocess.run([shutil.which("spdk_dd")] + APP + ["-s", str(mem), "--json", cfg, "--ib", "src", "--ob", "dst",
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
    for mid, count in reversed(buckets):
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
        rows.append(f"| {kb} KiB | " + " | ".join(cells) + " |")
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results.md"))
    ap.add_argument("--only", choices=["io", "hydration", "firstwrite", "scale"])
    a = ap.parse_args()
    if not os.path.exists(LIB):
        sys.exit(f"{LIB} missing: cargo build --release -p bdev_clone_spdk")
    secs = 1 if a.quick else 4
    rows = [f"# bdev_clone benchmarks ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
            f"{subprocess.run(['uname', '-r'], capture_output=True, text=True).stdout.strip()})\n"]
    with tempfile.TemporaryDirectory() as tmp:
        if a.only in (None, "io"):
            bench_io(tmp, 256, 1 if a.quick else 2, rows, 1 if a.quick else 5)
        if a.only in (None, "hydration"):
            bench_hydration(tmp, 256 if a.quick else 2048, 1024, rows, secs * 2, 1 if a.quick else 3)
        if a.only in (None, "firstwrite"):
            bench_first_write(tmp, rows, 1 if a.quick else 3)
        if a.only in (None, "scale"):
            bench_scale(tmp, rows, 1 if a.quick else 25)
    text = "\n".join(rows) + "\n"
    with open(a.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
