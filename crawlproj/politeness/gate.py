"""The one politeness gate of a node: a request's key, and when a fetch on that key may start.

    gate = crawler.get_extension(PolitenessGate)
    key = gate.key_of(request)          # computed once, kept in request.meta[crawlproj.meta.KEY]
    gate.may_start(key, monotonic())    # the DispatcherScheduler hands Scrapy only such requests
    gate.started(key, t); gate.ended(key, t)   # RobotsThrottleMiddleware, from the downloader

One clock: ``time.monotonic()`` inside the process; wall time only where state is persisted or
handed over (:class:`crawlproj.politeness.core.Politeness`). A key's next fetch may start
``delay_for(key)`` after the end (answer or failure) of its previous one, so the delay holds as
the server sees it, and one fetch at a time is in flight per key. The downloader slot of a key
is configured from the same numbers. The gate lets a request go ``HANDOFF_LEAD`` before its
key's time, the few milliseconds it takes through the engine and the downloader middlewares,
and the slot keeps the exact delay: a request the gate let through waits in its slot at most
that long, never for the delay, except once after a robots.txt fetch (that fetch counts against
the key's politeness too).

When a fetch ends, the gate sends :data:`fetch_ended` (a Scrapy signal) with the request, its
key and the monotonic time from which the key may be fetched again.

Under the DispatcherScheduler a node owns its keys only while its fence holds
(docs/protocol.md, "Fenced ownership"): ``fence_until`` is the monotonic time after which no
fetch may start (the scheduler moves it with every answered heartbeat; without a dispatcher it
stays infinite). ``fence_holds(monotonic())`` is read at every check, so a process that was
paused wakes up with the fence passed. A request that may not start now ends its way through
the downloader with :class:`Postponed`: the scheduler gives its lease back, acked it is not.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from scrapy import Request, signals
from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.utils.asyncio import create_looping_call
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.httpobj import urlparse_cached
from twisted.internet.threads import deferToThread

from crawlproj.meta import DOWNLOAD_SLOT, KEY

from .config import PolitenessConfig, state_file_source, throttle_enabled
from .core import Politeness
from .store import StoreError

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings
    from twisted.internet.defer import Deferred

logger = logging.getLogger(__name__)

#: Signal: a fetch on a key ended. Arguments: request, key, ready_at (monotonic seconds).
fetch_ended = object()

#: Seconds by which a request is handed to Scrapy before its key's time: about what the engine
#: and the downloader middlewares take to bring it to its slot (measured on a politeness-bound
#: crawl: ~4 ms at the median, ~30 ms at p95). The slot waits out the rest, so the delay stays
#: exact; the waits of at most this long are not counted as slot waits.
HANDOFF_LEAD = 0.02

#: Seconds between updates of the latency percentiles in the crawl stats.
STATS_PUBLISH_INTERVAL = 30.0


class Postponed(IgnoreRequest):
    """A request that may not start now: not final, serve it again ``retry_in`` seconds from now.

    ``why``: "robots" (its robots.txt is unreachable for now) or "fence" (this node's ownership
    of the key lapsed). Only a leased request (the DispatcherScheduler's) is postponed.
    """

    def __init__(self, retry_in: float, why: str):
        super().__init__(f"postponed ({why}) for {retry_in:.1f} s")
        self.retry_in = max(0.0, retry_in)
        self.why = why


class PolitenessGate:
    def __init__(self, politeness: Politeness, crawler: Crawler | None = None):
        self.state = politeness
        self.config = politeness.config
        self.key_by = politeness.config.key_by
        self._crawler = crawler
        self.fence_until = float("inf")  # monotonic; the DispatcherScheduler sets it
        self.starts_last = False  # FetchStartMiddleware waits out the delays, last in the chain
        self._in_flight: set[str] = set()  # keys with a fetch in the downloader (<= CONCURRENT_REQUESTS)
        self._publisher: Any = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> PolitenessGate:
        if not throttle_enabled(crawler.settings):
            raise NotConfigured("ROBOTS_THROTTLE_ENABLED is off")
        gate = cls(open_politeness(crawler.settings, crawler.spider, crawler.stats), crawler)
        connect = crawler.signals.connect
        connect(gate._spider_opened, signal=signals.spider_opened)
        # spider_idle: the figures are in the stats before spider_closed handlers read them
        connect(gate.state.publish_stats, signal=signals.spider_idle)
        connect(gate.state.publish_stats, signal=signals.spider_closed)
        connect(gate._engine_stopped, signal=signals.engine_stopped)
        logger.info("Politeness state in %s (delay %.2fs per %s, robots TTL %.0fs)",
                    gate.config.state_file, gate.config.delay, gate.key_by, gate.config.ttl)
        return gate

    # -- keys -------------------------------------------------------------------------------------

    def key_of(self, request: Request) -> str:
        """The request's politeness key (also its downloader slot), computed once per URL host."""
        meta = request.meta
        key = meta.get(KEY)
        if key is None or not _key_fits(key, urlparse_cached(request).hostname or ""):
            key = self.state.key_of(request.url)  # a redirect to another host: a new key
            meta[KEY] = key
        meta[DOWNLOAD_SLOT] = key
        return key

    def delay_for(self, key: str) -> float:
        return self.state.delay_for(key)

    # -- the clock --------------------------------------------------------------------------------

    def last_fetch(self, key: str) -> float:
        """Monotonic time of the last activity on ``key`` (a fetch's start or end; 0: none)."""
        return self.state.key_state(key).last_monotonic

    def ready_at(self, key: str) -> float:
        """Monotonic time from which a request on ``key`` may be handed to Scrapy (0: at once):
        ``HANDOFF_LEAD`` before the key's delay has passed since its last fetch."""
        last = self.state.key_state(key).last_monotonic
        return last + self.state.delay_for(key) - HANDOFF_LEAD if last else 0.0

    def may_start(self, key: str, now: float) -> bool:
        return key not in self._in_flight and now >= self.ready_at(key) and self.fence_holds(now)

    def fence_holds(self, now: float) -> bool:
        """May a fetch start at monotonic ``now`` as far as key ownership goes (the fence)?"""
        return now < self.fence_until

    @property
    def fenced(self) -> bool:
        """Ownership is fenced (a dispatcher decides who owns a key)."""
        return self.fence_until != float("inf")

    def last_was_robots(self, key: str) -> bool:
        return self.state.key_state(key).after_robots

    def started(self, key: str, t: float) -> None:
        """A fetch on ``key`` entered the downloader at monotonic time ``t``."""
        self._in_flight.add(key)
        self.state.record_fetch_start(key, self.state.to_wall(t))

    def ended(self, key: str, t: float, request: Request | None = None, robots: bool = False) -> float:
        """The fetch on ``key`` ended (answer or failure) at ``t``; returns the next ready time."""
        self._in_flight.discard(key)
        self._record_end(key, t)
        self.state.key_state(key).after_robots = robots
        ready = self.ready_at(key)
        if request is not None and self._crawler is not None:
            self._crawler.signals.send_catch_log(fetch_ended, request=request, key=key, ready_at=ready)
        return ready

    def hold(self, key: str, until: float) -> None:
        """Count ``key`` as busy until monotonic ``until`` (a fetch this node can no longer see end)."""
        self._record_end(key, until)

    def _record_end(self, key: str, t: float) -> None:
        self.state.record_fetch_done(key, self.state.to_wall(t))  # persisted on the wall clock
        # in process the monotonic time rules, even if the wall clock stepped back meanwhile
        key_state = self.state.key_state(key)
        key_state.last_monotonic = max(key_state.last_monotonic, t)

    # -- handoff ----------------------------------------------------------------------------------

    def export_partitions(self, partitions: set[int], total_partitions: int) -> dict[str, Any]:
        return self.state.export_partitions(partitions, total_partitions)

    def import_state(self, state: dict[str, Any]) -> dict[str, int]:
        return self.state.import_state(state)

    # -- life cycle -------------------------------------------------------------------------------

    def _spider_opened(self) -> None:
        self._publisher = create_looping_call(self.state.publish_stats)
        self._publisher.start(STATS_PUBLISH_INTERVAL, now=False)

    async def _engine_stopped(self) -> None:
        if self._publisher is not None and self._publisher.running:
            self._publisher.stop()
        d: Deferred[None] = deferToThread(self.state.close)
        await maybe_deferred_to_future(d)


def _key_fits(key: str, host: str) -> bool:
    """``key`` can be ``host``'s politeness key (it is the host or a parent domain of it)."""
    return host == key or host.endswith("." + key)


def open_politeness(settings: BaseSettings, spider: Any = None, stats: Any = None) -> Politeness:
    """The node's Politeness from its settings; a state file that cannot be opened names its setting."""
    config = PolitenessConfig.from_settings(settings, spider)
    source = state_file_source(settings)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(config.state_file)), exist_ok=True)
        return Politeness(config, stats)
    except OSError as exc:
        raise ValueError(f"{source}: expected a place where the state file {config.state_file!r} can be "
                         f"created, got {settings.get(source)!r} ({exc.strerror})") from None
    except StoreError as exc:
        raise ValueError(f"{source}: {exc}") from None
