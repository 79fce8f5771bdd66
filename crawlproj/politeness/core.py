"""Politeness state of one crawler: robots.txt cache, per-key fetch times and delays.

One :class:`Politeness` per crawler (:func:`get_politeness`), shared by the robots/throttle
middleware and the scheduler. Everything here runs on the reactor thread and answers from
memory (bounded LRUs) after the first touch of an authority or key; the SQLite store behind it
is read by primary key and written in batches by its own thread.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from scrapy import signals
from scrapy.utils.asyncio import create_looping_call
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.threads import deferToThread

from crawlproj.nodeid import node_name
from crawlproj.setting_checks import check_setting, float_at_least, int_at_least, positive_float, typed_setting
from crawlproj.wire.urls import politeness_key

from .robots import (
    ALLOW,
    DISALLOW,
    RULES,
    ParsedRobots,
    RobotsRow,
    outcome_of_status,
    parsed_of_row,
    truncate_body,
)
from .store import KeyRow, StateStore
from .timing import LatencySampler, StatsLike

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings
    from twisted.internet.defer import Deferred

logger = logging.getLogger(__name__)

#: Attribute of the crawler that holds its Politeness (the DispatcherScheduler reads it).
CRAWLER_ATTRIBUTE = "_crawlproj_politeness"
#: Hard limit of ROBOTS_CACHE_TTL: RFC 9309 2.4, a cached copy SHOULD NOT be used for more
#: than 24 hours unless robots.txt is unreachable.
MAX_TTL = 24 * 3600.0
#: Bodies up to this size are parsed on the reactor thread (well under a millisecond);
#: bigger ones in a thread.
PARSE_INLINE_MAX_BYTES = 64 * 1024
#: Seconds between updates of the latency percentiles in the crawl stats.
STATS_PUBLISH_INTERVAL = 30.0
STATE_FORMAT_VERSION = 1
KEY_KINDS = ("domain", "host")

# How a cached robots.txt row stands for a lookup (see Politeness.robots_verdict).
FRESH = "hit"  # a good copy within the TTL
FALLBACK = "fallback"  # unreachable for longer than ROBOTS_FALLBACK_AFTER: the last good copy
FAILING = "failing"  # unreachable, next retry in the future: disallow all until then
MISSING = "miss"  # never fetched: fetch it
EXPIRED = "expired"  # good copy older than the TTL: fetch it again
RETRY_DUE = "retry"  # unreachable and the retry is due: fetch it again
USABLE = (FRESH, FALLBACK)

_K = TypeVar("_K")
_V = TypeVar("_V")


class LRU(Generic[_K, _V]):
    """A bounded mapping that forgets the least recently used entry."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._data: OrderedDict[_K, _V] = OrderedDict()

    def get(self, key: _K) -> _V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: _K, value: _V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def pop(self, key: _K) -> None:
        self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)


@dataclass(frozen=True)
class PolitenessConfig:
    """The settings Politeness runs on; defaults and meanings live in crawlproj/settings.py."""

    state_file: str
    key_by: str
    delay: float
    key_delays: dict[str, float]
    crawl_delay_max: float
    adaptive: bool
    adaptive_factor: float
    adaptive_max_delay: float
    ttl: float
    retry_delay: float
    retry_max_delay: float
    fallback_after: float
    robots_memory: int
    keys_memory: int
    flush_interval: float
    user_agent: str

    @classmethod
    def from_settings(cls, settings: BaseSettings, spider: Any = None) -> PolitenessConfig:
        # the scheduler's per-key queues read the same setting: one key for both
        key_by = str(settings.get("POLITENESS_KEY") or "domain")
        check_setting(key_by in KEY_KINDS, "POLITENESS_KEY", key_by, f"one of {KEY_KINDS}")
        raw_delay = settings.get("ROBOTS_THROTTLE_DELAY")
        delay = float_at_least(settings, "DOWNLOAD_DELAY" if raw_delay in (None, "", "None")
                               else "ROBOTS_THROTTLE_DELAY")
        raw_key_delays = typed_setting(settings, "ROBOTS_THROTTLE_KEY_DELAYS", settings.getdict,
                                       "a dict {politeness key: seconds}")
        key_delays: dict[str, float] = {}
        for key, value in raw_key_delays.items():
            try:
                seconds = float(value)
            except (TypeError, ValueError):
                seconds = -1.0
            check_setting(seconds >= 0, "ROBOTS_THROTTLE_KEY_DELAYS", {key: value},
                          "seconds >= 0 for every key")
            key_delays[str(key).lower()] = seconds
        ttl = float(typed_setting(settings, "ROBOTS_CACHE_TTL", settings.getfloat,
                                  f"a number of seconds in (0, {MAX_TTL:.0f}] (RFC 9309: at most 24 hours)",
                                  lambda v: 0 < v <= MAX_TTL))
        retry_delay = positive_float(settings, "ROBOTS_RETRY_DELAY", "seconds > 0")
        retry_max = float_at_least(settings, "ROBOTS_RETRY_MAX_DELAY", retry_delay,
                                   f"seconds >= ROBOTS_RETRY_DELAY ({retry_delay})")
        factor = positive_float(settings, "ROBOTS_THROTTLE_ADAPTIVE_FACTOR")
        flush = positive_float(settings, "ROBOTS_STORE_FLUSH_INTERVAL", "seconds > 0")
        user_agent = settings.get("ROBOTSTXT_USER_AGENT") or settings.get("USER_AGENT") or "*"
        state_file = state_file_of(settings, spider)
        source = "ROBOTS_STATE_FILE" if str(settings.get("ROBOTS_STATE_FILE") or "").strip() else "CRAWLPROJ_STATE_DIR"
        try:
            os.makedirs(os.path.dirname(os.path.abspath(state_file)), exist_ok=True)
        except OSError as exc:
            raise ValueError(f"{source}: expected a place where the state file {state_file!r} can be created, "
                             f"got {settings.get(source)!r} ({exc.strerror})") from None
        return cls(
            state_file=state_file,
            key_by=key_by,
            delay=delay,
            key_delays=key_delays,
            crawl_delay_max=float_at_least(settings, "ROBOTS_CRAWL_DELAY_MAX"),
            adaptive=typed_setting(settings, "ROBOTS_THROTTLE_ADAPTIVE", settings.getbool, "a boolean"),
            adaptive_factor=factor,
            adaptive_max_delay=float_at_least(settings, "ROBOTS_THROTTLE_ADAPTIVE_MAX_DELAY"),
            ttl=ttl,
            retry_delay=retry_delay,
            retry_max_delay=retry_max,
            fallback_after=float_at_least(settings, "ROBOTS_FALLBACK_AFTER"),
            robots_memory=int_at_least(settings, "ROBOTS_CACHE_MEMORY", 1),
            keys_memory=int_at_least(settings, "ROBOTS_THROTTLE_MEMORY", 1),
            flush_interval=flush,
            user_agent=str(user_agent),
        )


def state_file_of(settings: BaseSettings, spider: Any = None) -> str:
    """``ROBOTS_STATE_FILE``, or ``<CRAWLPROJ_STATE_DIR>/<node name>/politeness.sqlite3``."""
    explicit = str(settings.get("ROBOTS_STATE_FILE") or "").strip()
    if explicit:
        return explicit
    state_dir = str(settings.get("CRAWLPROJ_STATE_DIR") or "state")
    name = node_name(settings, spider)
    return os.path.join(state_dir, name, "politeness.sqlite3")


@dataclass(slots=True)
class _KeyState:
    row: KeyRow
    adaptive: float = 0.0  # observed-latency delay; not persisted, it is relearnt in seconds


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


class Politeness:
    def __init__(self, config: PolitenessConfig, stats: StatsLike | None = None,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.stats = stats
        self.clock = clock
        self.store = StateStore(config.state_file, config.flush_interval)
        self._robots: LRU[str, _RobotsCached] = LRU(config.robots_memory)
        self._keys: LRU[str, _KeyState] = LRU(config.keys_memory)
        self.parse_ms = LatencySampler("robots/parse_ms")
        self.fetch_ms = LatencySampler("robots/fetch/latency_ms")
        self._publisher: Any = None
        self._closed = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Politeness:
        pol = cls(PolitenessConfig.from_settings(crawler.settings, crawler.spider), crawler.stats)
        crawler.signals.connect(pol._spider_opened, signal=signals.spider_opened)
        # spider_idle: the figures are in the stats before spider_closed handlers read them
        crawler.signals.connect(pol.publish_stats, signal=signals.spider_idle)
        crawler.signals.connect(pol.publish_stats, signal=signals.spider_closed)
        crawler.signals.connect(pol._engine_stopped, signal=signals.engine_stopped)
        logger.info("Politeness state in %s (delay %.2fs per %s, robots TTL %.0fs)",
                    pol.config.state_file, pol.config.delay, pol.config.key_by, pol.config.ttl)
        return pol

    # -- politeness keys ------------------------------------------------------------------------

    def key_of(self, url: str) -> str:
        return politeness_key(url, self.config.key_by)

    def _key_state(self, key: str) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            row = self.store.get_key(key) or KeyRow(key)
            state = _KeyState(row)
            self._keys.put(key, state)
        return state

    def delay_for(self, key: str) -> float:
        """Seconds between fetches on ``key``: the largest of the configured delay (or the
        key's override), its robots.txt Crawl-delay (capped) and the adaptive delay."""
        state = self._key_state(key)
        configured = self.config.key_delays.get(key, self.config.delay)
        crawl_delay = min(max(state.row.crawl_delays.values(), default=0.0), self.config.crawl_delay_max)
        return max(configured, crawl_delay, state.adaptive)

    def last_fetch(self, key: str) -> float:
        """Epoch seconds of the last activity on ``key`` (a fetch start or end), 0 if none."""
        row = self._key_state(key).row
        return max(row.last_start, row.last_done)

    def next_allowed(self, key: str) -> float:
        """Epoch seconds from which the next fetch on ``key`` may start (0: any time)."""
        last = self.last_fetch(key)
        return last + self.delay_for(key) if last else 0.0

    def record_fetch_start(self, key: str, t: float) -> None:
        row = self._key_state(key).row
        if t > row.last_start:
            row.last_start = t
            self.store.put_key(row)

    def record_fetch_done(self, key: str, t: float) -> None:
        row = self._key_state(key).row
        if t > row.last_done:
            row.last_done = t
            self.store.put_key(row)

    def observe_latency(self, key: str, latency: float, status: int) -> None:
        """AutoThrottle's policy, per key: move towards latency x factor, never below it."""
        if not self.config.adaptive:
            return
        state = self._key_state(key)
        target = latency * self.config.adaptive_factor
        new = min(max(target, (state.adaptive + target) / 2.0), self.config.adaptive_max_delay)
        # error pages are small and fast: do not let them lower the delay
        if status != 200 and new <= state.adaptive:
            return
        state.adaptive = new

    def _set_crawl_delay(self, key: str, authority: str, delay: float | None) -> None:
        row = self._key_state(key).row
        if delay is None or delay <= 0:
            if row.crawl_delays.pop(authority, None) is None:
                return
        elif row.crawl_delays.get(authority) == delay:
            return
        else:
            row.crawl_delays[authority] = delay
        self.store.put_key(row)

    # -- robots.txt -----------------------------------------------------------------------------

    def _robots_cached(self, authority: str) -> _RobotsCached | None:
        cached = self._robots.get(authority)
        if cached is None:
            row = self.store.get_robots(authority)
            if row is None:
                return None
            cached = _RobotsCached(row)
            self._robots.put(authority, cached)
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

    async def robots_verdict(self, authority: str, count: bool = True) -> RobotsVerdict:
        """What the cache says about ``authority`` now; ``count`` adds it to robots/cache/*."""
        cached = self._robots_cached(authority)
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

    async def record_robots_fetch(self, authority: str, key: str, status: int, body: bytes,
                                  error: str | None = None) -> RobotsRow:
        """Store the result of one robots.txt fetch (``status`` of the final hop, 0 and
        ``error`` for a network error) and return the authority's new row."""
        now = self.clock()
        cached = self._robots_cached(authority)
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
            self._set_crawl_delay(key, authority, parsed.crawl_delay)
        self.store.put_robots(row)
        self._robots.put(authority, _RobotsCached(row, parsed))
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
            row = self._key_state(incoming.key).row
            row.last_start = max(row.last_start, incoming.last_start)
            row.last_done = max(row.last_done, incoming.last_done)
            row.crawl_delays.update(incoming.crawl_delays)
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
            current = self._robots_cached(incoming_r.authority)
            if current is not None and current.row.checked_at >= incoming_r.checked_at:
                continue
            self._robots.pop(incoming_r.authority)  # parsed again on first use
            robots_rows.append(incoming_r)
            taken["robots"] += 1
        self.store.put_many(robots_rows, key_rows)
        for r in robots_rows:
            self._robots.put(r.authority, _RobotsCached(r))
        return taken

    def _invalid_import(self, what: str, raw: Any, exc: Exception, taken: dict[str, int]) -> None:
        taken["invalid"] += 1
        if self.stats is not None:
            self.stats.inc_value("politeness/import/invalid")
        logger.warning("import_state: skipping a %s row that does not decode (%s): %.200r", what, exc, raw)

    # -- lifecycle and stats --------------------------------------------------------------------

    def samplers(self) -> dict[str, LatencySampler]:
        """The timed operations of robots.txt and politeness, by operation name."""
        return {"robots_lookup": self.store.lookup_ms, "robots_store_write": self.store.write_ms,
                "robots_parse": self.parse_ms, "robots_fetch": self.fetch_ms}

    def publish_stats(self) -> None:
        if self.stats is None:
            return
        for sampler in self.samplers().values():
            sampler.publish(self.stats)
        self.stats.set_value("robots/store/rows_written", self.store.rows_written)
        self.stats.set_value("robots/store/write_errors", self.store.write_errors)

    def _spider_opened(self) -> None:
        self._publisher = create_looping_call(self.publish_stats)
        self._publisher.start(STATS_PUBLISH_INTERVAL, now=False)

    def _engine_stopped(self) -> Deferred[None]:
        if self._publisher is not None and self._publisher.running:
            self._publisher.stop()
        return deferToThread(self.close)

    def close(self) -> None:
        """Write what is pending and close the state file (blocks until written)."""
        if not self._closed:
            self._closed = True
            self.store.close()


def throttle_enabled(settings: BaseSettings) -> bool:
    """ROBOTS_THROTTLE_ENABLED: robots.txt and politeness by RobotsThrottleMiddleware."""
    return bool(typed_setting(settings, "ROBOTS_THROTTLE_ENABLED", settings.getbool, "a boolean"))


def get_politeness(crawler: Crawler) -> Politeness:
    """The crawler's one Politeness, built from its settings on first use."""
    pol: Politeness | None = getattr(crawler, CRAWLER_ATTRIBUTE, None)
    if pol is None:
        pol = Politeness.from_crawler(crawler)
        setattr(crawler, CRAWLER_ATTRIBUTE, pol)
    return pol
