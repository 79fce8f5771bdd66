"""The dispatcher's side of observability: its own timings, the cluster's time series, the HTTP
server's snapshot, and the test-only per-message delay.

Everything here runs on the dispatcher's one thread, from hooks in
:mod:`crawlproj.dispatcher.server` (``on_stats`` for each node report, ``tick`` from its timers);
the HTTP server's threads only read what ``tick`` published (a snapshot swapped under a lock and
the :class:`~crawlproj.observability.series.Series`), so a slow HTTP client never slows the
poll loop.
"""

from __future__ import annotations

import functools
import json
import logging
import resource
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from crawlproj.politeness.timing import LatencySampler

from .series import Series
from .timings import DISPATCHER_OPERATIONS, STATS_PREFIX, WINDOW_TAG, parse_report

if TYPE_CHECKING:
    from crawlproj.dispatcher.server import Dispatcher

    from .http import StatusHTTPServer

logger = logging.getLogger("crawlproj.timing")

READERS = ("tick", "log")
NODE_FIELDS = ("queued", "inflight", "keys", "owned")
HTTP_PREFIX = "DISPATCHER HTTP "


class _Reader:
    """Busy time and CPU since a reader's last look."""

    __slots__ = ("at", "cpu", "busy")

    def __init__(self, now: float):
        self.at = now
        self.cpu = _cpu_seconds()
        self.busy = 0.0

    def take(self, now: float) -> tuple[float, float, float]:
        """(interval, busy share, cpu share) since the last take."""
        cpu = _cpu_seconds()
        interval = max(now - self.at, 1e-9)
        result = (interval, min(1.0, self.busy / interval), (cpu - self.cpu) / interval)
        self.at, self.cpu, self.busy = now, cpu, 0.0
        return result


class DispatcherObserver:
    def __init__(self, dispatcher: Dispatcher):
        self.d = dispatcher
        config = dispatcher.config
        self.interval = config.series_interval
        self.log_interval = config.timings_interval
        self.message_delay = config.test_message_delay
        self.series = Series(config.series_points)
        self.samplers = {op: LatencySampler(f"{STATS_PREFIX}/{op}") for op in DISPATCHER_OPERATIONS}
        now = time.monotonic()
        for sampler in self.samplers.values():
            for reader in READERS:
                sampler.take_window(reader)
        self._readers = {reader: _Reader(now) for reader in READERS}
        self._next_tick = now
        self._next_log = now + self.log_interval
        self._node_prev: dict[str, tuple[float, float]] = {}  # name -> (monotonic, pages)
        self._node_rate: dict[str, float] = {}
        self._fresh: dict[str, dict[str, Any]] = {}  # reports since the last tick
        self._last: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {}
        self.http: StatusHTTPServer | None = None
        self.http_url = ""
        self._instrument()

    # -- instrumentation ------------------------------------------------------------------------

    def _instrument(self) -> None:
        """Time the handlers and the frontier store by wrapping them on this instance."""
        d, fr = self.d, self.d.frontier
        for mtype, handler in list(d._handlers.items()):
            d._handlers[mtype] = self._timed_handler(mtype, handler)
        fr.add = self._timed("frontier_add", fr.add)  # type: ignore[method-assign]
        fr.add_forced = self._timed("frontier_add", fr.add_forced)  # type: ignore[method-assign]
        fr.ack_leased = self._timed("frontier_ack", fr.ack_leased)  # type: ignore[method-assign]
        d._serve = self._timed("dispatcher_serve", d._serve)  # type: ignore[method-assign]
        fr.maybe_commit = self._timed_commit(fr.maybe_commit)  # type: ignore[method-assign]
        # the loop's work between two polls: its share of the wall clock is how busy it is
        for name in ("_drain", "_serve_dirty", "_timers"):
            setattr(d, name, self._busy(getattr(d, name)))

    def _timed(self, op: str, func: Callable[..., Any]) -> Callable[..., Any]:
        add, clock = self.samplers[op].add, time.perf_counter

        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return func(*args, **kwargs)
            finally:
                add((clock() - started) * 1000.0)

        return timed

    def _timed_commit(self, func: Callable[..., bool]) -> Callable[..., bool]:
        add, clock = self.samplers["frontier_commit"].add, time.perf_counter
        readers = self._readers.values()

        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> bool:
            started = clock()
            committed = func(*args, **kwargs)
            took = clock() - started
            for reader in readers:
                reader.busy += took
            if committed:
                add(took * 1000.0)
            return committed

        return timed

    def _timed_handler(self, mtype: str, func: Callable[..., None]) -> Callable[..., None]:
        add, clock = self.samplers["dispatcher_message"].add, time.perf_counter
        delay = self.message_delay if mtype != "status" else 0.0

        @functools.wraps(func)
        def timed(*args: Any) -> None:
            started = clock()
            if delay:
                time.sleep(delay)  # test-only: a dispatcher this much slower per message
            try:
                func(*args)
            finally:
                add((clock() - started) * 1000.0)

        return timed

    def _busy(self, func: Callable[..., Any]) -> Callable[..., Any]:
        clock = time.perf_counter
        readers = self._readers.values()

        @functools.wraps(func)
        def timed(*args: Any) -> Any:
            started = clock()
            try:
                return func(*args)
            finally:
                took = clock() - started
                for reader in readers:
                    reader.busy += took

        return timed

    # -- hooks ----------------------------------------------------------------------------------

    def on_stats(self, name: str, stats: dict[str, Any]) -> None:
        now = time.monotonic()
        pages = stats.get("response_received_count", 0)  # the server passes numbers only
        prev = self._node_prev.get(name)
        if prev is not None and now > prev[0]:
            # a restarted node counts from 0 again: its rate is what it did since its start
            delta = pages - prev[1] if pages >= prev[1] else pages
            self._node_rate[name] = delta / (now - prev[0])
        self._node_prev[name] = (now, pages)
        self._fresh[name] = parse_report(stats)

    def tick(self, now: float) -> None:
        if now >= self._next_tick:
            self._next_tick = now + self.interval
            self._sample(now)
        if now >= self._next_log:
            self._next_log = now + self.log_interval
            self._log(now)

    def _sample(self, now: float) -> None:
        d = self.d
        interval, busy, cpu = self._readers["tick"].take(now)
        fresh, self._fresh = self._fresh, {}
        nodes: dict[str, dict[str, Any]] = {}
        for node in d.nodes.values():
            if not node.alive and node.name not in fresh:
                continue
            stats = node.stats
            entry: dict[str, Any] = {
                "alive": node.alive, "pages": stats.get("response_received_count", 0),
                "rate": round(self._node_rate.get(node.name, 0.0), 3) if node.alive else 0.0,
                "leases": len(node.leases),
            }
            for field in NODE_FIELDS:
                entry[field] = stats.get(field, 0)
            report = fresh.get(node.name)
            if report is not None:
                entry["report"] = report
            nodes[node.name] = entry
        fr = d.frontier
        point = {
            "t": round(time.time(), 3), "interval": round(interval, 3),
            "frontier": fr.size, "available": sum(st.avail for st in fr.parts),
            "leases": len(d.leases), "seen": fr.seen_count,
            "nodes_alive": sum(1 for n in d.nodes.values() if n.alive),
            "pages": sum(n["pages"] for n in nodes.values()),
            "rate": round(sum(n["rate"] for n in nodes.values()), 3),
            "busy": round(busy, 4), "cpu": round(cpu, 4),
            "ops": self._windows("tick"), "nodes": nodes,
        }
        self._last = point
        self.series.append(point)
        if self.http is not None:
            state = d.state()
            with self._lock:
                self._state = state

    def _windows(self, reader: str) -> dict[str, dict[str, float]]:
        ops = {}
        for op, sampler in self.samplers.items():
            window = sampler.take_window(reader)
            if window["n"]:
                ops[op] = window
        return ops

    def _log(self, now: float) -> None:
        interval, busy, cpu = self._readers["log"].take(now)
        d = self.d
        record = {"t": round(time.time(), 3), "node": "dispatcher", "interval": round(interval, 3),
                  "busy": round(busy, 4), "cpu": round(cpu, 4), "frontier": d.frontier.size,
                  "leases": len(d.leases), "nodes_alive": sum(1 for n in d.nodes.values() if n.alive),
                  "ops": self._windows("log")}
        logger.info("%s %s", WINDOW_TAG, json.dumps(record, separators=(",", ":")))

    # -- readers (any thread) --------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """For the dispatcher's "state": the last sample's rates, busy share and timings."""
        last = self._last
        return {
            "rate": last.get("rate", 0.0), "busy": last.get("busy", 0.0), "cpu": last.get("cpu", 0.0),
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
        from .http import StatusHTTPServer

        self.http = StatusHTTPServer(self, host, port)
        self.http_url = self.http.start()
        self._sample(time.monotonic())  # a first snapshot before anyone asks
        return self.http_url

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
