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


def malloc(name, mib, bs=512):
    return {"method": "bdev_malloc_create", "params": {"name": name, "num_blocks": mib * MIB // bs, "block_size": bs}}


def null(name, mib, bs=512):
    return {"method": "bdev_null_create", "params": {"name": name, "num_blocks": mib * MIB // bs, "block_size": bs}}


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
    src_dst = [malloc("src", size_mib), malloc("dst", size_mib), malloc("meta", 8)]
    esnap = [malloc("src", size_mib), malloc("lvsbase", size_mib * 2),
             {"method": "bdev_lvol_create_lvstore", "params": {"bdev_name": "lvsbase", "lvs_name": "lvs", "cluster_sz": 65536}},
             {"method": "bdev_lvol_clone_bdev", "params": {"bdev": "src", "lvs_name": "lvs", "clone_name": "esnap"}}]
    return [
        ("base bdev (malloc)", [malloc("base", size_mib)], "base", None),
        ("passthru vbdev", [malloc("base", size_mib), {"method": "bdev_passthru_create", "params": {"base_bdev_name": "base", "name": "pt"}}], "pt", None),
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
    rows.append(f"## 1. I/O path: 4 KiB random I/O, one core (median of {rounds} interleaved rounds, {secs} s each)\n")
    rows.append("| configuration | read QD1 IOPS | read QD32 | read QD128 | write QD1 | write QD32 | write QD128 | cycles/IO (read QD128) |")
    rows.append("|---|---|---|---|---|---|---|---|")
    hz = tsc_hz()
    for label, *_ in io_configs(size_mib):
        cells = [f"{results[(label, w, q)][0]:,.0f}" for w in ("randread", "randwrite") for q in (1, 32, 128)]
        cyc = hz / results[(label, "randread", 128)][0] if hz else 0
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {cyc:,.0f} |")
    pt = "passthru vbdev"
    rows.append("\nRatios to passthru (IOPS):\n")
    rows.append("| configuration | read QD32 | read QD128 | write QD32 | write QD128 |")
    rows.append("|---|---|---|---|---|")
    for label in ("bdev_clone, hydrated", "bdev_clone, unhydrated", "lvol esnap clone", "lvol esnap clone, inflated"):
        cells = [f"{results[(label, w, q)][0] / results[(pt, w, q)][0] * 100:.1f}%" for w in ("randread", "randwrite") for q in (32, 128)]
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

def bench_hydration(tmp, size_mib, rows, secs):
    mem = size_mib * 4 + 1024
    out = {}
    # bdev_clone, no load
    app = App(tmp, "hyd", [shutil.which("spdk_tgt")], [malloc("src", size_mib), malloc("dst", size_mib), malloc("meta", 8)], mem)
    try:
        t0 = time.monotonic()
        app.call("bdev_clone_create", clone("c0")["params"])
        t, _ = app.wait_hydrated("c0")
        out["bdev_clone"] = t + 0 * t0
    finally:
        app.stop()
    # spdk_dd, same bdevs
    cfg = os.path.join(tmp, "dd.json")
    with open(cfg, "w") as f:
        json.dump({"subsystems": [{"subsystem": "bdev", "config": [malloc("src", size_mib), malloc("dst", size_mib)]}]}, f)
    t0 = time.monotonic()
    p = subprocess.run([shutil.which("spdk_dd")] + APP + ["-s", str(mem), "--json", cfg, "--ib", "src", "--ob", "dst",
                       "--bs", str(MIB)], capture_output=True, text=True)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise RuntimeError(p.stdout + p.stderr)
    avg = [l for l in p.stdout.splitlines() if "average" in l]
    out["spdk_dd"] = size_mib / parse_mbps(avg[-1]) if avg else wall
    # lvol inflate of an esnap clone
    app = App(tmp, "inf", [shutil.which("spdk_tgt")],
              [malloc("src", size_mib), malloc("lvsbase", size_mib + 256),
               {"method": "bdev_lvol_create_lvstore", "params": {"bdev_name": "lvsbase", "lvs_name": "lvs", "cluster_sz": 1 << 20}},
               {"method": "bdev_lvol_clone_bdev", "params": {"bdev": "src", "lvs_name": "lvs", "clone_name": "esnap"}}], mem)
    try:
        t0 = time.monotonic()
        app.call("bdev_lvol_inflate", {"name": "lvs/esnap"})
        out["lvol inflate"] = time.monotonic() - t0
    finally:
        app.stop()
    # Under load: bdevperf randread QD32 on the clone, hydrating vs hydrated.
    load = {}
    for label, kw in (("no hydration running", {}), ("hydrating, default settings", {}),
                      ("hydrating, no rate limit", {"max_bandwidth_mb_sec": 0}),
                      ("hydrating, 100 MiB/s limit", {"max_bandwidth_mb_sec": 100}),
                      ("hydrating, 50 MiB/s limit", {"max_bandwidth_mb_sec": 50})):
        app = App(tmp, "load", [bdevperf(), "-z", "-T", "c0", "-q", "32", "-o", "4096", "-w", "randread", "-t", "1"],
                  [malloc("src", size_mib), malloc("dst", size_mib), malloc("meta", 8),
                   clone("c0", no_hydration=True, **kw)], mem)
        try:
            if label == "no hydration running":
                iops, _ = perf(app, "randread", 32, secs)
                load[label] = (iops, None)
            else:
                import threading
                app.call("bdev_clone_set_hydration", {"name": "c0", "enabled": True})
                t0 = time.monotonic()
                res = {}
                th = threading.Thread(target=lambda: res.update(r=perf(app, "randread", 32, secs)))
                th.start()
                t, _ = app.wait_hydrated("c0")  # polled while the load runs
                th.join()
                load[label] = (res["r"][0], t)
        finally:
            app.stop()
    rows.append(f"## 2. Hydration of {size_mib} MiB (malloc to malloc)\n")
    rows.append("| method | seconds | MiB/s | vs spdk_dd |")
    rows.append("|---|---|---|---|")
    for k in ("bdev_clone", "spdk_dd", "lvol inflate"):
        rows.append(f"| {k} | {out[k]:.2f} | {size_mib / out[k]:,.0f} | {out['spdk_dd'] / out[k] * 100:.0f}% |")
    rows.append(f"\nConcurrent load (bdevperf randread QD32 on the clone, {secs} s):\n")
    rows.append("| situation | load IOPS | vs no hydration | hydration seconds |")
    rows.append("|---|---|---|---|")
    base = load["no hydration running"][0]
    for k, (iops, t) in load.items():
        rows.append(f"| {k} | {iops:,.0f} | {iops / base * 100:.1f}% | {'' if t is None else f'{t:.2f}'} |")
    rows.append("")


def parse_mbps(line):
    import re
    m = re.search(r"average ([0-9.]+) ([kMGT]?)Bps", line)
    if not m:
        return 1
    v = float(m.group(1))
    return v * {"": 1e-6, "k": 1e-3, "M": 1, "G": 1e3, "T": 1e6}[m.group(2)] * 1e6 / MIB


# ------------------------------------------------------------------ 3. first write

def bench_first_write(tmp, rows, secs):
    size = 2048  # MiB of source; fresh regions for most of the 1 s run
    # A source of non-zero data (an aio file in the page cache), so that no
    # copy can be skipped as zeroes.
    src_img = os.path.join(tmp, "fw_src.img")
    with open(src_img, "wb") as f:
        chunk = os.urandom(MIB)
        for _ in range(size):
            f.write(chunk)
    src = {"method": "bdev_aio_create", "params": {"name": "src", "filename": src_img, "block_size": 512}}
    rows.append("## 3. First write into an unhydrated region: 4 KiB random writes, QD1, 1 s, random-data aio source\n")
    rows.append("| region / cluster | bdev_clone avg latency (us) | lvol esnap clone avg latency (us) |")
    rows.append("|---|---|---|")
    for kb in (4, 64, 256, 1024):
        lat = []
        cfgs = [
            ([src, malloc("dst", size), malloc("meta", 8),
              clone("c0", region_size_kb=kb, no_hydration=True)], "c0"),
            ([src, malloc("lvsbase", size + 1024),
              {"method": "bdev_lvol_create_lvstore", "params": {"bdev_name": "lvsbase", "lvs_name": "lvs", "cluster_sz": kb * 1024}},
              {"method": "bdev_lvol_clone_bdev", "params": {"bdev": "src", "lvs_name": "lvs", "clone_name": "esnap"}}], "lvs/esnap"),
        ]
        for cfg, target in cfgs:
            try:
                app = App(tmp, "fw", [bdevperf(), "-z", "-T", target, "-q", "1", "-o", "4096", "-w", "randwrite", "-t", "1"],
                          cfg, size * 2 + 2048)
            except RuntimeError as e:
                lat.append(None)
                print(f"  {target} {kb} KiB: {str(e)[-300:]}", file=sys.stderr)
                continue
            try:
                lat.append(perf(app, "randwrite", 1, 1)[1])
            except RuntimeError as e:
                print(f"  {target} {kb} KiB: {e}", file=sys.stderr)
                lat.append(None)
            finally:
                app.stop()
        rows.append(f"| {kb} KiB | " + " | ".join("failed" if v is None else f"{v:.1f}" for v in lat) + " |")
    rows.append("")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results.md"))
    ap.add_argument("--only", choices=["io", "hydration", "firstwrite"])
    a = ap.parse_args()
    if not os.path.exists(LIB):
        sys.exit(f"{LIB} missing: cargo build --release -p bdev_clone_spdk")
    secs = 1 if a.quick else 4
    rows = [f"# bdev_clone benchmarks ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
            f"{subprocess.run(['uname', '-r'], capture_output=True, text=True).stdout.strip()})\n"]
    with tempfile.TemporaryDirectory() as tmp:
        if a.only in (None, "io"):
            bench_io(tmp, 256, secs, rows, 1 if a.quick else 3)
        if a.only in (None, "hydration"):
            bench_hydration(tmp, 256 if a.quick else 1024, rows, secs * 2)
        if a.only in (None, "firstwrite"):
            bench_first_write(tmp, rows, secs)
    text = "\n".join(rows) + "\n"
    with open(a.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
