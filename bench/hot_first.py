#!/usr/bin/env python3
"""Hot-first against sequential hydration under a skewed read load (issue 14).

One stock bdevperf (libbdev_clone_spdk.so preloaded, one core, --no-huge)
holds two clones of one slow source, the same in every way but their
hydration_order, and reads both at once with the same load, so that a slow
spell of the machine hits both:

- source: a delay bdev (reads and writes ~300 us, standing in for a remote
  volume) over a null bdev, shared by both clones (the source claim is
  read-many);
- destinations: NVMe-like delay bdevs (80 us reads, 20 us writes) over null
  bdevs; metadata: malloc;
- load: bdevperf 4 KiB random reads with a zipf distribution (-F 1.2) on each
  clone, over the second half of the volume (see --range: bdevperf's zipf puts
  its hottest blocks at the start of the job's range, so a range starting at
  block 0 would be hot exactly where the sequential sweep starts);
- hydration rate-limited (--rate MiB/s) so that the sweep takes minutes.

Every --interval seconds it samples bdev_clone_get_clones (percent hydrated,
user_reads_from_source / _destination) and bdev_get_iostat (read latency) of
both clones, writes the samples as CSV and JSON under bench/results/, and
draws them (bench/charts.py) into bench/charts/<name>.png.

    cargo build --release -p bdev_clone_spdk
    python3 bench/hot_first.py [--size-mib 1024] [--rate 4] [--secs 180]
"""

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import LIB, MIB, ROOT, App, app_args, bdevperf, malloc  # noqa: E402

ORDERS = ("sequential", "hot_first")


def delay(base, name, read_us, write_us):
    return {"method": "bdev_delay_create", "params": {
        "base_bdev_name": base, "name": name, "avg_read_latency": read_us, "p99_read_latency": read_us,
        "avg_write_latency": write_us, "p99_write_latency": write_us}}


def null(name, mib, bs=512):
    return {"method": "bdev_null_create", "params": {"name": name, "num_blocks": mib * MIB // bs, "block_size": bs}}


def config(a):
    cfg = [null("src_null", a.size_mib), delay("src_null", "src", a.source_us, a.source_us)]
    for o in ORDERS:
        cfg += [null(f"dst_null_{o}", a.size_mib), delay(f"dst_null_{o}", f"dst_{o}", 80, 20),
                *malloc(f"meta_{o}", 8)]
    return cfg


def jobs_file(path, a):
    """bdevperf's job file: one randread job per clone over the same range."""
    blocks = a.size_mib * MIB // 512
    start = int(blocks * a.range[0])
    length = int(blocks * a.range[1]) - start
    with open(path, "w") as f:
        f.write(f"[global]\nbs=4096\niodepth={a.qd}\nrw=randread\noffset={start}\nlength={length}\n\n")
        for o in ORDERS:
            f.write(f"[job_{o}]\nfilename=clone_{o}\n\n")


def sample(app, t0):
    now = time.monotonic() - t0
    clones = {c["name"]: c for c in app.call("bdev_clone_get_clones")}
    stats = app.call("bdev_get_iostat")
    tick = stats["tick_rate"]
    io = {b["name"]: b for b in stats["bdevs"]}
    out = {"t": now}
    for o in ORDERS:
        c, s = clones[f"clone_{o}"], io[f"clone_{o}"]
        out[o] = {"percent": c["percent"], "src": c["user_reads_from_source"],
                  "dst": c["user_reads_from_destination"], "hot": c["regions_hydrated_hot"],
                  "reads": s["num_read_ops"], "lat_us": s["read_latency_ticks"] * 1e6 / tick}
    return out


def rows_of(samples):
    """Per interval: hydrated %, share of reads from the destination, mean read latency."""
    rows = []
    for prev, cur in zip(samples, samples[1:]):
        r = {"t_sec": round(cur["t"], 1)}
        for o in ORDERS:
            p, c = prev[o], cur[o]
            dsrc, ddst, dreads = c["src"] - p["src"], c["dst"] - p["dst"], c["reads"] - p["reads"]
            r[f"{o}_percent_hydrated"] = c["percent"]
            r[f"{o}_dest_share"] = round(ddst / (dsrc + ddst), 4) if dsrc + ddst else None
            r[f"{o}_read_lat_us"] = round((c["lat_us"] - p["lat_us"]) / dreads, 1) if dreads else None
            r[f"{o}_iops"] = round(dreads / (cur["t"] - prev["t"]))
            r[f"{o}_regions_hot"] = c["hot"]
        rows.append(r)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rate", type=int, default=4, help="max_bandwidth_mb_sec of both clones")
    ap.add_argument("--secs", type=int, default=180)
    ap.add_argument("--interval", type=float, default=5)
    ap.add_argument("--qd", type=int, default=8, help="queue depth of each clone's job")
    ap.add_argument("--source-us", type=int, default=300)
    ap.add_argument("--range", type=float, nargs=2, default=(0.5, 1.0), metavar=("FROM", "TO"),
                    help="the load's range, as fractions of the volume (default: the second half)")
    ap.add_argument("--zipf", type=float, default=1.2, help="bdevperf -F (0: uniform random reads)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "hot_first"))
    ap.add_argument("--rounds", type=int, default=5, help="--cost: interleaved rounds")
    ap.add_argument("--cost", action="store_true",
                    help="instead: the CPU cost of hints, IOPS of reads routed to a fast (null) source")
    a = ap.parse_args()
    if not os.path.exists(LIB):
        sys.exit(f"{LIB} missing: cargo build --release -p bdev_clone_spdk")
    if not shutil.which("bdevperf"):
        sys.exit("bdevperf is not in PATH")
    command = "python3 bench/hot_first.py " + " ".join(sys.argv[1:])
    if a.cost:
        return cost(a, command)
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        jobs = os.path.join(tmp, "jobs.ini")
        jobs_file(jobs, a)
        zipf = ["-F", str(a.zipf)] if a.zipf else []
        app = App(tmp, "hot", [bdevperf(), "-z", "-j", jobs, *zipf, "-t", str(a.secs)], config(a), 1024)
        try:
            for o in ORDERS:
                app.call("bdev_clone_create", {
                    "name": f"clone_{o}", "source_bdev": "src", "destination_bdev": f"dst_{o}",
                    "metadata_bdev": f"meta_{o}", "no_hydration": True, "hydration_order": o,
                    "max_bandwidth_mb_sec": a.rate})
            result = {}

            def perform():
                try:
                    result["r"] = app.call("perform_tests", timeout=a.secs + 120)
                except Exception as e:  # noqa: BLE001 - reported below
                    result["e"] = e

            th = threading.Thread(target=perform)
            th.start()
            time.sleep(0.5)  # the jobs have started
            for o in ORDERS:
                app.call("bdev_clone_set_hydration", {"name": f"clone_{o}", "enabled": True})
            t0 = time.monotonic()
            samples.append(sample(app, t0))
            while th.is_alive() and time.monotonic() - t0 < a.secs - a.interval:
                time.sleep(a.interval)
                samples.append(sample(app, t0))
            th.join()
            if "e" in result:
                raise RuntimeError(f"perform_tests: {result['e']}\n{open(app.log).read()[-3000:]}")
            log = open(app.log).read()
        finally:
            app.stop()
    rows = rows_of(samples)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    meta = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M"), "cores": os.cpu_count(),
            "app": app_args(), "size_mib": a.size_mib, "rate_mb_sec": a.rate, "secs": a.secs, "qd": a.qd,
            "source_read_us": a.source_us, "range": a.range, "zipf_theta": a.zipf,
            "bdevperf": result["r"], "samples": samples, "intervals": rows}
    with open(a.out + ".json", "w") as f:
        json.dump(meta, f, indent=1)
    # The table: one line per interval.
    head = ["t (s)"] + [f"{o}: {k}" for o in ORDERS for k in ("hydrated", "reads from dest", "read lat µs")]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [f"{r['t_sec']:.0f}"]
        for o in ORDERS:
            share = r[f"{o}_dest_share"]
            lat = r[f"{o}_read_lat_us"]
            cells += [f"{r[f'{o}_percent_hydrated']:.1f}%", "-" if share is None else f"{share * 100:.1f}%",
                      "-" if lat is None else f"{lat:.0f}"]
        print("| " + " | ".join(cells) + " |")
    # The target: after 10% hydrated, the share of reads from the destination.
    for o in ORDERS:
        after = [r for r in rows if r[f"{o}_percent_hydrated"] >= 10 and r[f"{o}_dest_share"] is not None]
        if after:
            r = after[0]
            print(f"{o}: first interval ending at >= 10% hydrated (t={r['t_sec']} s, "
                  f"{r[f'{o}_percent_hydrated']:.1f}%): {r[f'{o}_dest_share'] * 100:.1f}% of reads from the destination")
    print(f"bdevperf ranges: {[line for line in log.splitlines() if 'range' in line.lower()][:4]}")
    print(f"samples: {a.out}.csv, {a.out}.json")
    import charts
    try:
        charts.hot_first_chart(a.out + ".csv", charts.hot_first_png(a.out), meta)
    except charts.MissingMatplotlib as e:
        print(f"chart not drawn: {e}", file=sys.stderr)


def cost(a, command):
    """What the hints cost on the CPU: 4 KiB random reads at QD32 on one core
    of a clone whose source is a null bdev (no device time, so the stack's
    own cost is all there is), nearly all of them routed to the source
    (hydration at 1 MiB/s). With hot_first each of them leaves a hint; with
    sequential none does. Interleaved rounds, one clone per bdevperf."""
    iops = {o: [] for o in ORDERS}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(a.rounds):
            for o in ORDERS:
                cfg = [null("src", a.size_mib), null("dst", a.size_mib), *malloc("meta", 8),
                       {"method": "bdev_clone_create", "params": {
                           "name": "c0", "source_bdev": "src", "destination_bdev": "dst", "metadata_bdev": "meta",
                           "hydration_order": o, "max_bandwidth_mb_sec": 1}}]
                app = App(tmp, "cost", [bdevperf(), "-z", "-T", "c0", "-q", "32", "-o", "4096", "-w", "randread",
                                        "-t", str(a.secs)], cfg, 1024)
                try:
                    r = app.call("perform_tests", timeout=a.secs + 120)["results"][0]
                    c = app.call("bdev_clone_get_clones", {"name": "c0"})[0]
                    iops[o].append(r["iops"])
                    print(f"  round {rnd + 1} {o}: {r['iops']:,.0f} IOPS, {c['percent']}% hydrated, "
                          f"{c['user_reads_from_source']:,} reads from source, "
                          f"{c['user_reads_from_destination']:,} from destination, "
                          f"{c['regions_hydrated_hot']} regions hot", file=sys.stderr)
                finally:
                    app.stop()
    import statistics
    ratio = statistics.median(h / s for h, s in zip(iops["hot_first"], iops["sequential"]))
    print(f"| order | read IOPS (median of {a.rounds}) |")
    print("|---|---|")
    for o in ORDERS:
        print(f"| {o} | {statistics.median(iops[o]):,.0f} |")
    print(f"hot_first / sequential, median of the rounds' ratios: {ratio * 100:.1f}%")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + "_cost.json", "w") as f:
        json.dump({"command": command, "date": time.strftime("%Y-%m-%d %H:%M"), "iops": iops,
                   "ratio": ratio}, f, indent=1)


if __name__ == "__main__":
    main()
