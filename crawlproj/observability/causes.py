"""Causes from the time account: which resource's share of the time grew when the crawl
rate fell (from the nodes' account, crawlproj.observability.account), and whether the item
store falls behind.

Each resource has one figure, a share of some wall clock, read early and late in the crawl
(window means weighted by the windows' length, each node's figure averaged over the nodes):

=============  ==================================================================
remote sites   the download slots' share busy transferring (and download latency)
machine CPU    the reactor thread's share runnable but waiting for a CPU (its wall
               clock: a node with less to do wants less, so this does not rise with idleness)
dispatcher     its loop's share busy or stalled (wall gaps in its loop)
robots.txt     the download slots' share held in the middlewares for robots.txt
politeness     the slots' share empty while every queued key waits out its delay
held           the slots' share empty while requests are ready (the engine backs out)
lack of work   the slots' share empty with nothing queued
=============  ==================================================================

A figure has grown when it rose by at least its absolute threshold *and* by
:data:`GROWTH_RATIO`, of itself or of what is left of the wall clock (0.6 -> 0.9 leaves a
quarter of the rest: grown), so neither noise on a tiny figure nor a small relative change of a
large one counts. Of the grown figures the one that rose most is the
cause; a crawl whose keys run out (few keys left, the frontier empty) is draining, which is
not a fault of the crawler.

:func:`dropped`: a crawl that "ends" by dropping what it was given (robots.txt unreachable, the
trap or SSRF guards) is not a normal end; what the nodes ended without a fetch, by refusal stats
key (:mod:`crawlproj.refusals`), against the pages they fetched.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from crawlproj.refusals import refusals, source_of

from .account import robots_fetches
from .analysis import Observations, Window

GROWTH_RATIO = 1.5
DRAIN_KEYS_RATIO = 0.5  # keys fetched per window late / early at or below this: draining
DRAIN_KEYS_FELL = 0.8  # ... or at or below this while the frontier is nearly empty
DRAIN_FRONTIER = 1000  # ... and at most this many requests left to lease in the frontier
BACKLOG_OLDEST_S = 5.0  # an item waiting this long in the store's buffer is falling behind ...
BACKLOG_GROWTH = 2.0  # ... when the buffer also grew this many times (or when the spill grows)
DROPPED_SHARE = 0.25  # of the requests the nodes ended, this share ended without a fetch: said first
DROPPED_MIN = 10  # ... and at least this many


def span_mean(bins: list[Window], value: Callable[[Window], float | None]) -> float | None:
    """Mean of ``value`` over the windows that have it, weighted by window length."""
    pairs = [(b.end - b.start, v) for b in bins if (v := value(b)) is not None]
    total = sum(w for w, _ in pairs)
    return sum(w * v for w, v in pairs) / total if total else None


def node_mean(b: Window, part: str, name: str) -> float | None:
    values = [a[part][name] for a in b.account.values() if name in a.get(part, {})]
    return sum(values) / len(values) if values else None


def op_mean(bins: list[Window], op: str, q: str) -> float | None:
    """Mean of an operation's quantile over windows, weighted by its count in each."""
    pairs = [(b.ops[op].get("n", 1), b.ops[op][q]) for b in bins if q in b.ops.get(op, {})]
    total = sum(n for n, _ in pairs)
    return sum(n * v for n, v in pairs) / total if total else None


def in_progress(bins: list[Window], op: str) -> float | None:
    """How many ``op`` were in progress per node, on average (Little's law: the time spent in
    it over the wall clock); for an operation of one thread, the share of its time it took."""
    return span_mean(bins, lambda b: b.ops[op]["sum"] / ((b.end - b.start) * 1000.0 * max(1, len(b.node_rates)))
                     if "sum" in b.ops.get(op, {}) else None)


@dataclass
class Share:
    """One resource's figure, early and late."""

    resource: str
    early: float
    late: float
    minimum: float  # the absolute rise that counts

    @property
    def rise(self) -> float:
        return self.late - self.early

    @property
    def grown(self) -> bool:
        relative = self.late >= GROWTH_RATIO * self.early or (1.0 - self.early) >= GROWTH_RATIO * (1.0 - self.late)
        return self.rise >= self.minimum and relative

    def describe(self, what: str) -> str:
        return f"{what} {100 * self.early:.0f}% -> {100 * self.late:.0f}%"


def _pct(early: float | None, late: float | None) -> str:
    if early is None or late is None:
        return "-"
    return f"{100 * early:.0f}% -> {100 * late:.0f}%"


def _ms(early: float | None, late: float | None) -> str:
    if early is None or late is None:
        return "-"
    return f"{early:.1f} -> {late:.1f} ms"


#: resource -> (account part, figure, absolute rise that counts, what the share is)
SLOT_SHARES = {
    "remote_sites": ("download", 0.03, "download slots busy transferring"),
    "robots": ("robots", 0.03, "download slots held for robots.txt"),
    "politeness": ("delay", 0.10, "download slots empty while every queued key waits out its delay"),
    "held": ("held", 0.10, "download slots empty while requests were ready (the engine backed out)"),
    "lack_of_work": ("nowork", 0.10, "download slots empty with nothing queued"),
}


def shares(early: list[Window], late: list[Window]) -> dict[str, Share]:
    """Every resource's figure early and late (those with figures in both)."""
    result: dict[str, Share] = {}

    def add(resource: str, value: Callable[[Window], float | None], minimum: float) -> None:
        e, l_ = span_mean(early, value), span_mean(late, value)
        if e is not None and l_ is not None:
            result[resource] = Share(resource, e, l_, minimum)

    for resource, (name, minimum, _) in SLOT_SHARES.items():
        add(resource, lambda b, n=name: node_mean(b, "slots", n), minimum)
    add("machine_cpu", lambda b: node_mean(b, "reactor", "starved"), 0.10)
    add("dispatcher", lambda b: None if b.busy is None else b.busy + (b.stalled or 0.0), 0.10)
    return result


def evidence(resource: str, early: list[Window], late: list[Window], found: dict[str, Share]) -> list[str]:
    """The before/after figures that show ``resource``'s part."""
    lines = []
    share = found.get(resource)
    if resource in SLOT_SHARES and share is not None:
        lines.append(share.describe(SLOT_SHARES[resource][2]))
    if resource == "remote_sites":
        lines.append(f"download time to first byte p50 {_ms(op_mean(early, 'download', 'p50'), op_mean(late, 'download', 'p50'))}"
                     f", p90 {_ms(op_mean(early, 'download', 'p90'), op_mean(late, 'download', 'p90'))}")
        if op_mean(late, "download_total", "p50") is not None:
            lines.append(f"download to the last byte p50 {_ms(op_mean(early, 'download_total', 'p50'), op_mean(late, 'download_total', 'p50'))}")
    elif resource == "machine_cpu":
        denied = found.get("machine_cpu")
        if denied is not None:
            lines.append(f"of the CPU time the reactor wanted, it waited for {_pct(denied.early, denied.late)}")
        lines.append("reactor thread waiting for a CPU "
                     + _pct(span_mean(early, lambda b: node_mean(b, "reactor", "starved")),
                            span_mean(late, lambda b: node_mean(b, "reactor", "starved"))) + " of the time")
        lines.append("reactor thread on a CPU "
                     + _pct(span_mean(early, lambda b: node_mean(b, "reactor", "cpu")),
                            span_mean(late, lambda b: node_mean(b, "reactor", "cpu"))))
        per_page = [span_mean(phase, _cpu_ms_per_page) for phase in (early, late)]
        if per_page[0] is not None and per_page[1] is not None:
            need = (" (the node got less CPU; it did not need more)"
                    if per_page[1] <= GROWTH_RATIO * per_page[0] else "")
            lines.append(f"process CPU per page {per_page[0]:.1f} -> {per_page[1]:.1f} ms{need}")
        pressure = [span_mean(phase, lambda b: node_mean(b, "machine", "pressure")) for phase in (early, late)]
        if pressure[0] is not None:
            lines.append(f"machine CPU pressure (some task waiting for a CPU) {_pct(*pressure)}")
        load = [span_mean(phase, lambda b: node_mean(b, "machine", "load")) for phase in (early, late)]
        cores = span_mean(late, lambda b: node_mean(b, "machine", "cores"))
        if load[0] is not None and load[1] is not None:
            lines.append(f"load average {load[0]:.1f} -> {load[1]:.1f}" + (f" on {cores:.0f} cores" if cores else ""))
    elif resource == "dispatcher":
        stalled = [span_mean(phase, lambda b: b.stalled) for phase in (early, late)]
        busy = [span_mean(phase, lambda b: b.busy) for phase in (early, late)]
        if stalled[0] is not None:
            lines.append(f"dispatcher loop stalled (wall gaps in its loop) {_pct(*stalled)} of the time")
        lines.append(f"dispatcher loop busy {_pct(*busy)}")
        lines.append("node round trip to the dispatcher p90 "
                     + _ms(op_mean(early, "dispatcher_rtt", "p90"), op_mean(late, "dispatcher_rtt", "p90")))
    elif resource == "robots":
        lines.append("a request's wait for robots.txt p90 "
                     + _ms(op_mean(early, "robots_wait", "p90"), op_mean(late, "robots_wait", "p90")))
        lines.append("robots.txt fetch p50 "
                     + _ms(op_mean(early, "robots_fetch", "p50"), op_mean(late, "robots_fetch", "p50")))
    elif resource in ("politeness", "lack_of_work"):
        waits = [op_mean(phase, "politeness_wait", "p90") for phase in (early, late)]
        if resource == "politeness" and waits[1] is not None:
            lines.append(f"a request's wait in the node's key queues (politeness_wait) p90 {_ms(*waits)}")
        keys = [span_mean(phase, lambda b: float(b.distinct_keys) if b.fetches else None) for phase in (early, late)]
        if keys[0] is not None and keys[1] is not None:
            lines.append(f"politeness keys fetched per window {keys[0]:.0f} -> {keys[1]:.0f}")
        available = late[-1].available if late else None
        if available is not None:
            lines.append(f"frontier: {available:.0f} requests left to lease")
    elif resource == "held":
        lines.append("item_write p50 " + _ms(op_mean(early, "item_write", "p50"), op_mean(late, "item_write", "p50")))
    return lines


def _denied(b: Window) -> float | None:
    """Of the time the nodes' reactors were runnable, the share they waited for a CPU."""
    cpu, starved = node_mean(b, "reactor", "cpu"), node_mean(b, "reactor", "starved")
    if cpu is None or starved is None or cpu + starved <= 0:
        return None
    return starved / (cpu + starved)


def _cpu_ms_per_page(b: Window) -> float | None:
    if b.cpu is None or not b.rate or not b.node_rates:
        return None
    return 1000.0 * b.cpu / (b.rate / len(b.node_rates))


def draining(early: list[Window], late: list[Window]) -> str | None:
    """Why the crawl is draining (its keys running out, the frontier nearly empty), or None."""
    keys = [span_mean(phase, lambda b: float(b.distinct_keys) if b.fetches else None) for phase in (early, late)]
    if keys[0] is None or keys[1] is None or not keys[0]:
        return None
    ratio = keys[1] / keys[0]
    available = late[-1].available if late else None
    emptying = available is not None and available <= DRAIN_FRONTIER
    if not (ratio <= DRAIN_KEYS_RATIO and (available is None or emptying)
            or ratio <= DRAIN_KEYS_FELL and emptying):
        return None
    left = "" if available is None else f", {available:.0f} requests left in the frontier"
    return f"politeness keys fetched per window {keys[0]:.0f} -> {keys[1]:.0f}{left}"


def backlog(bins: list[Window], early: list[Window], late: list[Window]) -> list[str] | None:
    """The item store falling behind (its buffer or spill growing, its oldest item aging), with
    the time left before its buffer and then its spill budget are full at this pace; None when
    it keeps up. Late figures are the late windows' highest (a closing crawl empties the buffer)."""
    def early_mean(name: str) -> float:
        return span_mean(early, lambda b: node_mean(b, "backlog", name)) or 0.0

    def late_max(name: str) -> float | None:
        values = [v for b in late if (v := node_mean(b, "backlog", name)) is not None]
        return max(values) if values else None

    oldest, items, spill = late_max("oldest_s"), late_max("items"), late_max("spill_bytes")
    spilling = spill is not None and spill > early_mean("spill_bytes")
    waiting = (oldest is not None and oldest >= BACKLOG_OLDEST_S and items is not None
               and items >= BACKLOG_GROWTH * max(early_mean("items"), 1.0))
    if not (spilling or waiting):
        return None
    lines = [f"items waiting in the store's buffer {early_mean('items'):.0f} -> {items or 0:.0f}, "
             f"the oldest {early_mean('oldest_s'):.1f} -> {oldest or 0:.1f} s"]
    for name, budget_name, what in (("items", "items_max", "buffer"), ("spill_bytes", "spill_max", "spill budget")):
        budget = late_max(budget_name)
        points = [(b.middle, v) for b in bins if (v := node_mean(b, "backlog", name)) is not None]
        pace = _pace(points[: len(points) - len(late) // 2 or None])  # without the closing tail
        if budget and pace is not None and pace > 0 and points:
            left = max(0.0, budget - max(v for _, v in points)) / pace
            unit = "items" if name == "items" else "bytes"
            lines.append(f"at this pace ({pace:.1f} {unit}/s) the {what} ({budget:.0f} {unit}) "
                         f"is full in {duration(left)}")
    return lines


def _pace(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope (per second) of (time, value) points."""
    if len(points) < 2:
        return None
    mt = sum(t for t, _ in points) / len(points)
    mv = sum(v for _, v in points) / len(points)
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (v - mv) for t, v in points) / var if var else None


def duration(seconds: float) -> str:
    """A span as a person reads it: "40 s", "3 min", "1.5 h"."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


@dataclass
class Dropped:
    """What the nodes ended without fetching, against what they fetched."""

    pages: int
    by_key: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.by_key.values())

    @property
    def share(self) -> float:
        ended = self.total + self.pages
        return self.total / ended if ended else 0.0

    def summary(self) -> str:
        top = max(self.by_key, key=lambda k: self.by_key[k])
        what, allow = source_of(top) or (top, "?")
        return (f"the crawl ended by dropping requests, not by fetching them: {self.total} of "
                f"{self.total + self.pages} ({100 * self.share:.0f}%) ended without a fetch, most by "
                f"{what} [{top}]; to allow them: {allow}")

    def evidence(self) -> list[str]:
        lines = [f"{self.pages} pages fetched, {self.total} requests refused or dropped"]
        for key, count in sorted(self.by_key.items(), key=lambda kv: -kv[1]):
            what, allow = source_of(key) or (key, "?")
            lines.append(f"{count} by {what} [{key}]; to allow them: {allow}")
        return lines


def dropped(obs: Observations) -> Dropped | None:
    """The requests the nodes ended without a fetch (their final stats, or the latest counts of
    their TIMINGS records and reports), when they are a large share of what the nodes ended."""
    pages = 0
    by_key: Counter[str] = Counter()
    for src in obs.nodes():
        counts = Counter(refusals(src.final_stats))
        robots = robots_fetches(src.final_stats)  # responses, not pages
        for w in src.windows:
            for key, n in (w.get("refused") or {}).items():
                if isinstance(n, (int, float)) and source_of(key) is not None:
                    counts[key] = max(counts[key], int(n))  # cumulative: the latest is the largest
            if isinstance(w.get("robots_fetches"), (int, float)):
                robots = max(robots, int(w["robots_fetches"]))
        by_key.update(counts)
        final = src.final_stats.get("response_received_count")
        logged = max((n for _, n in src.pages), default=0.0)
        pages += max(0, int(max(final if isinstance(final, (int, float)) else 0, logged)) - robots)
    result = Dropped(pages, dict(by_key))
    if result.total < DROPPED_MIN or result.share < DROPPED_SHARE:
        return None
    return result
