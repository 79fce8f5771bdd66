"""``crawlproj logs``: crawl rate per window and its trend, per-operation latency trends, a chart.

    crawlproj logs cluster-dir/ --chart rate.png            # every *.log / *.jl in it
    crawlproj logs n1.log n2.log --window 1800 --chart rate.svg

Reads Scrapy's LogStats lines and stats dump and crawlproj's TIMING/TIMINGS records
(:mod:`crawlproj.observability.analysis`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .analysis import Observations, Window, op_trends, rate_trend, read_logs, windows


def summary(obs: Observations, bins: list[Window]) -> dict[str, Any]:
    rate = rate_trend(bins)
    ops = op_trends(bins, "p99")
    ops50 = op_trends(bins, "p50")
    span = obs.span()
    return {
        "nodes": [s.name for s in obs.nodes()],
        "start": span[0] if span else None, "end": span[1] if span else None,
        "window_seconds": (bins[0].end - bins[0].start) if bins else None,
        "windows": [{"start": b.start, "end": b.end, "rate": b.rate, "node_rates": b.node_rates,
                     "ops": b.ops} for b in bins],
        "rate": None if rate is None else {"first": rate.first, "last": rate.last,
                                           "change": rate.change, "slope_per_hour": rate.slope_per_hour},
        "ops": {op: {"p99_first": t.first, "p99_last": t.last, "p99_ratio": t.ratio,
                     "p99_slope_per_hour": t.slope_per_hour,
                     "p50_first": ops50[op].first if op in ops50 else None,
                     "p50_last": ops50[op].last if op in ops50 else None}
                for op, t in ops.items()},
        "final_stats": {s.name: {k: v for k, v in s.final_stats.items()
                                 if k in ("response_received_count", "item_scraped_count",
                                          "finish_reason", "elapsed_time_seconds")}
                        for s in obs.nodes() if s.final_stats},
    }


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _span(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds:.0f} s"


def text(s: dict[str, Any]) -> str:
    if not s["windows"]:
        return "no crawl rate found (no LogStats lines or TIMINGS records)"
    lines = [f"{len(s['nodes'])} nodes ({', '.join(s['nodes'])}), {_when(s['start'])} to {_when(s['end'])} "
             f"({_span(s['end'] - s['start'])}), {len(s['windows'])} windows of {_span(s['window_seconds'])}"]
    r = s["rate"]
    if r is not None:
        lines.append(f"crawl rate: first window {r['first']:.2f} pages/s, last {r['last']:.2f} pages/s: "
                     f"{100 * r['change']:+.1f}% (slope {r['slope_per_hour']:+.2f} pages/s per hour)")
    lines.append("")
    lines.append("window start          pages/s  per node")
    for w in s["windows"]:
        nodes = "  ".join(f"{n} {v:.1f}" for n, v in sorted(w["node_rates"].items()))
        rate = "-" if w["rate"] is None else f"{w['rate']:.2f}"
        lines.append(f"{_when(w['start'])}  {rate:>8}  {nodes}")
    if s["ops"]:
        lines.append("")
        lines.append("operation            p50 first -> last ms    p99 first -> last ms   p99 change")
        for op, t in s["ops"].items():
            p50 = ("-" if t["p50_first"] is None else f"{t['p50_first']:9.2f} -> {t['p50_last']:9.2f}")
            lines.append(f"{op:20s} {p50:>23}  {t['p99_first']:9.2f} -> {t['p99_last']:9.2f}  "
                         f"x{t['p99_ratio']:.1f}")
    for node, stats in s["final_stats"].items():
        lines.append(f"final stats of {node}: {stats}")
    return "\n".join(lines)


def chart(obs: Observations, bins: list[Window], path: str | Path) -> Path:
    """Rate per window (cluster and nodes) and p99 per operation, as PNG or SVG (by suffix)."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("crawlproj logs --chart: needs matplotlib: pip install 'crawlproj[tools]'") from None

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from datetime import datetime

    path = Path(path)
    times = [datetime.fromtimestamp(b.middle) for b in bins]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    ax1.plot(times, [b.rate for b in bins], label="cluster", linewidth=2.2)
    for name in sorted({n for b in bins for n in b.node_rates}):
        ax1.plot(times, [b.node_rates.get(name) for b in bins], label=name, linewidth=1, alpha=0.8)
    t = rate_trend(bins)
    if t is not None and len(bins) > 1:
        first, last = bins[0].middle, bins[-1].middle
        mean_rate = sum(b.rate or 0 for b in bins) / len(bins)
        mid = (first + last) / 2
        ax1.plot([times[0], times[-1]], [mean_rate + t.slope_per_hour / 3600 * (first - mid),
                                         mean_rate + t.slope_per_hour / 3600 * (last - mid)],
                 "--", color="grey", label=f"trend {100 * t.change:+.0f}%")
    ax1.set_ylabel("pages/s")
    ax1.set_title("crawl rate per window")
    ax1.legend(loc="best", fontsize=8)
    ax1.grid(alpha=0.3)
    colors = plt.get_cmap("tab20").colors
    for i, op in enumerate(sorted({op for b in bins for op in b.ops})):
        values = [b.ops.get(op, {}).get("p99") for b in bins]
        if any(v is not None for v in values):
            ax2.plot(times, values, label=op, marker=".", linewidth=1, color=colors[i % len(colors)])
    ax2.set_yscale("log")
    ax2.set_ylabel("p99 ms (log)")
    ax2.set_title("latency per operation")
    ax2.legend(loc="best", fontsize=8, ncol=2)
    ax2.grid(alpha=0.3)
    short = bins[-1].end - bins[0].start < 600
    ax2.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S" if short else "%H:%M"))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=path.suffix.lstrip(".").lower() or "png")
    plt.close(fig)
    return path


def command(args: argparse.Namespace) -> int:
    """Crawl rate per window and its trend, per-operation latency trends, and a chart."""
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"crawlproj logs: no such file or directory: {missing[0]}", file=sys.stderr)
        return 2
    obs = read_logs(args.paths)
    bins = windows(obs, args.window)
    s = summary(obs, bins)
    if args.chart and bins:
        s["chart"] = str(chart(obs, bins, args.chart))
    if args.json:
        print(json.dumps(s, indent=2, default=str))
    else:
        print(text(s))
        if s.get("chart"):
            print(f"chart: {s['chart']}")
    return 0 if bins else 1


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("logs", help=command.__doc__, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="node logs, dispatcher log, TIMINGS_LOG_FILE files, or directories")
    p.add_argument("--window", type=float, default=None, help="window length in seconds (default: about 10 windows)")
    p.add_argument("--chart", default=None, help="write a chart here (.png or .svg)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=command)


if __name__ == "__main__":
    sys.exit(command(argparse.Namespace(paths=sys.argv[1:], window=None, chart=None, json=False)))
