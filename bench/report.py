"""Turns bench/compare.sh's raw output into the results table and pictures.

    python3 bench/report.py OUT_DIR SVG_DIR

Reads OUT_DIR/results.csv, idle.csv, latency.txt, machine.txt and
timeline/ (fw.log, threads.tsv, events.tsv); writes OUT_DIR/results.md and
SVG_DIR/throughput.svg, SVG_DIR/timeline.svg. Parts whose input is missing
are left out.
"""

import csv
import os
import re
import sys
from collections import defaultdict
from datetime import datetime

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SERVERS = ["discard", "fw-null", "fw-file", "rsyslog", "syslog-ng"]
LABEL = {
    "discard": "discard listener (ceiling)",
    "fw-null": "floodwall null sink",
    "fw-file": "floodwall file sink",
    "rsyslog": "rsyslog imtcp->omfile",
    "syslog-ng": "syslog-ng network->file",
}
COLOR = {
    "discard": "#999999",
    "fw-null": "#9ecae1",
    "fw-file": "#2171b5",
    "rsyslog": "#e6550d",
    "syslog-ng": "#31a354",
}


def read_kv(path):
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if "=" in line:
                    k, v = line.rstrip("\n").split("=", 1)
                    out[k.strip()] = v.strip()
    return out


def read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def fnum(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def human(v):
    v = fnum(v)
    if v != v:
        return "-"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.0f}k"
    return f"{v:.0f}"


def table(rows):
    head = (
        "| server | client | conns | size (B) | written msg/s | MB/s | server CPU-s / M msgs "
        "| server CPU-s | client CPU-s | lost | peak RSS (MiB) | threads |"
    )
    out = [head, "|" + "---|" * 12]
    for r in rows:
        size = r["size"] if r["size"] == r["msg_bytes"] else f"{r['size']} ({r['msg_bytes']})"
        out.append(
            f"| {r['server']} | {r['client']} | {r['conns']} | {size} | {human(r['msgs_per_s'])} "
            f"| {fnum(r['mb_per_s']):.1f} | {fnum(r['cpu_s_per_m']):.2f} | {fnum(r['server_cpu_s']):.2f} "
            f"| {fnum(r['client_cpu_s']):.2f} | {r['lost']} | {fnum(r['peak_rss_kib']) / 1024:.1f} "
            f"| {r['threads_peak']} |"
        )
    return "\n".join(out)


def find(rows, server, client, conns, size):
    for r in rows:
        if (r["server"], r["client"], r["conns"], r["size"]) == (server, client, str(conns), str(size)):
            return r
    return None


def ratio(a, b):
    a, b = fnum(a), fnum(b)
    return a / b if b and b == b and a == a else float("nan")


def goals(rows, idle, lat):
    """The issue's goals, each as a ratio from this run."""
    out = ["| goal | load | measured | target | met |", "|---|---|---|---|---|"]

    def line(goal, load, value, target, ok):
        out.append(f"| {goal} | {load} | {value} | {target} | {'yes' if ok else '**no**'} |")

    for conns in (10, 100):
        for client in ("fwl", "loggen"):
            fw = find(rows, "fw-file", client, conns, 100)
            for peer in ("rsyslog", "syslog-ng"):
                p = find(rows, peer, client, conns, 100)
                if not fw or not p:
                    continue
                load = f"{conns} conns, 100 B, {client}"
                cpu = ratio(fw["cpu_s_per_m"], p["cpu_s_per_m"])
                line(f"file sink CPU-s/M vs {peer}", load, f"{cpu:.2f}x", "<= 0.5x", cpu <= 0.5)
                speed = ratio(fw["msgs_per_s"], p["msgs_per_s"])
                want = 1.5 if client == "fwl" else 1.0
                line(f"file sink msg/s vs {peer}", load, f"{speed:.2f}x", f">= {want}x", speed >= want)
    for conns in (1, 10, 100):
        for size in (100, 1024):
            for client in ("fwl", "loggen"):
                n = find(rows, "fw-null", client, conns, size)
                d = find(rows, "discard", client, conns, size)
                if n and d:
                    r = ratio(n["mb_per_s"], d["mb_per_s"])
                    line("null sink MB/s vs discard", f"{conns} conns, {size} B, {client}", f"{r:.2f}x", ">= 0.6x", r >= 0.6)
    for r in idle:
        if r["server"].startswith("fw-null"):
            k = fnum(r["kib_per_conn"])
            line("RSS per idle connection", r["server"], f"{k:.1f} KiB", "<= 12 KiB", k <= 12)
    if "half_p99_us" in lat:
        p99 = fnum(lat["half_p99_us"]) / 1000
        line("p99 latency at 50% of max", f"{human(lat.get('half_rate'))} msg/s", f"{p99:.2f} ms", "< 5 ms", p99 < 5)
    return "\n".join(out)


def idle_table(idle):
    out = [
        "| server | connections held | RSS before (MiB) | RSS with conns (MiB) | KiB per conn | threads before | threads with conns |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in idle:
        out.append(
            f"| {r['server']} | {r['connected']} | {fnum(r['rss_before_kib']) / 1024:.1f} "
            f"| {fnum(r['rss_after_kib']) / 1024:.1f} | {fnum(r['kib_per_conn']):.1f} "
            f"| {r['threads_before']} | {r['threads_after']} |"
        )
    return "\n".join(out)


def latency_text(lat):
    if not lat:
        return ""
    us = lambda k: f"{fnum(lat.get(k)) / 1000:.2f} ms"  # noqa: E731
    return (
        f"floodwall -> tcp sink -> `floodwall-load --latency-listen`, 10 connections of 100 B.\n\n"
        f"| load | msg/s received | p50 | p90 | p99 | p99.9 | max | gaps (lost) | duplicates/reordered |\n"
        f"|---|---|---|---|---|---|---|---|---|\n"
        f"| max (full speed) | {human(lat.get('max_msgs_per_s'))} | {us('max_p50_us')} | {us('max_p90_us')} "
        f"| {us('max_p99_us')} | {us('max_p999_us')} | {us('max_max_us')} | {lat.get('max_gaps')} | {lat.get('max_backwards')} |\n"
        f"| 50% of max, paced | {human(lat.get('half_msgs_per_s'))} | {us('half_p50_us')} | {us('half_p90_us')} "
        f"| {us('half_p99_us')} | {us('half_p999_us')} | {us('half_max_us')} | {lat.get('half_gaps')} | {lat.get('half_backwards')} |\n"
    )


def throughput_svg(rows, path):
    loads = []
    for r in rows:
        key = (int(r["conns"]), int(r["size"]), r["client"])
        if key not in loads:
            loads.append(key)
    loads.sort(key=lambda k: (k[2] != "fwl", k[1], k[0]))
    servers = [s for s in SERVERS if any(r["server"] == s for r in rows)]
    if not loads or not servers:
        return
    fig, axes = plt.subplots(2, 1, figsize=(max(10, 1.1 * len(loads) + 3), 9), sharex=True)
    width = 0.8 / len(servers)
    for i, s in enumerate(servers):
        xs, rate, cpu = [], [], []
        for j, load in enumerate(loads):
            r = find(rows, s, load[2], load[0], load[1])
            if r:
                xs.append(j + (i - (len(servers) - 1) / 2) * width)
                rate.append(fnum(r["msgs_per_s"]) / 1e6)
                cpu.append(fnum(r["cpu_s_per_m"]))
        axes[0].bar(xs, rate, width, label=LABEL[s], color=COLOR[s])
        axes[1].bar(xs, cpu, width, label=LABEL[s], color=COLOR[s])
    # Log scale: the discard ceiling is 10-50x the file servers.
    axes[0].set_yscale("log")
    axes[0].set_ylabel("messages/s written (millions, log scale)")
    axes[0].set_title("Throughput: messages written per second (counted at the receiver)")
    axes[1].set_ylabel("server CPU-seconds per million messages")
    axes[1].set_title("Cost: server CPU per million messages (lower is better)")
    axes[1].set_xticks(range(len(loads)))
    axes[1].set_xticklabels([f"{c} conn\n{z} B\n{cl}" for c, z, cl in loads], fontsize=8)
    axes[0].legend(fontsize=8, ncol=3)
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    fig.text(0.01, 0.005, "2 shared cores (client and server on one machine, other jobs running); "
             "loggen sends 127 B where 100 B is asked", fontsize=7, color="#555")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, format="svg")
    plt.close(fig)


LOG_TS = re.compile(r"^\[(\S+?)Z? +\w+ +[^\]]*\] stats (.*)$")


def timeline_svg(tdir, path):
    log = os.path.join(tdir, "fw.log")
    if not os.path.exists(log):
        return
    samples = []
    with open(log) as f:
        for line in f:
            m = LOG_TS.match(line.strip())
            if not m:
                continue
            ts = datetime.fromisoformat(m.group(1).rstrip("Z") + "+00:00").timestamp()
            kv = dict(p.split("=", 1) for p in m.group(2).split() if "=" in p)
            samples.append((ts, kv))
    if len(samples) < 3:
        return
    t0 = samples[0][0]
    t = [s[0] - t0 for s in samples]
    get = lambda k: [int(s[1].get(k, 0)) for s in samples]  # noqa: E731
    delivered = get("delivered")
    rate = [0] + [
        (delivered[i] - delivered[i - 1]) / max(t[i] - t[i - 1], 1e-3) for i in range(1, len(t))
    ]
    drops = [a + b for a, b in zip(get("dropped_send_timeout"), get("dropped_oversize"))]
    threads_t, threads_v = [], []
    tsv = os.path.join(tdir, "threads.tsv")
    if os.path.exists(tsv):
        with open(tsv) as f:
            for line in f:
                p = line.split()
                if len(p) == 2 and p[1].isdigit():
                    threads_t.append(int(p[0]) / 1000 - t0)
                    threads_v.append(int(p[1]))
    events = read_kv_events(os.path.join(tdir, "events.tsv"))
    fig, axes = plt.subplots(4, 1, figsize=(10, 10), sharex=True)
    axes[0].plot(t, get("workers"), label="connection workers (stats)", color="#2171b5")
    if threads_t:
        axes[0].plot(threads_t, threads_v, label="process threads (/proc)", color="#6baed6", ls="--")
    axes[0].set_ylabel("threads")
    axes[1].plot(t, get("queue_depth"), color="#e6550d")
    axes[1].axhline(int(samples[0][1].get("queue_capacity", 0)), color="#e6550d", ls=":", label="capacity")
    axes[1].set_ylabel("queue depth (msgs)")
    axes[2].plot(t, drops, color="#a50f15", label="dropped (send timeout)")
    axes[2].plot(t, get("closed_send_timeout"), color="#fb6a4a", ls="--", label="connections closed (send timeout)")
    axes[2].set_ylabel("cumulative")
    axes[3].plot(t, [r / 1e3 for r in rate], color="#31a354")
    axes[3].set_ylabel("delivered (k msgs/s)")
    axes[3].set_xlabel("seconds since the first stats line")
    for ax in axes:
        ax.grid(alpha=0.3)
        if "stall_start" in events and "stall_end" in events:
            ax.axvspan(events["stall_start"] - t0, events["stall_end"] - t0, color="#fdd0a2", alpha=0.4)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper right")
    axes[0].set_title(
        "floodwall, 50 clients at 100k msg/s total; the tcp-sink downstream is SIGSTOPped (shaded), then resumed"
    )
    fig.text(0.01, 0.005, "sampled from stats lines every 200 ms; 2 shared cores", fontsize=7, color="#555")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, format="svg")
    plt.close(fig)


def read_kv_events(path):
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                p = line.split()
                if len(p) == 2:
                    out[p[0]] = int(p[1]) / 1000
    return out


def main():
    out_dir, svg_dir = sys.argv[1], sys.argv[2]
    rows = read_csv(os.path.join(out_dir, "results.csv"))
    idle = read_csv(os.path.join(out_dir, "idle.csv"))
    lat = read_kv(os.path.join(out_dir, "latency.txt"))
    machine = read_kv(os.path.join(out_dir, "machine.txt"))
    order = {s: i for i, s in enumerate(SERVERS)}
    rows.sort(key=lambda r: (int(r["size"]), int(r["conns"]), r["client"], order.get(r["server"], 99)))
    md = ["# floodwall benchmark results", ""]
    md.append(
        f"Machine: {machine.get('cpu', '?')}, kernel {machine.get('kernel', '?')}, {machine.get('date', '?')}, "
        f"load average at the end {machine.get('loadavg', '?')} (a shared machine: other jobs ran too)."
    )
    md.append(f"Command: `{machine.get('command', 'bash bench/compare.sh')}`")
    md.append("")
    if rows:
        md += ["## Throughput and cost", "", table(rows), ""]
        md += ["## Goals (issue 4)", "", goals(rows, idle, lat), ""]
        throughput_svg(rows, os.path.join(svg_dir, "throughput.svg"))
    if idle:
        md += ["## Idle connections", "", idle_table(idle), ""]
    if lat:
        md += ["## Latency (client write to tcp-sink delivery)", "", latency_text(lat)]
    timeline_svg(os.path.join(out_dir, "timeline"), os.path.join(svg_dir, "timeline.svg"))
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
