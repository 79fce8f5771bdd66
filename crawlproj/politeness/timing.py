"""Latency percentiles of one operation, kept in bounded memory for crawls that run for days.

The one place for timing code: every component that times an operation records it in a
:class:`LatencySampler`. Besides the whole-crawl reservoir (``summary``, ``publish``), a sampler
keeps *windows* for its readers (``take_window(reader)``: what happened since that reader's
last look, e.g. the last log interval or the last report to the dispatcher), and may pass each
duration to a ``sink`` (the sampled timing log of :mod:`crawlproj.observability.timings`).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Protocol

#: Samples kept per operation. Reservoir sampling keeps a uniform sample of everything seen, so
#: percentiles describe the whole crawl while memory stays fixed.
RESERVOIR_SIZE = 4096
#: Samples kept per window and reader: a window is short (seconds to a minute).
WINDOW_SIZE = 1024
PERCENTILES = (50, 90, 99)
QUANTILES = tuple(f"p{p}" for p in PERCENTILES)  # their names in summaries: "p50", "p90", "p99"


class StatsLike(Protocol):
    """The part of Scrapy's StatsCollector used here."""

    def set_value(self, key: str, value: object) -> None: ...

    def inc_value(self, key: str, count: int = 1, start: int = 0) -> None: ...


def percentiles(ordered: list[float]) -> dict[str, float]:
    """``{"p50", "p90", "p99"}`` of an ascending, non-empty list (nearest rank)."""
    result: dict[str, float] = {}
    for p in PERCENTILES:
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        result[f"p{p}"] = round(ordered[index], 3)
    return result


class _Window:
    """Durations since a reader's last look: count, sum, max and a reservoir for percentiles."""

    __slots__ = ("count", "total", "max_ms", "samples", "rng")

    def __init__(self, seed: str):
        self.count = 0
        self.total = 0.0
        self.max_ms = 0.0
        self.samples: list[float] = []
        self.rng = random.Random(seed)

    def add(self, ms: float) -> None:
        self.count += 1
        self.total += ms
        if ms > self.max_ms:
            self.max_ms = ms
        if len(self.samples) < WINDOW_SIZE:
            self.samples.append(ms)
        else:
            slot = self.rng.randrange(self.count)
            if slot < WINDOW_SIZE:
                self.samples[slot] = ms


class LatencySampler:
    """Durations in milliseconds: count, max and percentiles of a uniform sample.

    ``add`` may be called from any thread (the store's writer thread records its batch times).
    """

    def __init__(self, name: str, size: int = RESERVOIR_SIZE):
        self.name = name
        self.size = size
        self.count = 0
        self.max_ms = 0.0
        self._samples: list[float] = []
        # seeded by name: the same sequence of durations gives the same figures
        self._rng = random.Random(f"latency:{name}")
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        #: Called with each duration after it is recorded (outside the lock), when set.
        self.sink: Callable[[float], None] | None = None

    def add(self, ms: float) -> None:
        with self._lock:
            self.count += 1
            if ms > self.max_ms:
                self.max_ms = ms
            if len(self._samples) < self.size:
                self._samples.append(ms)
            else:
                slot = self._rng.randrange(self.count)
                if slot < self.size:
                    self._samples[slot] = ms
            for window in self._windows.values():
                window.add(ms)
        sink = self.sink
        if sink is not None:
            sink(ms)

    def summary(self) -> dict[str, float]:
        """``{"count", "max", "p50", "p90", "p99"}``; empty dict before the first sample."""
        with self._lock:
            if not self._samples:
                return {}
            ordered = sorted(self._samples)
            count, max_ms = self.count, self.max_ms
        result: dict[str, float] = {"count": count, "max": round(max_ms, 3)}
        result.update(percentiles(ordered))
        return result

    def publish(self, stats: StatsLike) -> None:
        """Set ``<name>/count``, ``<name>/max``, ``<name>/p50``... in a Scrapy stats collector."""
        for field, value in self.summary().items():
            stats.set_value(f"{self.name}/{field}", value)

    def take_window(self, reader: str) -> dict[str, float]:
        """What was recorded since ``reader`` last asked: ``{"n", "sum", "max", "p50", "p90",
        "p99"}`` (milliseconds; ``n`` = 0 and no percentiles when nothing was). The first call
        of a reader opens its window and reports nothing."""
        with self._lock:
            window = self._windows.get(reader)
            self._windows[reader] = _Window(f"window:{self.name}:{reader}")
        if window is None or not window.count:
            return {"n": 0}
        result: dict[str, float] = {"n": window.count, "sum": round(window.total, 3),
                                    "max": round(window.max_ms, 3)}
        result.update(percentiles(sorted(window.samples)))
        return result
