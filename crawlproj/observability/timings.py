"""The timed operations of one crawler and the sampled timing log.

Every operation that can get slow has a name (:data:`OPERATIONS`) and a
:class:`~crawlproj.politeness.timing.LatencySampler`; components that already own a sampler
(the politeness store, the robots.txt fetcher) have it *adopted* under an operation name, so
there is one kind of timing record whoever measured it.

Two readers take windows of every operation: ``"log"`` (the TIMINGS summary line every
``TIMINGS_LOG_INTERVAL``) and ``"report"`` (the stats a node sends the dispatcher every
``DISPATCHER_STATS_INTERVAL``). Single durations go to the log, sampled, as TIMING lines.

Log records are JSON after a fixed tag, so they are stable to parse whatever the log format:

    TIMING {"t": 1767225600.125, "node": "n1", "op": "item_write", "ms": 12.5}
    TIMINGS {"t": ..., "node": "n1", "interval": 60.0, "pages": 5120, "items": 5101,
             "cpu": 0.42, "keys": {"distinct": 38, "fetches": 900, "top": "a.test", "top_n": 40},
             "ops": {"item_write": {"n": 899, "sum": ..., "max": ..., "p50": ..., "p90": ..., "p99": ...}},
             "account": {"slots": {...}, "reactor": {...}, "machine": {...}, "backlog": {...}},
             "refused": {"robots/forbidden/unreachable": 12}}

(the account: :mod:`crawlproj.observability.account`; ``refused``: the requests ended without a
fetch so far, by refusal stats key, :mod:`crawlproj.refusals`, when there are any, with
``robots_fetches``: how many of the pages were robots.txt fetches). A single
duration is logged when it is every k-th of its operation (``TIMINGS_LOG_SAMPLE_RATE``) or
slow: at least ``TIMINGS_LOG_SLOW_MS`` *and* :data:`SLOW_OVER_TYPICAL` times the operation's typical duration
(an operation slow by design, such as a write that waits for its batch, floods nothing), at
most one slow line per operation every :data:`SLOW_LOG_EVERY` seconds (with the count of the
others since).

With ``TIMINGS_LOG_FILE`` the same records (with ``"kind": "sample"`` or ``"window"``) are also
written as JSON lines to that file.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import threading
import time
from collections import Counter
from typing import Any, TextIO

from crawlproj.politeness.timing import LatencySampler, StatsLike

from .account import Clocks, SlotAccount, flatten, unflatten

logger = logging.getLogger("crawlproj.timing")

SAMPLE_TAG = "TIMING"
WINDOW_TAG = "TIMINGS"
STATS_PREFIX = "timing"

#: The operations a node times, and what each measures.
OPERATIONS = {
    "download": "Scrapy's download_latency of a response (request sent to its headers: time to first byte)",
    "download_total": "a download from the request sent to its last byte",
    "robots_wait": "a request in the downloader middlewares before its slot (the wait for robots.txt)",
    "slot_wait": "a request in its downloader slot before its transfer (a key's delay waited out)",
    "politeness_wait": "a leased request in the node's key queues, from queued to handed to Scrapy (its "
                       "key's delay and the fetches ahead of it waited out; a full engine adds to it)",
    "parse": "a spider callback, from its first output to its last (link handling included)",
    "item_write": "an item, from the callback yielding it to the end of the item pipelines, its item_batch_wait "
                  "left out",
    "item_batch_wait": "an item's wait in the MongoDB pipeline for its batch to fill (MONGO_BATCH_SIZE, "
                       "MONGO_FLUSH_INTERVAL): by configuration, never logged as slow",
    "robots_lookup": "a read of the politeness store (robots.txt cache, last-fetch state)",
    "robots_store_write": "one batched write of the politeness store",
    "robots_fetch": "a robots.txt fetch (politeness wait included)",
    "robots_parse": "parsing one robots.txt",
    "dispatcher_rtt": "a node's heartbeat to the dispatcher and its answer",
}
#: Operations the dispatcher times (crawlproj.observability.dispatcher).
DISPATCHER_OPERATIONS = {
    "dispatcher_message": "handling one message from a node",
    "frontier_add": "storing the pushed requests of one message (dedup included)",
    "frontier_ack": "deleting the acked requests of one message",
    "frontier_commit": "one commit of the frontier store",
    "dispatcher_serve": "leasing one node its credit's worth of requests",
}

_REPORT_TIMING = STATS_PREFIX + "/"
_REPORT_TOP_KEY = "keys/top/"
_REPORT_REFUSED = "refused/"
_REPORT_ROBOTS_FETCHES = "node/robots_fetches"
_ITEM_STARTS_MAX = 100_000  # items in flight whose start is remembered (a leak bound)
#: Waits by configuration: sampled like any operation, never a "slow" TIMING line.
NEVER_SLOW = frozenset({"item_batch_wait"})
SLOW_OVER_TYPICAL = 4.0  # a slow line needs this many times the operation's typical duration
SLOW_LOG_EVERY = 10.0  # seconds: at most one slow line per operation this often
_TYPICAL_WEIGHT = 0.05  # weight of one duration in the typical (an exponential mean)


class TimingLog:
    """Sampled single durations and window summaries, to the log and optionally a JSON file."""

    def __init__(self, node: str, sample_rate: float, slow_ms: float, path: str = ""):
        self.node = node
        # every k-th duration of an operation: deterministic, and cheaper than a random draw
        self.every = round(1 / sample_rate) if sample_rate > 0 else 0
        self.slow_ms = slow_ms
        self.path = path
        self._seen: Counter[str] = Counter()
        self._typical: dict[str, float] = {}
        self._slow_at: dict[str, float] = {}  # op -> monotonic time of its last slow line
        self._slow_more: Counter[str] = Counter()  # slow durations not logged since that line
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        if path:
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def sink(self, op: str) -> Any:
        slow_ms = float("inf") if op in NEVER_SLOW else self.slow_ms

        def record(ms: float) -> None:
            self._seen[op] += 1
            typical = self._typical.get(op, ms)
            self._typical[op] = typical + _TYPICAL_WEIGHT * (ms - typical)
            if ms >= slow_ms and ms >= SLOW_OVER_TYPICAL * typical:
                now = time.monotonic()
                if now - self._slow_at.get(op, -SLOW_LOG_EVERY) >= SLOW_LOG_EVERY:
                    self._slow_at[op] = now
                    self.sample(op, ms, more=self._slow_more.pop(op, 0))
                else:
                    self._slow_more[op] += 1
            elif self.every and self._seen[op] % self.every == 0:
                self.sample(op, ms)

        return record

    def sample(self, op: str, ms: float, more: int = 0) -> None:
        record: dict[str, Any] = {"t": round(time.time(), 3), "node": self.node, "op": op,
                                  "ms": round(ms, 3)}
        if more:
            record["more_slow"] = more  # slow durations of op since its last slow line, not logged
        logger.info("%s %s", SAMPLE_TAG, json.dumps(record))
        self._write("sample", record)

    def window(self, record: dict[str, Any]) -> None:
        logger.info("%s %s", WINDOW_TAG, json.dumps(record, separators=(",", ":")))
        self._write("window", record)

    def _write(self, kind: str, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        line = json.dumps({"kind": kind, **record}, separators=(",", ":"))
        with self._lock:  # samplers may record from other threads
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class Timings:
    """The timed operations of one crawler, owned by its
    :class:`~crawlproj.observability.extension.TimingsExtension`:
    ``timings_of(crawler).record("parse", ms)``."""

    def __init__(self) -> None:
        self.samplers: dict[str, LatencySampler] = {}
        self.log: TimingLog | None = None
        self._item_starts: dict[int, float] = {}
        self._item_waits: dict[int, float] = {}  # ms an item in flight waited for its batch
        # per reader ("log": the TIMINGS lines, "report": the dispatcher's stats), opened by the
        # component that reads it, so a standalone crawl keeps no "report" window or key counts
        self._keys: dict[str, Counter[str]] = {}
        self._cpu_at: dict[str, tuple[float, float]] = {}  # (monotonic, CPU seconds) of the last look
        self._clocks: dict[str, Clocks] = {}
        self.slots = SlotAccount()  # probed by the TimingsExtension
        self.backlog: dict[str, float] = {}  # the item store's, as last probed
        # requests ended without a fetch, by refusal stats key (crawlproj.refusals), as last probed
        self.refused: dict[str, int] = {}
        self.robots_fetches = 0  # responses that were robots.txt fetches, as last probed

    # -- recording ------------------------------------------------------------------------------

    def sampler(self, op: str) -> LatencySampler:
        sampler = self.samplers.get(op)
        if sampler is None:
            sampler = self.adopt(op, LatencySampler(f"{STATS_PREFIX}/{op}"))
        return sampler

    def open_reader(self, reader: str) -> None:
        """Start keeping ``reader``'s windows (each ``window(reader)`` reports since the last)."""
        if reader in self._cpu_at:
            return
        self._cpu_at[reader] = (time.monotonic(), _cpu_seconds())
        self._clocks[reader] = Clocks()
        self.slots.open(reader)
        self._keys[reader] = Counter()
        for sampler in self.samplers.values():
            sampler.take_window(reader)

    def adopt(self, op: str, sampler: LatencySampler) -> LatencySampler:
        """Take a component's own sampler as operation ``op``."""
        for reader in self._cpu_at:
            sampler.take_window(reader)  # open the reader's window now
        if self.log is not None:
            sampler.sink = self.log.sink(op)
        self.samplers[op] = sampler
        return sampler

    def set_log(self, log: TimingLog) -> None:
        self.log = log
        for op, sampler in self.samplers.items():
            sampler.sink = log.sink(op)

    def record(self, op: str, ms: float) -> None:
        self.sampler(op).add(ms)

    def fetched(self, key: str) -> None:
        """One response of politeness key ``key`` (for the hot-key figures)."""
        for counter in self._keys.values():
            counter[key] += 1

    def item_started(self, item: Any, t: float) -> None:
        starts = self._item_starts
        if len(starts) >= _ITEM_STARTS_MAX:
            starts.clear()  # items that never settled (dropped by an outer middleware)
            self._item_waits.clear()
        starts[id(item)] = t

    def item_waited(self, item: Any, ms: float) -> None:
        """``item`` waited ``ms`` for its batch (item_batch_wait): not part of its item_write."""
        self.record("item_batch_wait", ms)
        if id(item) in self._item_starts:
            self._item_waits[id(item)] = self._item_waits.get(id(item), 0.0) + ms

    def item_finished(self, item: Any, t: float) -> None:
        started = self._item_starts.pop(id(item), None)
        waited = self._item_waits.pop(id(item), 0.0)
        if started is not None:
            self.record("item_write", max((t - started) * 1000.0 - waited, 0.0))

    # -- reading --------------------------------------------------------------------------------

    def window(self, reader: str) -> dict[str, Any]:
        """Everything since ``reader``'s last look: interval, cpu, keys and every operation."""
        self.open_reader(reader)
        now = time.monotonic()
        cpu_now = _cpu_seconds()
        then, cpu_then = self._cpu_at[reader]
        self._cpu_at[reader] = (now, cpu_now)
        interval = max(now - then, 1e-9)
        keys = self._keys[reader]
        self._keys[reader] = Counter()
        top = keys.most_common(1)
        ops = {}
        for op, sampler in sorted(self.samplers.items()):
            summary = sampler.take_window(reader)
            if summary["n"]:
                ops[op] = summary
        clocks = Clocks()
        reactor, machine = clocks.since(self._clocks[reader], ops.get("parse", {}).get("sum", 0.0))
        self._clocks[reader] = clocks
        slots, lag = self.slots.take(reader)
        if lag is not None:
            reactor["lag_ms"] = lag
        account: dict[str, Any] = {"slots": slots, "reactor": reactor, "machine": machine}
        if self.backlog:
            account["backlog"] = dict(self.backlog)
        window: dict[str, Any] = {
            "interval": round(interval, 3),
            "cpu": round((cpu_now - cpu_then) / interval, 3),
            "keys": {"distinct": len(keys), "fetches": sum(keys.values()),
                     "top": top[0][0] if top else None, "top_n": top[0][1] if top else 0},
            "ops": ops,
            "account": account,
        }
        if self.refused:
            window["refused"] = dict(self.refused)  # cumulative, since the crawl's start
            window["robots_fetches"] = self.robots_fetches  # of the responses, cumulative
        return window

    def report(self) -> dict[str, float]:
        """The ``"report"`` window as flat numeric stats for the dispatcher's "stats" message:
        ``timing/<op>/{n,sum,max,p50,p90,p99}``, ``node/cpu``, ``node/interval``,
        ``keys/distinct``, ``keys/fetches``, ``keys/top/<key>`` (fetches of the busiest key),
        ``acct/<part>/<figure>`` (the time account), ``refused/<refusal stats key>`` and
        ``node/robots_fetches`` (cumulative)."""
        window = self.window("report")
        flat: dict[str, float] = {"node/cpu": window["cpu"], "node/interval": window["interval"]}
        flat.update(flatten(window["account"]))
        keys = window["keys"]
        flat["keys/distinct"] = keys["distinct"]
        flat["keys/fetches"] = keys["fetches"]
        if keys["top"] is not None:
            flat[f"keys/top/{keys['top']}"] = keys["top_n"]
        for op, summary in window["ops"].items():
            for field, value in summary.items():
                flat[f"{STATS_PREFIX}/{op}/{field}"] = value
        for key, count in window.get("refused", {}).items():
            flat[_REPORT_REFUSED + key] = count
        if "robots_fetches" in window:
            flat[_REPORT_ROBOTS_FETCHES] = window["robots_fetches"]
        return flat

    def publish(self, stats: StatsLike) -> None:
        """Whole-crawl figures: ``timing/<op>/{count,max,p50,p90,p99}`` in the crawl stats."""
        for op, sampler in self.samplers.items():
            for field, value in sampler.summary().items():
                stats.set_value(f"{STATS_PREFIX}/{op}/{field}", value)


class NullTimings(Timings):
    """Timings that keep nothing: a crawler's timings while TimingsExtension is off."""

    def sampler(self, op: str) -> LatencySampler:
        return LatencySampler(f"{STATS_PREFIX}/{op}")  # not kept

    def open_reader(self, reader: str) -> None:
        pass

    def adopt(self, op: str, sampler: LatencySampler) -> LatencySampler:
        return sampler

    def set_log(self, log: TimingLog) -> None:
        pass

    def record(self, op: str, ms: float) -> None:
        pass

    def fetched(self, key: str) -> None:
        pass

    def item_started(self, item: Any, t: float) -> None:
        pass

    def item_waited(self, item: Any, ms: float) -> None:
        pass

    def item_finished(self, item: Any, t: float) -> None:
        pass

    def window(self, reader: str) -> dict[str, Any]:
        return {"interval": 0.0, "cpu": 0.0, "keys": {"distinct": 0, "fetches": 0, "top": None, "top_n": 0},
                "ops": {}, "account": {}}

    def report(self) -> dict[str, float]:
        return {}

    def publish(self, stats: StatsLike) -> None:
        pass


def parse_report(stats: dict[str, Any]) -> dict[str, Any]:
    """A node's flat report (:meth:`Timings.report`, as the dispatcher stores it) as a window:
    ``{"interval", "cpu", "keys": {...}, "ops": {op: {"n", "p50", ...}}, "account": {...}}``
    (and ``"refused": {stats key: count}`` when the node refused requests)."""
    ops: dict[str, dict[str, float]] = {}
    refused: dict[str, int] = {}
    top, top_n = None, 0
    for name, value in stats.items():
        if not isinstance(name, str) or not isinstance(value, (int, float)):
            continue
        if name.startswith(_REPORT_TIMING):
            op, _, field = name[len(_REPORT_TIMING):].rpartition("/")
            if op:
                ops.setdefault(op, {})[field] = value
        elif name.startswith(_REPORT_TOP_KEY) and value >= top_n:
            top, top_n = name[len(_REPORT_TOP_KEY):], value
        elif name.startswith(_REPORT_REFUSED):
            refused[name[len(_REPORT_REFUSED):]] = int(value)
    report: dict[str, Any] = {
        "interval": stats.get("node/interval"), "cpu": stats.get("node/cpu"),
        "keys": {"distinct": stats.get("keys/distinct", 0), "fetches": stats.get("keys/fetches", 0),
                 "top": top, "top_n": top_n},
        "ops": {op: s for op, s in ops.items() if s.get("n")},
        "account": unflatten(stats),
    }
    if refused:
        report["refused"] = refused
        report["robots_fetches"] = stats.get(_REPORT_ROBOTS_FETCHES, 0)
    return report


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
