"""Per-key politeness state of a node: delays, last fetch times, robots.txt rules, handoff.

:class:`Politeness` keeps wall-clock times, as they are persisted in the node's SQLite file and
handed over between nodes; the process itself runs on the monotonic clock of
:class:`crawlproj.politeness.gate.PolitenessGate`, which owns one Politeness. Everything here
runs on the reactor thread and answers from memory (bounded LRUs) after the first touch of an
authority or key; the SQLite store behind it is read by primary key and written in batches by
its own thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crawlproj.setting_checks import check_setting
from crawlproj.wire.urls import politeness_key

from .config import PolitenessConfig
from .lru import LRU
from .robots import ALLOW, RULES, RobotsRow
from .robots_cache import RobotsCache, RobotsVerdict
from .store import KeyRow, StateStore
from .timing import LatencySampler, StatsLike

logger = logging.getLogger(__name__)

STATE_FORMAT_VERSION = 1


@dataclass(slots=True)
class KeyState:
    """One politeness key in memory: its stored row and what this process adds to it."""

    row: KeyRow
    adaptive: float = 0.0  # observed-latency delay; not persisted, it is relearnt in seconds
    last_monotonic: float = 0.0  # the row's last activity on this process's monotonic clock
    after_robots: bool = False  # that activity was a robots.txt fetch


class Politeness:
    def __init__(self, config: PolitenessConfig, stats: StatsLike | None = None,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.stats = stats
        self.clock = clock
        self.store = StateStore(config.state_file, config.flush_interval)
        self.robots = RobotsCache(config, self.store, stats, clock)
        self._keys: LRU[str, KeyState] = LRU(config.keys_memory)
        self._closed = False

    # -- politeness keys ------------------------------------------------------------------------

    def key_of(self, url: str) -> str:
        return politeness_key(url, self.config.key_by)

    def key_state(self, key: str) -> KeyState:
        """The key's state in memory, read from the state file on first touch (LRU-bounded)."""
        state = self._keys.get(key)
        if state is None:
            row = self.store.get_key(key) or KeyRow(key)
            state = KeyState(row, last_monotonic=self.to_monotonic(max(row.last_start, row.last_done)))
            self._keys.put(key, state)
        return state

    def delay_for(self, key: str) -> float:
        """Seconds between fetches on ``key``: the largest of the configured delay (or the
        key's override), its robots.txt Crawl-delay (capped) and the adaptive delay."""
        state = self.key_state(key)
        configured = self.config.key_delays.get(key, self.config.delay)
        crawl_delay = min(max(state.row.crawl_delays.values(), default=0.0), self.config.crawl_delay_max)
        return max(configured, crawl_delay, state.adaptive)

    def last_fetch(self, key: str) -> float:
        """Epoch seconds of the last activity on ``key`` (a fetch start or end), 0 if none."""
        row = self.key_state(key).row
        return max(row.last_start, row.last_done)

    def next_allowed(self, key: str) -> float:
        """Epoch seconds from which the next fetch on ``key`` may start (0: any time)."""
        last = self.last_fetch(key)
        return last + self.delay_for(key) if last else 0.0

    def to_monotonic(self, wall: float) -> float:
        """A wall-clock time of the state file on this process's monotonic clock (0 stays 0)."""
        return time.monotonic() - (self.clock() - wall) if wall else 0.0

    def to_wall(self, t: float) -> float:
        """A time of this process's monotonic clock as the state file keeps it (wall clock)."""
        return self.clock() - (time.monotonic() - t)

    def record_fetch_start(self, key: str, t: float) -> None:
        state = self.key_state(key)
        row = state.row
        if t > row.last_start:
            row.last_start = t
            state.last_monotonic = max(state.last_monotonic, self.to_monotonic(t))
            self.store.put_key(row)

    def record_fetch_done(self, key: str, t: float) -> None:
        state = self.key_state(key)
        row = state.row
        if t > row.last_done:
            row.last_done = t
            state.last_monotonic = max(state.last_monotonic, self.to_monotonic(t))
            self.store.put_key(row)

    def observe_latency(self, key: str, latency: float, status: int) -> None:
        """AutoThrottle's policy, per key: move towards latency x factor, never below it."""
        if not self.config.adaptive:
            return
        state = self.key_state(key)
        target = latency * self.config.adaptive_factor
        new = min(max(target, (state.adaptive + target) / 2.0), self.config.adaptive_max_delay)
        # error pages are small and fast: do not let them lower the delay
        if status != 200 and new <= state.adaptive:
            return
        state.adaptive = new

    def _set_crawl_delay(self, key: str, authority: str, delay: float | None) -> None:
        row = self.key_state(key).row
        if delay is None or delay <= 0:
            if row.crawl_delays.pop(authority, None) is None:
                return
        elif row.crawl_delays.get(authority) == delay:
            return
        else:
            row.crawl_delays[authority] = delay
        self.store.put_key(row)

    # -- robots.txt -----------------------------------------------------------------------------

    async def robots_verdict(self, authority: str, count: bool = True) -> RobotsVerdict:
        """What the cache says about ``authority`` now; ``count`` adds it to robots/cache/*."""
        return await self.robots.verdict(authority, count)

    async def record_robots_fetch(self, authority: str, key: str, status: int, body: bytes,
                                  error: str | None = None) -> RobotsRow:
        """Store one robots.txt fetch's result; its Crawl-delay becomes the key's."""
        row, parsed = await self.robots.record_fetch(authority, key, status, body, error)
        if parsed is not None:
            self._set_crawl_delay(key, authority, parsed.crawl_delay)
        return row

    # -- handoff between nodes ------------------------------------------------------------------

    def export_partitions(self, partitions: set[int], total_partitions: int) -> dict[str, Any]:
        """Last fetch times and robots.txt rows of the keys in ``partitions``, msgpack-safe.

        Scans the state file (a handoff is rare; the partition of a key depends on the total).
        """
        check_setting(total_partitions >= 1, "total_partitions", total_partitions, "an integer >= 1")
        robots, keys = self.store.scan_partitions(set(partitions), total_partitions)
        return {
            "version": STATE_FORMAT_VERSION,
            "total_partitions": total_partitions,
            "partitions": sorted(partitions),
            "exported_at": self.clock(),
            "keys": [k.to_dict() for k in keys],
            "robots": [r.to_dict() for r in robots],
        }

    def import_state(self, state: dict[str, Any]) -> dict[str, int]:
        """Merge another node's export: later fetch times and newer robots.txt rows win.

        A row that does not decode is counted (``politeness/import/invalid``), logged and
        skipped. Returns the counts of keys and robots rows taken and rows skipped.
        """
        version = state.get("version") if isinstance(state, dict) else None
        if version != STATE_FORMAT_VERSION:
            raise ValueError(f"import_state: expected state version {STATE_FORMAT_VERSION}, got {version!r}")
        taken = {"keys": 0, "robots": 0, "invalid": 0}
        robots_rows: list[RobotsRow] = []
        key_rows: list[KeyRow] = []
        for raw in state.get("keys") or ():
            try:
                incoming = KeyRow.from_dict(raw)
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                self._invalid_import("key", raw, exc, taken)
                continue
            key_state = self.key_state(incoming.key)
            row = key_state.row
            row.last_start = max(row.last_start, incoming.last_start)
            row.last_done = max(row.last_done, incoming.last_done)
            row.crawl_delays.update(incoming.crawl_delays)
            key_state.last_monotonic = max(key_state.last_monotonic,
                                           self.to_monotonic(max(row.last_start, row.last_done)))
            key_rows.append(row)
            taken["keys"] += 1
        for raw in state.get("robots") or ():
            try:
                incoming_r = RobotsRow.from_dict(raw)
                if incoming_r.outcome not in (None, RULES, ALLOW):
                    raise ValueError(f"unknown outcome {incoming_r.outcome!r}")
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                self._invalid_import("robots", raw, exc, taken)
                continue
            current = self.robots.cached(incoming_r.authority)
            if current is not None and current.row.checked_at >= incoming_r.checked_at:
                continue
            self.robots.forget(incoming_r.authority)  # parsed again on first use
            robots_rows.append(incoming_r)
            taken["robots"] += 1
        self.store.put_many(robots_rows, key_rows)
        for r in robots_rows:
            self.robots.remember(r)
        return taken

    def _invalid_import(self, what: str, raw: Any, exc: Exception, taken: dict[str, int]) -> None:
        taken["invalid"] += 1
        if self.stats is not None:
            self.stats.inc_value("politeness/import/invalid")
        logger.warning("import_state: skipping a %s row that does not decode (%s): %.200r", what, exc, raw)

    # -- lifecycle and stats --------------------------------------------------------------------

    def sizes(self) -> dict[str, int]:
        """Entries of the per-key and per-authority maps in memory (docs/bounds.md)."""
        return {"keys": len(self._keys), "robots": self.robots.in_memory(), "store_pending": self.store.pending_rows()}

    def samplers(self) -> dict[str, LatencySampler]:
        """The timed operations of robots.txt and politeness, by operation name."""
        return {"robots_lookup": self.store.lookup_ms, "robots_store_write": self.store.write_ms,
                "robots_parse": self.robots.parse_ms, "robots_fetch": self.robots.fetch_ms}

    def publish_stats(self) -> None:
        if self.stats is None:
            return
        for sampler in self.samplers().values():
            sampler.publish(self.stats)
        self.stats.set_value("robots/store/rows_written", self.store.rows_written)
        self.stats.set_value("robots/store/write_errors", self.store.write_errors)

    def close(self) -> None:
        """Write what is pending and close the state file (blocks until written)."""
        if not self._closed:
            self._closed = True
            self.store.close()
