"""Read what nodes and the dispatcher recorded, as logs or as the dispatcher's series, and cut it
into time windows: crawl rate, per-operation latency, CPU, dispatcher load, politeness keys.

One module of about 400 lines: the readers of the three inputs and the windowing they share,
which ``crawlproj logs`` and ``crawlproj diagnose`` both use.

Inputs understood (any mix, any number of files):

- Scrapy logs in the default format: LogStats lines (``Crawled N pages (at X pages/min) ...``)
  and the final ``Dumping Scrapy stats`` block;
- the TIMING / TIMINGS records of :mod:`crawlproj.observability.timings`, in a Scrapy or
  dispatcher log or as JSON lines (``TIMINGS_LOG_FILE``);
- the points of the dispatcher's ``/api/series``.

Everything becomes :class:`Observations` (per source: cumulative page counts and timing windows),
and :func:`windows` cuts them into :class:`Window` bins of the whole cluster.
"""

from __future__ import annotations

import ast
import json
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crawlproj.politeness.timing import QUANTILES, percentiles

from .account import mean_account
from .timings import SAMPLE_TAG, WINDOW_TAG

DISPATCHER = "dispatcher"
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:[,.](\d+))? \[([^\]]+)\] (\w+): (.*)$")
_LOGSTATS = re.compile(r"Crawled (\d+) pages \(at (\d+) pages/min\)(?:, scraped (\d+) items)?")
_CLOSING = "Closing spider ("  # scrapy.core.engine: the node takes no new work from here on
_OPENED = "Spider opened"  # scrapy.core.engine: a (re)started node crawls again
_STATS_ITEM = re.compile(r"^\s*[{ ]?'([^']+)': (.+?),?\}?$")
_WINDOW_TARGET = 10  # windows wanted when the window length is left to us
_SAMPLES_PER_WINDOW = 3  # page counts of a node a window spans at least
_NICE_SECONDS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600)


@dataclass
class Source:
    """One node (or the dispatcher): what its log or reports said."""

    name: str
    pages: list[tuple[float, float]] = field(default_factory=list)  # (epoch, cumulative pages)
    # LogStats' counts: their times are whole seconds (Scrapy's log format), up to a second
    # early; mixed with the TIMINGS records' counts they would go back and forth, so one of the
    # two is kept: the exact ones unless LogStats has more than twice as many
    logstats: list[tuple[float, float]] = field(default_factory=list)
    windows: list[dict[str, Any]] = field(default_factory=list)  # TIMINGS records
    samples: list[tuple[float, str, float]] = field(default_factory=list)  # (epoch, op, ms)
    final_stats: dict[str, Any] = field(default_factory=dict)
    # (closing, reopened) epochs: the node was shutting down, its last pages are in-flight
    # requests ending, not its crawl rate; reopened is inf unless the node started again
    closing: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Observations:
    sources: dict[str, Source] = field(default_factory=dict)

    def source(self, name: str) -> Source:
        src = self.sources.get(name)
        if src is None:
            src = self.sources[name] = Source(name)
        return src

    def nodes(self) -> list[Source]:
        return [s for name, s in sorted(self.sources.items()) if name != DISPATCHER]

    def span(self) -> tuple[float, float] | None:
        """From the first growth of any node's page count (its count just before: the nodes
        starting up, or waiting for their first leases, are no slow crawl) to the last: once
        every count has stopped growing the crawl has ended (or stalled, which the page counts
        of a live crawl show as zero rates), and the quiet tail is not a slowdown. Page counts
        a node logged while shutting down are already left out (see Source.closing)."""
        times = [t for s in self.sources.values() for t, _ in s.pages]
        times += [w["t"] for s in self.sources.values() for w in s.windows]
        if not times:
            return None
        start, end = min(times), max(times)
        growth = [(a[0], b[0]) for s in self.nodes() for a, b in zip(s.pages, s.pages[1:]) if b[1] > a[1]]
        if growth:
            start = max(start, min(before for before, _ in growth))
            end = min(end, max(grown for _, grown in growth))
        return start, end

    def finish(self) -> None:
        """Sort, and drop records seen twice (a log and its JSON-lines twin)."""
        for src in self.sources.values():
            exact = len(src.pages) >= 2 and 2 * len(src.pages) >= len(src.logstats)
            src.pages = sorted(set(src.pages if exact else src.logstats or src.pages))
            src.logstats = []
            seen: set[float] = set()
            windows = []
            for w in sorted(src.windows, key=lambda w: w["t"]):
                if w["t"] not in seen:
                    seen.add(w["t"])
                    windows.append(w)
            src.windows = windows
            src.samples = sorted(set(src.samples))
            if src.closing:
                src.pages = [(t, n) for t, n in src.pages
                             if not any(closed <= t < reopened for closed, reopened in src.closing)]


@dataclass
class Window:
    """One time bin of the cluster."""

    start: float
    end: float
    rate: float | None = None  # pages/s, all nodes
    node_rates: dict[str, float] = field(default_factory=dict)
    ops: dict[str, dict[str, float]] = field(default_factory=dict)  # op -> n, p50, p90, p99, max
    cpu: float | None = None  # the busiest node's CPU, share of one core
    parse_share: float | None = None  # the largest share of a node's wall time in callbacks
    busy: float | None = None  # dispatcher loop busy share
    stalled: float | None = None  # dispatcher loop stalled share (wall gaps in its loop)
    available: float | None = None  # requests the dispatcher's frontier could lease (last look)
    account: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # node -> its account
    fetches: int = 0
    distinct_keys: int = 0
    top_key: str | None = None
    top_share: float | None = None

    @property
    def middle(self) -> float:
        return (self.start + self.end) / 2


# -- reading -------------------------------------------------------------------------------------


def read_logs(paths: Iterable[str | Path]) -> Observations:
    """Observations from log files and JSON-lines timing files (directories: every file in them)."""
    obs = Observations()
    for path in _expand(paths):
        _read_file(obs, path)
    obs.finish()
    return obs


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (".log", ".jl", ".jsonl"))
        else:
            files.append(p)
    return files


def _epoch(stamp: str, fraction: str | None) -> float:
    t = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))
    return t + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def _read_file(obs: Observations, path: Path) -> None:
    name = path.name.split(".")[0]
    pending_pages: list[tuple[float, float]] = []
    closing: list[tuple[float, float]] = []
    node: str | None = None
    stats_block: list[str] | None = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if line.startswith("{") and stats_block is None:  # a JSON-lines record
                node = _json_record(obs, line) or node
                continue
            m = _LINE.match(line)
            if m is None:
                if stats_block is not None:
                    stats_block.append(line)
                continue
            if stats_block is not None:
                obs.source(node or name).final_stats.update(_stats(stats_block))
                stats_block = None
            t = _epoch(m.group(1), m.group(2))
            message = m.group(5)
            if message.startswith(WINDOW_TAG + " ") or message.startswith(SAMPLE_TAG + " "):
                node = _json_record(obs, message.split(" ", 1)[1], t) or node
            elif (ls := _LOGSTATS.search(message)) is not None:
                pending_pages.append((t, float(ls.group(1))))
            elif message.startswith("Dumping Scrapy stats"):
                stats_block = [message.split(":", 1)[1]] if ":" in message else []
            elif message.startswith(_CLOSING):
                closing.append((t, math.inf))
            elif message.startswith(_OPENED) and closing and closing[-1][1] == math.inf:
                closing[-1] = (closing[-1][0], t)
    if stats_block is not None:
        obs.source(node or name).final_stats.update(_stats(stats_block))
    if pending_pages:
        obs.source(node or name).logstats.extend(pending_pages)
    if closing:
        obs.source(node or name).closing.extend(closing)


def _json_record(obs: Observations, text: str, t: float | None = None) -> str | None:
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or "node" not in record:
        return None
    node = str(record["node"])
    src = obs.source(node)
    record.setdefault("t", t)
    if "op" in record and "ms" in record:
        src.samples.append((float(record["t"]), str(record["op"]), float(record["ms"])))
    elif "ops" in record:
        src.windows.append(record)
        if isinstance(record.get("pages"), (int, float)):
            src.pages.append((float(record["t"]), float(record["pages"])))
    return node if node != DISPATCHER else None


def _stats(lines: list[str]) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    for line in lines:
        m = _STATS_ITEM.match(line)
        if m is None:
            continue
        try:
            stats[m.group(1)] = ast.literal_eval(m.group(2))
        except (ValueError, SyntaxError):
            stats[m.group(1)] = m.group(2)
    return stats


def from_series(points: list[dict[str, Any]]) -> Observations:
    """Observations from the dispatcher's series (``/api/series`` points)."""
    obs = Observations()
    for p in points:
        t = float(p["t"])
        disp = obs.source(DISPATCHER)
        disp.windows.append({"t": t, "interval": p.get("interval", 1.0), "busy": p.get("busy"),
                             "stalled": p.get("stalled"), "available": p.get("available"),
                             "cpu": p.get("cpu"), "ops": p.get("ops") or {}})
        for name, n in (p.get("nodes") or {}).items():
            src = obs.source(name)
            pages = float(n.get("pages") or 0)
            # a count changes once per node report: keep the changes (rates are interpolated
            # between them), not every tick that repeats the last report
            if not src.pages or src.pages[-1][1] != pages:
                src.pages.append((t, pages))
            report = n.get("report")
            if report:
                src.windows.append({"t": t, **report})
    obs.finish()
    return obs


# -- windows ---------------------------------------------------------------------------------------


def auto_window(obs: Observations) -> float:
    span = obs.span()
    if span is None:
        return 60.0
    length = max(span[1] - span[0], 1.0)
    gaps = [b[0] - a[0] for s in obs.sources.values() for a, b in zip(s.pages, s.pages[1:])]
    # a window spans a few page counts of each node, or its rate is mostly sampling noise
    floor = _SAMPLES_PER_WINDOW * sorted(gaps)[len(gaps) // 2] if gaps else 1.0
    want = max(length / _WINDOW_TARGET, floor)
    nice = next((n for n in _NICE_SECONDS if n >= want), want)
    # a crawl short for its log interval still gets two windows (a rate before and after)
    return nice if nice <= length / 2 else length / 2


def _pages_at(points: list[tuple[float, float]], t: float) -> float:
    if not points:
        return 0.0
    if t <= points[0][0]:
        return points[0][1]
    if t >= points[-1][0]:
        return points[-1][1]
    lo, hi = 0, len(points) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if points[mid][0] <= t:
            lo = mid
        else:
            hi = mid
    (t0, p0), (t1, p1) = points[lo], points[hi]
    # a restarted node counts from 0 again: take the new count as what it did since
    if p1 < p0:
        return p0 + p1 * (t - t0) / max(t1 - t0, 1e-9)
    return p0 + (p1 - p0) * (t - t0) / max(t1 - t0, 1e-9)


def windows(obs: Observations, length: float | None = None) -> list[Window]:
    """Cut the observations into windows of ``length`` seconds (default: about ten windows).

    A trailing stretch shorter than half a window is left out."""
    span = obs.span()
    if span is None:
        return []
    length = length or auto_window(obs)
    start, end = span
    count = max(1, int((end - start) / length + 0.5)) if end > start else 1
    bins = [Window(start + i * length, min(end, start + (i + 1) * length)) for i in range(count)]
    bins = [b for b in bins if b.end - b.start >= length / 2]
    for b in bins:
        _fill(obs, b)
    return bins


def _fill(obs: Observations, b: Window) -> None:
    nodes = obs.nodes()
    rates = {}
    for src in nodes:
        if src.pages and src.pages[0][0] < b.end and src.pages[-1][0] > b.start:
            rates[src.name] = (_pages_at(src.pages, b.end) - _pages_at(src.pages, b.start)) / (b.end - b.start)
    b.node_rates = rates
    b.rate = sum(rates.values()) if rates else None
    parts: dict[str, list[dict[str, float]]] = defaultdict(list)
    cpus, shares = [], []
    top: Counter[str] = Counter()
    for src in obs.sources.values():
        inside = [w for w in src.windows if b.start <= w["t"] - (w.get("interval") or 0) / 2 < b.end]
        for w in inside:
            for op, summary in (w.get("ops") or {}).items():
                parts[op].append(summary)
        if src.name == DISPATCHER:
            b.busy = _weighted(inside, "busy")
            b.stalled = _weighted(inside, "stalled")
            available = [w["available"] for w in inside if isinstance(w.get("available"), (int, float))]
            if available:
                b.available = float(available[-1])
            continue
        accounts = [(w.get("interval") or 0, w["account"]) for w in inside if w.get("account")]
        if accounts:
            b.account[src.name] = mean_account(accounts)
        cpu = [w["cpu"] for w in inside if isinstance(w.get("cpu"), (int, float))]
        if cpu:
            cpus.append(sum(cpu) / len(cpu))
        seconds = sum(w.get("interval") or 0 for w in inside)
        parse_ms = sum((w.get("ops") or {}).get("parse", {}).get("sum", 0) for w in inside)
        if seconds > 0:
            shares.append(parse_ms / (seconds * 1000.0))
        distinct = 0
        for w in inside:
            keys = w.get("keys") or {}
            b.fetches += int(keys.get("fetches") or 0)
            distinct = max(distinct, int(keys.get("distinct") or 0))
            if keys.get("top"):
                top[str(keys["top"])] += int(keys.get("top_n") or 0)
        b.distinct_keys += distinct
        if not inside:
            for t, op, ms in src.samples:
                if b.start <= t < b.end:
                    parts.setdefault(f"~{op}", []).append({"n": 1, "p50": ms, "p90": ms, "p99": ms, "max": ms})
    for op, summaries in parts.items():
        b.ops[op.lstrip("~")] = _combine(summaries)
    b.cpu = max(cpus) if cpus else None
    b.parse_share = max(shares) if shares else None
    if top and b.fetches:
        key, n = top.most_common(1)[0]
        b.top_key, b.top_share = key, n / b.fetches


def _weighted(records: list[dict[str, Any]], name: str) -> float | None:
    """The mean of ``name`` over records, weighted by their intervals."""
    pairs = [(max(float(w.get("interval") or 0.0), 1e-9), float(w[name])) for w in records
             if isinstance(w.get(name), (int, float))]
    total = sum(weight for weight, _ in pairs)
    return sum(weight * v for weight, v in pairs) / total if pairs else None


def _combine(summaries: list[dict[str, float]]) -> dict[str, float]:
    """Windows of one operation as one: n-weighted percentiles (an approximation), max, sum."""
    n = sum(s.get("n", 0) for s in summaries)
    if len(summaries) > 1 and all(s.get("n") == 1 for s in summaries):  # single samples
        values = sorted(s["p50"] for s in summaries)
        return {"n": n, "max": values[-1], **percentiles(values)}
    result: dict[str, float] = {"n": n, "max": max(s.get("max", 0) for s in summaries),
                                "sum": sum(s.get("sum", 0) for s in summaries)}
    for q in QUANTILES:
        weighted = [(s[q], s.get("n", 1)) for s in summaries if q in s]
        total = sum(w for _, w in weighted)
        if total:
            result[q] = round(sum(v * w for v, w in weighted) / total, 3)
    return result


# -- trends ----------------------------------------------------------------------------------------


@dataclass
class Trend:
    first: float
    last: float
    slope_per_hour: float  # least squares, units per hour

    @property
    def change(self) -> float:
        """(last - first) / first; 0 when first is 0."""
        return (self.last - self.first) / self.first if self.first else 0.0

    @property
    def ratio(self) -> float:
        return self.last / self.first if self.first else math.inf


def trend(points: list[tuple[float, float]]) -> Trend | None:
    """First and last value and the least-squares slope of (epoch, value) points."""
    if not points:
        return None
    first, last = points[0][1], points[-1][1]
    if len(points) < 2:
        return Trend(first, last, 0.0)
    mt = sum(t for t, _ in points) / len(points)
    mv = sum(v for _, v in points) / len(points)
    var = sum((t - mt) ** 2 for t, _ in points)
    slope = sum((t - mt) * (v - mv) for t, v in points) / var if var else 0.0
    return Trend(first, last, slope * 3600.0)


def rate_trend(bins: list[Window]) -> Trend | None:
    return trend([(b.middle, b.rate) for b in bins if b.rate is not None])


def op_trends(bins: list[Window], quantile: str = "p99") -> dict[str, Trend]:
    ops = sorted({op for b in bins for op in b.ops})
    result = {}
    for op in ops:
        t = trend([(b.middle, b.ops[op][quantile]) for b in bins if quantile in b.ops.get(op, {})])
        if t is not None:
            result[op] = t
    return result
