"""The dispatcher's side of observability: its own timings, the cluster's time series and the
HTTP server's snapshot.

:class:`DispatcherObserver` is the dispatcher's :class:`~crawlproj.dispatcher.instrument.Instrument`
(``crawlproj dispatcher`` gives it one): the service and its frontier call its hooks on their one
thread (``timed`` around each timed operation, ``busy`` around the loop's work, ``node_stats`` for
each node report, ``tick`` from the timers, once per turn of the loop), and it reads the service only through the public
``state()`` snapshot it was attached to. The HTTP server's threads only read what ``tick``
published (a snapshot swapped under a lock and the :class:`~crawlproj.observability.series.Series`),
so a slow HTTP client never slows the poll loop.

The loop's account: ``busy`` (share of the wall clock in its work), ``stalled`` (wall time
between two turns of the loop beyond their work and :data:`STALL_ALLOWANCE`: the process was
stopped, swapped out or starved, so nobody was served) and ``cpu``.
"""

from __future__ import annotations

import json
import logging
import resource
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from crawlproj.dispatcher.instrument import Instrument, State
from crawlproj.politeness.timing import LatencySampler

from .series import Series
from .timings import DISPATCHER_OPERATIONS, STATS_PREFIX, WINDOW_TAG, parse_report

if TYPE_CHECKING:
    from .http import StatusHTTPServer

logger = logging.getLogger("crawlproj.timing")

READERS = ("tick", "log")
#: Seconds a turn of the loop may take beyond its work before the rest counts as stalled: its
#: longest poll (crawlproj.dispatcher.service.POLL_MAX_SECONDS, 0.1 s) and scheduling slack.
STALL_ALLOWANCE = 0.25
NODE_FIELDS = ("queued", "inflight", "keys", "owned")


class _Reader:
    """Busy time and CPU since a reader's last look."""

    __slots__ = ("at", "cpu", "busy", "stalled")

    def __init__(self, now: float):
        self.at = now
        self.cpu = _cpu_seconds()
        self.busy = 0.0
        self.stalled = 0.0

    def take(self, now: float) -> tuple[float, float, float, float]:
        """(interval, busy share, cpu share, stalled share) since the last take."""
        cpu = _cpu_seconds()
        interval = max(now - self.at, 1e-9)
        result = (interval, min(1.0, self.busy / interval), (cpu - self.cpu) / interval,
                  min(1.0, self.stalled / interval))
        self.at, self.cpu, self.busy, self.stalled = now, cpu, 0.0, 0.0
        return result


class _Timer:
    """A reusable context manager adding each duration (ms) to a sampler; nests safely."""

    __slots__ = ("add", "starts")

    def __init__(self, sampler: LatencySampler):
        self.add = sampler.add
        self.starts: list[float] = []

    def __enter__(self) -> None:
        self.starts.append(time.perf_counter())

    def __exit__(self, *exc: object) -> None:
        self.add((time.perf_counter() - self.starts.pop()) * 1000.0)


class _Busy:
    """A reusable context manager adding each duration (s) to the readers' busy time."""

    __slots__ = ("readers", "starts", "total")

    def __init__(self, readers: Iterable[_Reader]):
        self.readers = tuple(readers)
        self.starts: list[float] = []
        self.total = 0.0  # busy seconds since the start

    def __enter__(self) -> None:
        self.starts.append(time.perf_counter())

    def __exit__(self, *exc: object) -> None:
        took = time.perf_counter() - self.starts.pop()
        if not self.starts:
            self.total += took
        for reader in self.readers:
            reader.busy += took


class DispatcherObserver(Instrument):
    def __init__(self, interval: float = 1.0, points: int = 3600, log_interval: float = 60.0):
        self.interval = interval
        self.log_interval = log_interval
        self.series = Series(points)
        self.samplers = {op: LatencySampler(f"{STATS_PREFIX}/{op}") for op in DISPATCHER_OPERATIONS}
        now = time.monotonic()
        for sampler in self.samplers.values():
            for reader in READERS:
                sampler.take_window(reader)
        self._readers = {reader: _Reader(now) for reader in READERS}
        self._timers = {op: _Timer(sampler) for op, sampler in self.samplers.items()}
        self._busy = _Busy(self._readers.values())
        self._next_tick = now
        self._turn = (now, 0.0)  # (monotonic, busy total) at the last turn of the loop
        self._next_log = now + self.log_interval
        self._node_prev: dict[str, tuple[float, float]] = {}  # name -> (monotonic, pages)
        self._node_rate: dict[str, float] = {}
        self._fresh: dict[str, dict[str, Any]] = {}  # reports since the last tick
        self._last: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {}
        self._source: State | None = None
        self.http: StatusHTTPServer | None = None
        self.http_url = ""

    # -- hooks (the dispatcher's thread) ---------------------------------------------------------

    def attach(self, state: State) -> None:
        self._source = state

    def timed(self, op: str) -> _Timer:
        return self._timers[op]

    def busy(self) -> _Busy:
        return self._busy

    def node_stats(self, node: str, stats: dict[str, int | float]) -> None:
        now = time.monotonic()
        pages = stats.get("response_received_count", 0)  # the dispatcher passes numbers only
        prev = self._node_prev.get(node)
        if prev is not None and now > prev[0]:
            # a restarted node counts from 0 again: its rate is what it did since its start
            delta = pages - prev[1] if pages >= prev[1] else pages
            self._node_rate[node] = delta / (now - prev[0])
        self._node_prev[node] = (now, pages)
        self._fresh[node] = parse_report(stats)

    def tick(self, now: float) -> None:
        last, busy_then = self._turn
        busy_now = self._busy.total
        stalled = (now - last) - (busy_now - busy_then) - STALL_ALLOWANCE
        self._turn = (now, busy_now)
        if stalled > 0:
            for reader in self._readers.values():
                reader.stalled += stalled
        sample, log = now >= self._next_tick, now >= self._next_log
        if self._source is None or not (sample or log):
            return
        state = self._source()
        if sample:
            self._next_tick = now + self.interval
            self._sample(now, state)
        if log:
            self._next_log = now + self.log_interval
            self._log(now, state)

    def _sample(self, now: float, state: dict[str, Any]) -> None:
        interval, busy, cpu, stalled = self._readers["tick"].take(now)
        fresh, self._fresh = self._fresh, {}
        for gone in self._node_prev.keys() - state["nodes"].keys():  # forgotten by the dispatcher
            self._node_prev.pop(gone, None)
            self._node_rate.pop(gone, None)
        nodes: dict[str, dict[str, Any]] = {}
        for name, node in state["nodes"].items():
            if not node["alive"] and name not in fresh:
                continue
            stats = node["stats"]
            entry: dict[str, Any] = {
                "alive": node["alive"], "pages": stats.get("response_received_count", 0),
                "rate": round(self._node_rate.get(name, 0.0), 3) if node["alive"] else 0.0,
                "leases": node["leases"],
            }
            for field in NODE_FIELDS:
                entry[field] = stats.get(field, 0)
            report = fresh.get(name)
            if report is not None:
                entry["report"] = report
            nodes[name] = entry
        point = {
            "t": round(time.time(), 3), "interval": round(interval, 3),
            "frontier": state["frontier"], "available": state["available"],
            "leases": state["leases"], "seen": state["seen"],
            "nodes_alive": sum(1 for n in state["nodes"].values() if n["alive"]),
            "pages": sum(n["pages"] for n in nodes.values()),
            "rate": round(sum(n["rate"] for n in nodes.values()), 3),
            "busy": round(busy, 4), "stalled": round(stalled, 4), "cpu": round(cpu, 4),
            "ops": self._windows("tick"), "nodes": nodes,
        }
        self._last = point
        self.series.append(point)
        # the snapshot's own summary as of this point (the state was taken before it)
        published = {**state, "observability": self.summary()}
        with self._lock:
            self._state = published

    def _windows(self, reader: str) -> dict[str, dict[str, float]]:
        ops = {}
        for op, sampler in self.samplers.items():
            window = sampler.take_window(reader)
            if window["n"]:
                ops[op] = window
        return ops

    def _log(self, now: float, state: dict[str, Any]) -> None:
        interval, busy, cpu, stalled = self._readers["log"].take(now)
        record = {"t": round(time.time(), 3), "node": "dispatcher", "interval": round(interval, 3),
                  "busy": round(busy, 4), "stalled": round(stalled, 4), "cpu": round(cpu, 4),
                  "frontier": state["frontier"], "available": state["available"],
                  "leases": state["leases"],
                  "nodes_alive": sum(1 for n in state["nodes"].values() if n["alive"]),
                  "ops": self._windows("log")}
        logger.info("%s %s", WINDOW_TAG, json.dumps(record, separators=(",", ":")))

    # -- readers (any thread) --------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """For the dispatcher's "state": the last sample's rates, busy share and timings."""
        last = self._last
        return {
            "rate": last.get("rate", 0.0), "busy": last.get("busy", 0.0), "cpu": last.get("cpu", 0.0),
            "stalled": last.get("stalled", 0.0),
            "node_rates": {name: n["rate"] for name, n in last.get("nodes", {}).items()},
            "ops": {op: s.summary() for op, s in self.samplers.items() if s.count},
            "series_points": len(self.series), "series_stride": self.series.stride,
            "http": self.http_url,
        }

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self._state

    # -- HTTP ------------------------------------------------------------------------------------

    def start_http(self, host: str, port: int) -> str:
        """Serve the HTTP API on ``host:port`` (0: a free port); its URL. Call after attach()."""
        from .http import StatusHTTPServer  # prometheus-client and http.server only when asked

        self.http = StatusHTTPServer(self, host, port)
        self.http_url = self.http.start()
        if self._source is not None:
            self._sample(time.monotonic(), self._source())  # a first snapshot before anyone asks
        return self.http_url

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
