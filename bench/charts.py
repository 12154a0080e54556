#!/usr/bin/env python3
"""PNG charts of the benchmarks, drawn from their result files (never by hand).

    python3 -m pip install -r bench/requirements.txt    # matplotlib
    python3 bench/charts.py                             # every chart: bench/results/* -> bench/charts/*.png
    python3 bench/charts.py --live-migration CSV PNG    # one timeline (examples/live-migration.sh)

- bench/results/hot_first*.csv (bench/hot_first.py) -> hot_first*.png: the share of
  user reads served by the destination and the percent hydrated over time,
  hot_first against sequential, and the mean read latency;
- bench/results/live_migration.csv (examples/live-migration.sh) -> live_migration.png:
  the initiator's IOPS and the percent hydrated over time, the faults marked;
- bench/results/io_<kind>_<cores>.json (bench/run.py's I/O section) -> io_<kind>_<cores>.png:
  each configuration's IOPS as a ratio to the passthru vbdev, per cell, with the target.

bench/hot_first.py and bench/run.py call this at their end; a missing input is
skipped with a message.
"""

import argparse
import csv
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
CHARTS = os.path.join(ROOT, "bench", "charts")
ORDERS = ("sequential", "hot_first")
COLORS = {"sequential": "tab:blue", "hot_first": "tab:orange"}
# Issue 15's targets for the hydrated clone against passthru: >= 0.95 on null bdevs, >= 0.97 on malloc.
IO_TARGET = {"null": 0.95, "malloc": 0.97}


class MissingMatplotlib(RuntimeError):
    pass


def pyplot():
    """matplotlib.pyplot with a file-only backend, imported only when a chart is drawn."""
    try:
        import matplotlib
    except ImportError:
        raise MissingMatplotlib("matplotlib is missing: python3 -m pip install -r bench/requirements.txt") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _num(x):
    return None if x in (None, "", "-") else float(x)


def _save(fig, png):
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    fig.savefig(png, dpi=110)
    pyplot().close(fig)
    rel = os.path.relpath(png)
    print(f"chart: {png if rel.startswith('..') else rel}", file=sys.stderr)


# ------------------------------------------------------------------ hot-first against sequential

def hot_first_chart(csv_path, png, meta=None):
    """Two panels over time since hydration started: (1) the share of user reads
    served by the destination in each interval (solid) and the percent hydrated
    (dashed), for both orders, with issue 14's target; (2) the mean read latency."""
    plt = pyplot()
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if meta is None:
        jpath = os.path.splitext(csv_path)[0] + ".json"
        meta = json.load(open(jpath)) if os.path.exists(jpath) else {}
    t = [float(r["t_sec"]) for r in rows]
    fig, (top, bot) = plt.subplots(2, 1, figsize=(9, 7.4), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    # sequential drawn wider, under hot_first: where the two agree both stay visible
    width = {"sequential": 2, "hot_first": 1}
    for o in ORDERS:
        share = [_num(r[f"{o}_dest_share"]) for r in rows]
        w = width[o]
        top.plot(t, [None if s is None else s * 100 for s in share], color=COLORS[o], lw=1.6 * w + 0.6,
                 marker="o", ms=2 * w + 1.5, label=f"{o}: reads served by the destination")
        top.plot(t, [float(r[f"{o}_percent_hydrated"]) for r in rows], color=COLORS[o], lw=1.2 * w, ls="--",
                 label=f"{o}: volume hydrated")
        bot.plot(t, [_num(r[f"{o}_read_lat_us"]) for r in rows], color=COLORS[o], lw=1.6 * w, marker="o",
                 ms=2 * w + 1.5, label=o)
    # The target: once 10% of the volume is hydrated, >= 50% of reads from the destination.
    hot = [(x, float(r["hot_first_percent_hydrated"])) for x, r in zip(t, rows)]
    past = [x for x, p in hot if p >= 10]
    if meta.get("zipf_theta"):
        top.axhline(50, color="grey", lw=0.8, ls=":")
        if past:
            top.axvline(past[0], color="grey", lw=0.8, ls=":")
            top.annotate("target: ≥ 50% of reads from the destination\nonce 10% is hydrated",
                         xy=(past[0], 50), xytext=(6, -42), textcoords="offset points", fontsize=8, color="dimgrey")
    top.set_ylim(-2, 102)
    top.set_ylabel("% (reads in each interval / volume)")
    top.grid(alpha=0.3)
    fig.legend(*top.get_legend_handles_labels(), fontsize=8, ncol=2, loc="lower center")
    bot.set_ylabel("mean read latency (µs)")
    bot.set_xlabel("time since hydration started (s)")
    bot.set_ylim(bottom=0)
    bot.set_xlim(left=0)
    bot.grid(alpha=0.3)
    bot.legend(fontsize=8)
    title = "Hot-first vs sequential hydration"
    if meta:
        zipf = meta.get("zipf_theta")
        load = f"zipf {zipf:g}" if zipf else "uniform"
        rng = meta.get("range") or [0, 1]
        where = "whole volume" if list(rng) == [0, 1] else f"{rng[0] * 100:.0f}–{rng[1] * 100:.0f}% of the volume"
        title += (f": 4 KiB random reads ({load}, {where}, QD{meta.get('qd')} per clone)\n"
                  f"{meta.get('size_mib')} MiB clones, source reads {meta.get('source_read_us')} µs, "
                  f"hydration limited to {meta.get('rate_mb_sec')} MiB/s; bench/hot_first.py, {meta.get('date', '')}")
    top.set_title(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    _save(fig, png)


# ------------------------------------------------------------------ the live-migration timeline

# Event lines of examples/live-migration.sh, shortened for the chart.
EVENT_LABELS = {
    "A killed (SIGKILL)": "A killed",
    "A restarted": "A restarted",
    "B stopped (SIGTERM)": "B stopped",
    "B restarted (-c)": "B restarted",
    "source released": "source released",
}


def live_migration_chart(csv_path, png):
    """The initiator's (C's) IOPS in each verify phase, the percent hydrated,
    and the events: A killed and restarted, B stopped and restarted, the source
    released. Shaded: while A (the source) or B (the clone) is down."""
    plt = pyplot()
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    fig, ax = plt.subplots(figsize=(10, 5.2))
    pct = ax.twinx()
    first = True
    for r in rows:
        if r["kind"] == "phase" and _num(r["iops"]) is not None:
            t0, t1 = float(r["t_start_sec"]), float(r["t_sec"])
            ax.fill_between([t0, t1], 0, [float(r["iops"]) / 1000] * 2, step="pre", color="tab:blue", alpha=0.55,
                            lw=0, label="initiator IOPS (bdevperf verify, QD16)" if first else None)
            if int(float(r["errors"] or 0)):
                ax.text((t0 + t1) / 2, float(r["iops"]) / 1000, f"{r['errors']} errors", color="red",
                        ha="center", va="bottom", fontsize=7)
            first = False
    # The read probes while A is down (a separate bdevperf): hydrated regions read, unhydrated fail.
    for r in rows:
        if r["kind"] == "probe":
            failed = int(float(r["errors"] or 0)) > 0
            ax.plot([float(r["t_sec"])], [0.6], marker="X" if failed else "o", ms=8, ls="none",
                    color="red" if failed else "green", clip_on=False,
                    label=("read probe, unhydrated regions: every read an I/O error" if failed
                           else "read probe, hydrated regions: the source's bytes"))
    pts = [(float(r["t_sec"]), float(r["percent_hydrated"])) for r in rows if _num(r["percent_hydrated"]) is not None]
    pct.plot([p[0] for p in pts], [p[1] for p in pts], color="tab:green", lw=2, marker="o", ms=3,
             label="volume hydrated (%)")
    pct.set_ylim(0, 105)
    pct.set_ylabel("hydrated (%)", color="tab:green")
    ymax = max([float(r["iops"]) / 1000 for r in rows if r["kind"] == "phase" and _num(r["iops"])] or [1])
    ax.set_ylim(0, ymax * 1.35)
    ax.set_ylabel("initiator IOPS (thousands)", color="tab:blue")
    ax.set_xlabel("time (s)")
    ax.set_xlim(left=0)
    events = {EVENT_LABELS[r["phase"]]: float(r["t_sec"]) for r in rows if r["phase"] in EVENT_LABELS}
    for a, b, what in (("A killed", "A restarted", "source (A) down"), ("B stopped", "B restarted", "clone (B) down")):
        if a in events and b in events:
            ax.axvspan(events[a], events[b], color="red" if what.startswith("source") else "purple", alpha=0.08)
            ax.text((events[a] + events[b]) / 2, ymax * 1.28, what, ha="center", va="top", fontsize=8)
    for label, x in events.items():
        ax.axvline(x, color="black", lw=0.8, ls="--")
        ax.text(x, ymax * 0.02, " " + label, rotation=90, va="bottom", ha="right", fontsize=8)
    check = [r for r in rows if r["kind"] == "check"]
    title = "Live migration over NVMe/TCP with faults (examples/live-migration.sh)"
    phases = [r for r in rows if r["kind"] == "phase"]
    errors = sum(int(float(r["errors"] or 0)) for r in phases)
    title += f"\ninitiator (verify): {errors} errors in {len(phases)} phases"
    if check:
        title += "; byte-for-byte check: " + check[-1]["note"]
    ax.set_title(title, fontsize=10)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = pct.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, png)


# ------------------------------------------------------------------ I/O ratios to passthru

def io_chart(json_path, png):
    """Grouped bars: for each cell (read/write, QD), each configuration's IOPS
    as a ratio to the passthru vbdev's (the median of the rounds' ratios, as in
    the Markdown table), with the target line for the hydrated clone."""
    plt = pyplot()
    d = json.load(open(json_path))
    cfgs = [c for c in d["configurations"] if c["name"] != d["reference"]]
    cells = d["cells"]
    n = len(cfgs)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(8, 2.2 * len(cells)), 5.6))
    palette = ["tab:grey", "tab:orange", "tab:blue", "tab:purple", "tab:green", "tab:brown"]
    for i, c in enumerate(cfgs):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(cells))]
        vals = [r * 100 for r in c["ratio"]]
        bars = ax.bar(xs, vals, width * 0.95, label=c["name"], color=palette[i % len(palette)],
                      edgecolor="black" if "hydrated" in c["name"] and "unhydrated" not in c["name"] else "none")
        ax.bar_label(bars, labels=[f"{v:.0f}" for v in vals], fontsize=7, padding=1)
    ax.axhline(100, color="black", lw=0.8, label="passthru vbdev (100%)")
    target = IO_TARGET.get(d["kind"])
    if target:
        ax.axhline(target * 100, color="red", lw=1, ls="--",
                   label=f"target for the hydrated clone: ≥ {target * 100:.0f}%")
    per = " per core" if d["cores"] > 1 else ""
    ax.set_xticks(range(len(cells)), [f"4 KiB random {c.replace(' ', chr(10))}{per}" for c in cells])
    ax.set_ylabel("IOPS, % of the passthru vbdev's")
    top = max(r * 100 for c in cfgs for r in c["ratio"])
    ax.set_ylim(0, max(120, top * 1.12))
    ax.grid(axis="y", alpha=0.3)
    where = "one core" if d["cores"] == 1 else f"{d['cores']} reactors, one bdevperf job per core"
    mem = f", {d['memory']}" if d.get("memory") else ""
    ax.set_title(f"I/O path on {d['kind']} bdevs, {where}{mem}: IOPS relative to passthru\n"
                 f"median of {d['rounds']} interleaved rounds, {d['secs']} s per cell; bench/run.py, {d['date']}",
                 fontsize=10)
    fig.legend(*ax.get_legend_handles_labels(), fontsize=8, ncol=3, loc="lower center")
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    _save(fig, png)


# ------------------------------------------------------------------ all of them

def hot_first_png(out_base):
    """Where bench/hot_first.py's chart goes for results written to out_base
    (.csv/.json): bench/charts/<name>.png for bench/results/, else out_base.png."""
    if os.path.abspath(os.path.dirname(out_base)) == RESULTS:
        return os.path.join(CHARTS, os.path.basename(out_base) + ".png")
    return out_base + ".png"


def draw_all(results=RESULTS, charts=CHARTS):
    """Every chart whose input exists; says which inputs are missing."""
    pyplot()  # fail early, once, without matplotlib
    drawn = 0
    found = sorted(glob.glob(os.path.join(results, "hot_first*.csv")))
    if not found:
        print(f"skipped: hot-first charts: no {results}/hot_first*.csv (python3 bench/hot_first.py)", file=sys.stderr)
    for p in found:
        hot_first_chart(p, os.path.join(charts, os.path.basename(p)[:-4] + ".png"))
        drawn += 1
    lm = os.path.join(results, "live_migration.csv")
    if os.path.exists(lm):
        live_migration_chart(lm, os.path.join(charts, "live_migration.png"))
        drawn += 1
    else:
        print(f"skipped: live-migration timeline: no {lm} (examples/live-migration.sh)", file=sys.stderr)
    found = sorted(glob.glob(os.path.join(results, "io_*.json")))
    if not found:
        print(f"skipped: I/O ratio charts: no {results}/io_*.json (python3 bench/run.py --only io)", file=sys.stderr)
    for p in found:
        io_chart(p, os.path.join(charts, os.path.basename(p)[:-5] + ".png"))
        drawn += 1
    return drawn


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=RESULTS, help="where the result files are (default bench/results)")
    ap.add_argument("--out", default=CHARTS, help="where the PNGs go (default bench/charts)")
    ap.add_argument("--live-migration", nargs=2, metavar=("CSV", "PNG"),
                    help="draw only this live-migration timeline")
    a = ap.parse_args()
    try:
        if a.live_migration:
            live_migration_chart(*a.live_migration)
        else:
            draw_all(a.results, a.out)
    except MissingMatplotlib as e:
        sys.exit(str(e))


if __name__ == "__main__":
    main()
