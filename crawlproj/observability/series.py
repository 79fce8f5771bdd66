"""A bounded time series that covers a whole crawl: when full, it keeps every other point and
from then on records one tick of two (then four...), so memory stays fixed while a crawl of
days is still covered from its start, at a resolution that coarsens with its length."""

from __future__ import annotations

import threading
from typing import Any

DEFAULT_MAX_POINTS = 3600


class Series:
    """Points (maps with a wall-clock ``"t"``) appended by one thread, read by others."""

    def __init__(self, max_points: int = DEFAULT_MAX_POINTS):
        if max_points < 2:
            raise ValueError(f"max_points: expected an integer >= 2, got {max_points!r}")
        self.max_points = max_points
        self.stride = 1  # one tick of every `stride` is kept
        self._ticks = 0
        self._points: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def append(self, point: dict[str, Any]) -> bool:
        """Record ``point`` unless this tick falls between two kept ones; True if kept."""
        self._ticks += 1
        if (self._ticks - 1) % self.stride:
            return False
        with self._lock:
            self._points.append(point)
            if len(self._points) > self.max_points:
                self._points = self._points[::2]
                self.stride *= 2
        return True

    def since(self, t: float = 0.0, limit: int | None = None) -> list[dict[str, Any]]:
        """Points newer than ``t`` (wall clock), oldest first; the last ``limit`` of them."""
        with self._lock:
            points = self._points
            if t > 0:
                points = [p for p in points if p["t"] > t]
            else:
                points = list(points)
        if limit is not None and limit >= 0:
            points = points[-limit:] if limit else []
        return points

    def last(self) -> dict[str, Any] | None:
        with self._lock:
            return self._points[-1] if self._points else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._points)
