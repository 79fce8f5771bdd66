"""Latency percentiles of one operation, kept in bounded memory for crawls that run for days."""

from __future__ import annotations

import random
import threading
from typing import Protocol

#: Samples kept per operation. Reservoir sampling keeps a uniform sample of everything seen, so
#: percentiles describe the whole crawl while memory stays fixed.
RESERVOIR_SIZE = 4096
PERCENTILES = (50, 90, 99)


class StatsLike(Protocol):
    """The part of Scrapy's StatsCollector used here."""

    def set_value(self, key: str, value: object) -> None: ...

    def inc_value(self, key: str, count: int = 1, start: int = 0) -> None: ...


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

    def summary(self) -> dict[str, float]:
        """``{"count", "max", "p50", "p90", "p99"}``; empty dict before the first sample."""
        with self._lock:
            if not self._samples:
                return {}
            ordered = sorted(self._samples)
            count, max_ms = self.count, self.max_ms
        result: dict[str, float] = {"count": count, "max": round(max_ms, 3)}
        for p in PERCENTILES:
            index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
            result[f"p{p}"] = round(ordered[index], 3)
        return result

    def publish(self, stats: StatsLike) -> None:
        """Set ``<name>/count``, ``<name>/max``, ``<name>/p50``... in a Scrapy stats collector."""
        for field, value in self.summary().items():
            stats.set_value(f"{self.name}/{field}", value)
