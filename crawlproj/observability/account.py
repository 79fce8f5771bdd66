"""Where a node's time goes: the clocks and probes behind the time account of a window.

A window's account (a TIMINGS record's ``"account"``, a node report's ``acct/*`` figures):

- ``slots``: the downloader's ``CONCURRENT_REQUESTS`` slots, as shares of slot time (Little's
  law on the probe's counts): ``download`` (a transfer in a downloader slot), ``robots`` (in the
  downloader middlewares: waiting for robots.txt), ``delay`` (queued in a slot, or the slot
  empty while the scheduler holds requests whose keys wait out their delay), ``held`` (empty
  while the scheduler holds requests ready to go: the engine backs out, its scraper or an item
  store brake is full), ``nowork`` (empty, the scheduler holding nothing).
- ``reactor``: the reactor thread's ``cpu`` (running), ``starved`` (runnable, waiting for a
  CPU: Linux schedstat), ``idle`` (the rest: waiting for I/O or timers) and ``callbacks`` (spider
  callbacks' share of the wall clock); ``lag_ms``: the probe's mean lateness.
- ``machine``: ``pressure`` (share of time some task waited for a CPU, ``/proc/pressure/cpu``),
  ``load`` (1-minute load average) and ``cores``.
- ``backlog``: the item store's backlog when one reports it (``mongo/*`` stats): ``items``
  buffered and ``items_max`` (the buffer's size), ``spill_bytes`` and ``spill_max`` (the
  budget), ``oldest_s`` (age of the oldest).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any

SLOT_STATES = ("download", "robots", "delay", "held", "nowork")
PROBE_INTERVAL = 0.1  # seconds between two probes of the downloader and the scheduler
#: stats of the item store's backlog (crawlproj.pipelines.mongo) -> account names
BACKLOG_STATS = {"mongo/buffer/items": "items", "mongo/spill/backlog_bytes": "spill_bytes",
                 "mongo/buffer/oldest_age": "oldest_s"}
_SCHEDSTAT = "/proc/thread-self/schedstat"
_PRESSURE = "/proc/pressure/cpu"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except OSError:
        return None


def thread_times() -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable waiting for one) of the calling thread, or None."""
    text = _read(_SCHEDSTAT)
    if not text:
        return None
    run, wait, *_ = text.split()
    return int(run) / 1e9, int(wait) / 1e9


def cpu_pressure() -> float | None:
    """Seconds (cumulative) during which some task waited for a CPU on this machine, or None."""
    text = _read(_PRESSURE)
    if not text:
        return None
    for line in text.splitlines():
        if line.startswith("some "):
            total = line.rsplit("total=", 1)[-1]
            return int(total) / 1e6
    return None


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


class Clocks:
    """A reader's last look at the clocks (read on the reactor thread)."""

    __slots__ = ("wall", "thread", "pressure")

    def __init__(self) -> None:
        self.wall = time.monotonic()
        self.thread = thread_times()
        self.pressure = cpu_pressure()

    def since(self, then: Clocks, callbacks_ms: float) -> tuple[dict[str, float], dict[str, Any]]:
        """(reactor, machine) shares of the wall clock between ``then`` and this look."""
        interval = max(self.wall - then.wall, 1e-9)
        reactor: dict[str, float] = {"callbacks": round(min(1.0, callbacks_ms / 1000.0 / interval), 4)}
        if self.thread is not None and then.thread is not None:
            cpu = min(1.0, (self.thread[0] - then.thread[0]) / interval)
            starved = min(1.0 - cpu, (self.thread[1] - then.thread[1]) / interval)
            reactor.update(cpu=round(cpu, 4), starved=round(starved, 4),
                           idle=round(max(0.0, 1.0 - cpu - starved), 4))
        machine: dict[str, Any] = {"cores": os.cpu_count() or 1, "load": _load()}
        if self.pressure is not None and then.pressure is not None:
            machine["pressure"] = round(min(1.0, (self.pressure - then.pressure) / interval), 4)
        return reactor, machine


class SlotAccount:
    """Probe counts of the download slots, per reader (each window takes and resets its own)."""

    def __init__(self) -> None:
        self._counts: dict[str, Counter[str]] = {}

    def open(self, reader: str) -> None:
        self._counts.setdefault(reader, Counter())

    def probe(self, capacity: int, download: int, robots: int, queued: int, waiting: bool,
              ready: bool, lag: float) -> None:
        """One look: ``download`` transfers, ``robots`` requests in the middlewares, ``queued`` in
        slot queues, of ``capacity`` slots; ``waiting``: the scheduler holds requests, ``ready``:
        some of them may start now."""
        capacity = max(1, capacity)
        download = min(download, capacity)
        robots = min(robots, capacity - download)
        queued = min(queued, capacity - download - robots)
        empty = capacity - download - robots - queued
        for counts in self._counts.values():
            counts["probes"] += 1
            counts["capacity"] += capacity
            counts["download"] += download
            counts["robots"] += robots
            counts["delay"] += queued + (empty if waiting and not ready else 0)
            counts["held"] += empty if waiting and ready else 0
            counts["nowork"] += 0 if waiting else empty
            counts["lag"] += lag

    def take(self, reader: str) -> tuple[dict[str, float], float | None]:
        """(slot shares, mean probe lateness in ms) since ``reader``'s last take."""
        counts = self._counts.get(reader)
        if counts is None:
            return {}, None
        self._counts[reader] = Counter()
        capacity = counts["capacity"]
        if not capacity:
            return {}, None
        shares = {state: round(counts[state] / capacity, 4) for state in SLOT_STATES}
        shares["capacity"] = round(capacity / counts["probes"], 1)
        return shares, round(1000.0 * counts["lag"] / counts["probes"], 2)


def backlog_of(stats: Any, budgets: dict[str, int]) -> dict[str, float]:
    """The item store's backlog from the crawl stats (empty without such a store), with its
    ``budgets`` (``items_max``, ``spill_max``)."""
    backlog: dict[str, float] = {}
    for stat, name in BACKLOG_STATS.items():
        value = stats.get_value(stat)
        if isinstance(value, (int, float)):
            backlog[name] = round(float(value), 3)
    if backlog:
        backlog.update({name: float(value) for name, value in budgets.items() if value})
    return backlog


ROBOTS_FETCH_STATUS = "robots/fetch/status/"  # RobotsThrottleMiddleware: robots.txt fetches by status


def robots_fetches(stats: Any) -> int:
    """robots.txt fetches among a stats dict's responses (``response_received_count`` counts them)."""
    return int(sum(v for k, v in stats.items() if isinstance(k, str) and k.startswith(ROBOTS_FETCH_STATUS)
                   and isinstance(v, (int, float))))


def flatten(account: dict[str, Any], prefix: str = "acct") -> dict[str, float]:
    """``{"slots": {"download": 0.1}}`` -> ``{"acct/slots/download": 0.1}`` (numbers only)."""
    flat: dict[str, float] = {}
    for part, figures in account.items():
        for name, value in (figures or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[f"{prefix}/{part}/{name}"] = value
    return flat


def unflatten(stats: dict[str, Any], prefix: str = "acct") -> dict[str, dict[str, float]]:
    account: dict[str, dict[str, float]] = {}
    start = prefix + "/"
    for name, value in stats.items():
        if isinstance(name, str) and name.startswith(start) and isinstance(value, (int, float)):
            part, _, field = name[len(start):].partition("/")
            if field:
                account.setdefault(part, {})[field] = value
    return account


def mean_account(records: list[tuple[float, dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """The accounts of several windows (``(seconds, account)``) as one: each figure's mean
    weighted by the seconds of the windows that have it."""
    sums: dict[tuple[str, str], list[float]] = {}
    for seconds, account in records:
        weight = max(float(seconds or 0.0), 1e-9)
        for part, figures in (account or {}).items():
            for name, value in (figures or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    acc = sums.setdefault((part, name), [0.0, 0.0])
                    acc[0] += weight * value
                    acc[1] += weight
    result: dict[str, dict[str, float]] = {}
    for (part, name), (total, weight) in sums.items():
        result.setdefault(part, {})[name] = round(total / weight, 4)
    return result
