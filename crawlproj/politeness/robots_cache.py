"""The robots.txt cache of a node: memory (LRU) over the SQLite store, RFC 9309's cache policy.

A lookup answers from memory after the first touch of an authority; a miss reads one row by
primary key. :meth:`RobotsCache.verdict` says whether a usable copy exists or a fetch is due;
:meth:`RobotsCache.record_fetch` applies a fetch's outcome (rules, allow, or unreachable with
a doubling retry back-off).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.threads import deferToThread

from .lru import LRU
from .robots import DISALLOW, RULES, ParsedRobots, RobotsRow, outcome_of_status, parsed_of_row, truncate_body
from .timing import LatencySampler, StatsLike

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from .config import PolitenessConfig
    from .store import StateStore

logger = logging.getLogger(__name__)

#: Bodies up to this size are parsed on the reactor thread (well under a millisecond);
#: bigger ones in a thread.
PARSE_INLINE_MAX_BYTES = 64 * 1024

# How a cached robots.txt row stands for a lookup (see RobotsCache.verdict).
FRESH = "hit"  # a good copy within the TTL
FALLBACK = "fallback"  # unreachable for longer than ROBOTS_FALLBACK_AFTER: the last good copy
FAILING = "failing"  # unreachable, next retry in the future: disallow all until then
MISSING = "miss"  # never fetched: fetch it
EXPIRED = "expired"  # good copy older than the TTL: fetch it again
RETRY_DUE = "retry"  # unreachable and the retry is due: fetch it again
USABLE = (FRESH, FALLBACK)


@dataclass(slots=True)
class _RobotsCached:
    row: RobotsRow
    parsed: ParsedRobots | None = None  # rules of the row's good copy, parsed on first use


@dataclass(frozen=True)
class RobotsVerdict:
    kind: str  # FRESH, FALLBACK, FAILING, MISSING, EXPIRED, RETRY_DUE
    parsed: ParsedRobots | None = None  # set when kind is FRESH or FALLBACK
    retry_at: float = 0.0  # epoch seconds, when kind is FAILING
    fail_since: float = 0.0  # epoch seconds of the first failure in a row, when kind is FAILING


class RobotsCache:
    def __init__(self, config: PolitenessConfig, store: StateStore, stats: StatsLike | None = None,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.store = store
        self.stats = stats
        self.clock = clock
        self._lru: LRU[str, _RobotsCached] = LRU(config.robots_memory)
        self.parse_ms = LatencySampler("robots/parse_ms")
        self.fetch_ms = LatencySampler("robots/fetch/latency_ms")

    def in_memory(self) -> int:
        """Authorities held in the LRU (at most ROBOTS_CACHE_MEMORY)."""
        return len(self._lru)

    def forget(self, authority: str) -> None:
        self._lru.pop(authority)

    def remember(self, row: RobotsRow) -> None:
        """A row taken from elsewhere (a handoff): parsed again on first use."""
        self._lru.put(row.authority, _RobotsCached(row))

    def cached(self, authority: str) -> _RobotsCached | None:
        cached = self._lru.get(authority)
        if cached is None:
            row = self.store.get_robots(authority)
            if row is None:
                return None
            cached = _RobotsCached(row)
            self._lru.put(authority, cached)
        return cached

    def classify(self, row: RobotsRow | None, now: float) -> tuple[str, float]:
        if row is None:
            return MISSING, 0.0
        if row.failures:
            retry_at = row.next_retry or 0.0
            if retry_at <= now:
                return RETRY_DUE, 0.0
            if row.outcome is not None and now - (row.fail_since or now) >= self.config.fallback_after:
                return FALLBACK, 0.0
            return FAILING, retry_at
        if row.fetched_at is None or now - row.fetched_at > self.config.ttl:
            return EXPIRED, 0.0
        return FRESH, 0.0

    async def verdict(self, authority: str, count: bool = True) -> RobotsVerdict:
        """What the cache says about ``authority`` now; ``count`` adds it to robots/cache/*."""
        cached = self.cached(authority)
        kind, retry_at = self.classify(cached.row if cached else None, self.clock())
        if count and self.stats is not None:
            self.stats.inc_value(f"robots/cache/{kind}")
        if kind not in USABLE:
            since = (cached.row.fail_since or 0.0) if cached is not None and kind == FAILING else 0.0
            return RobotsVerdict(kind, retry_at=retry_at, fail_since=since)
        assert cached is not None
        if cached.parsed is None:
            cached.parsed = await self._parse(cached.row)
        return RobotsVerdict(kind, cached.parsed)

    async def _parse(self, row: RobotsRow) -> ParsedRobots:
        started = time.perf_counter()
        ua, cap = self.config.user_agent, self.config.crawl_delay_max
        if row.outcome == RULES and len(row.body or b"") > PARSE_INLINE_MAX_BYTES:
            d: Deferred[ParsedRobots] = deferToThread(parsed_of_row, row, ua, cap)
            parsed = await maybe_deferred_to_future(d)
        else:
            parsed = parsed_of_row(row, ua, cap)
        self.parse_ms.add((time.perf_counter() - started) * 1000.0)
        return parsed

    async def record_fetch(self, authority: str, key: str, status: int, body: bytes,
                                  error: str | None = None) -> tuple[RobotsRow, ParsedRobots | None]:
        """Store the result of one robots.txt fetch (``status`` of the final hop, 0 and
        ``error`` for a network error): the authority's new row, and its rules when it answered."""
        now = self.clock()
        cached = self.cached(authority)
        row = cached.row if cached is not None else RobotsRow(authority, key)
        row.key = key
        row.checked_at = now
        outcome = DISALLOW if error is not None else outcome_of_status(status)
        stats = self.stats
        if stats is not None:
            stats.inc_value(f"robots/fetch/{'error/' + error if error else 'status/' + str(status)}")
            stats.inc_value(f"robots/outcome/{outcome}")
        parsed = cached.parsed if cached is not None else None
        if outcome == DISALLOW:
            row.failures += 1
            row.fail_since = row.fail_since or now
            backoff = min(self.config.retry_max_delay, self.config.retry_delay * 2 ** min(row.failures - 1, 32))
            row.next_retry = now + backoff
            row.error = error or f"HTTP {status}"
            logger.info("robots.txt of %s unreachable (%s, %d in a row): disallow all, retry in %.1fs",
                        authority, row.error, row.failures, backoff)
        else:
            kept, truncated = truncate_body(body) if outcome == RULES else (b"", False)
            row.fetched_at, row.status, row.outcome = now, status, outcome
            row.body = kept if outcome == RULES else None
            row.failures, row.fail_since, row.next_retry, row.error = 0, None, None, None
            parsed = await self._parse(row)
            if truncated:
                parsed = replace(parsed, notes=("truncated", *parsed.notes))
            if stats is not None:
                for note in parsed.notes:
                    stats.inc_value(f"robots/parse/{note}")
            if parsed.notes:
                logger.info("robots.txt of %s (%d bytes): %s", authority, len(body), ", ".join(parsed.notes))
        self.store.put_robots(row)
        self._lru.put(authority, _RobotsCached(row, parsed))
        return row, parsed
