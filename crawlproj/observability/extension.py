"""Time a node's operations: a Scrapy extension and a spider middleware.

    EXTENSIONS = {"crawlproj.observability.extension.TimingsExtension": 510}
    SPIDER_MIDDLEWARES = {"crawlproj.observability.extension.ParseTimingMiddleware": 1050}
    DOWNLOADER_MIDDLEWARES = {"crawlproj.observability.extension.DownloadTimingMiddleware": 1}

The extension records download latency (Scrapy's ``download_latency`` meta: time to first
byte; ``download_total`` to the last byte), the wait of a request in its slot and in the
downloader middlewares before it (``slot_wait``, ``robots_wait``: the downloader's signals and
the outermost downloader middleware's stamp) and the politeness key of every response, ends
the item timings (``item_*`` signals), adopts the politeness state's samplers (store lookups
and writes, robots.txt fetches and parsing), probes the download slots, the scheduler and the
item store's backlog (and the refused requests: crawlproj.refusals) every ``PROBE_INTERVAL``
for the time account (:mod:`crawlproj.observability.account`), writes a TIMINGS summary line every
``TIMINGS_LOG_INTERVAL`` and the whole-crawl ``timing/<op>/*`` stats. The spider middleware,
innermost, times each callback's output with one ``perf_counter`` pair per response and stamps
the items it yields. All are off with ``TIMINGS_ENABLED = False``.

The extension owns the crawler's :class:`~.timings.Timings`; other components find it with
:func:`timings_of` (``crawler.get_extension``), a no-op while the extension is off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scrapy import Request, signals
from scrapy.core.downloader import Downloader
from scrapy.exceptions import NotConfigured
from scrapy.utils.asyncio import create_looping_call

from crawlproj.meta import DOWNLOAD_LATENCY, ROBOTS_FETCH
from crawlproj.meta import KEY as POLITENESS_KEY_META
from crawlproj.nodeid import node_name
from crawlproj.politeness.gate import PolitenessGate
from crawlproj.refusals import refusals
from crawlproj.setting_checks import bool_setting, file_setting, positive_float, typed_setting

from .account import PROBE_INTERVAL, backlog_of, robots_fetches
from .timings import NullTimings, TimingLog, Timings

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

_STAMPS_MAX = 100_000  # requests in the downloader whose times are remembered (a leak bound)
_BACKLOG_EVERY = 10  # probes between two looks at the item store's backlog


@dataclass(frozen=True)
class TimingsConfig:
    """The TIMINGS_* settings; defaults and meanings live in crawlproj/settings.py."""

    interval: float
    sample_rate: float
    slow_ms: float
    log_file: str
    node: str

    @staticmethod
    def enabled(settings: BaseSettings) -> bool:
        return bool_setting(settings, "TIMINGS_ENABLED")

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> TimingsConfig:
        return cls(
            interval=positive_float(settings, "TIMINGS_LOG_INTERVAL", "seconds > 0"),
            sample_rate=float(typed_setting(settings, "TIMINGS_LOG_SAMPLE_RATE", settings.getfloat,
                                            "a share between 0 and 1", lambda v: 0 <= v <= 1)),
            slow_ms=positive_float(settings, "TIMINGS_LOG_SLOW_MS", "milliseconds > 0"),
            log_file=file_setting(settings, "TIMINGS_LOG_FILE"),
            node=node_name(settings),
        )


def timings_of(crawler: Crawler) -> Timings:
    """The crawler's :class:`Timings` (its TimingsExtension's), or a :class:`NullTimings` while
    the extension is off or not built yet (before the engine: e.g. in a spider's from_crawler)."""
    try:
        ext = crawler.get_extension(TimingsExtension)
    except RuntimeError:  # the extension manager is not built yet
        ext = None
    return ext.timings if ext is not None else NullTimings()


class TimingsExtension:
    def __init__(self, crawler: Crawler, config: TimingsConfig):
        self.crawler = crawler
        self.config = config
        self.timings = Timings()
        self.timings.open_reader("log")
        try:
            self.log = TimingLog(config.node, config.sample_rate, config.slow_ms, config.log_file)
        except OSError as exc:
            raise ValueError(f"TIMINGS_LOG_FILE: expected a file that can be created, got "
                             f"{config.log_file!r} ({exc.strerror})") from None
        self.timings.set_log(self.log)
        self._loop: Any = None
        self._probe_loop: Any = None
        self._probe_at = 0.0
        self._probes = 0
        # id(request) -> [entered the downloader, reached its slot, transfer started] (monotonic)
        self.stamps: dict[int, list[float]] = {}

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> TimingsExtension:
        if not TimingsConfig.enabled(crawler.settings):
            raise NotConfigured("TIMINGS_ENABLED is off")
        ext = cls(crawler, TimingsConfig.from_settings(crawler.settings))
        connect = crawler.signals.connect
        connect(ext._spider_opened, signal=signals.spider_opened)
        connect(ext._spider_closed, signal=signals.spider_closed)
        connect(ext._response_received, signal=signals.response_received)
        connect(ext._reached_downloader, signal=signals.request_reached_downloader)
        connect(ext._headers_received, signal=signals.headers_received)
        connect(ext._response_downloaded, signal=signals.response_downloaded)
        connect(ext._left_downloader, signal=signals.request_left_downloader)
        for sig in (signals.item_scraped, signals.item_dropped, signals.item_error):
            connect(ext._item_settled, signal=sig)
        return ext

    def _spider_opened(self) -> None:
        gate = self.crawler.get_extension(PolitenessGate)
        if gate is not None:
            for op, sampler in gate.state.samplers().items():
                self.timings.adopt(op, sampler)
        self._loop = create_looping_call(self._tick)
        self._loop.start(self.config.interval, now=False)
        self._probe_at = time.monotonic()
        self._probe_loop = create_looping_call(self._probe)
        self._probe_loop.start(PROBE_INTERVAL, now=False)

    # -- the downloader: where a request's time goes ---------------------------------------------

    def entered(self, request: Request) -> None:
        """``request`` entered the downloader (its outermost middleware)."""
        if len(self.stamps) >= _STAMPS_MAX:
            self.stamps.clear()  # requests that never left (a leak bound)
        self.stamps[id(request)] = [time.monotonic(), 0.0, 0.0]

    def _reached_downloader(self, request: Request) -> None:
        stamp = self.stamps.get(id(request))
        if stamp is not None:
            stamp[1] = now = time.monotonic()
            self.timings.record("robots_wait", (now - stamp[0]) * 1000.0)

    def _headers_received(self, request: Request, **kwargs: Any) -> None:
        stamp = self.stamps.get(id(request))
        latency = request.meta.get(DOWNLOAD_LATENCY)
        if stamp is not None and stamp[1] and latency is not None:
            stamp[2] = started = time.monotonic() - latency
            self.timings.record("slot_wait", max(0.0, started - stamp[1]) * 1000.0)

    def _response_downloaded(self, request: Request, **kwargs: Any) -> None:
        stamp = self.stamps.get(id(request))
        if stamp is not None and stamp[2] and not request.meta.get(ROBOTS_FETCH):
            self.timings.record("download_total", (time.monotonic() - stamp[2]) * 1000.0)

    def _left_downloader(self, request: Request, **kwargs: Any) -> None:
        self.stamps.pop(id(request), None)

    def _probe(self) -> None:
        """One look at the download slots and the scheduler (and now and then the item store)."""
        now = time.monotonic()
        lag = max(0.0, now - self._probe_at - PROBE_INTERVAL)
        self._probe_at = now
        engine = self.crawler.engine
        downloader = getattr(engine, "downloader", None)
        if downloader is None:
            return
        in_slots = transferring = robots = 0
        for slot in downloader.slots.values():
            in_slots += len(slot.active)
            for request in slot.transferring:
                if request.meta.get(ROBOTS_FETCH):
                    robots += 1  # a robots.txt fetch: the wait of the requests held for it
                else:
                    transferring += 1
        scheduler = engine.scheduler
        waiting = scheduler is not None and _queued(scheduler)
        self.timings.slots.probe(downloader.total_concurrency or len(downloader.active) or 1,
                                 transferring, robots + len(downloader.active) - in_slots,
                                 in_slots - transferring - robots, waiting,
                                 waiting and _ready(scheduler, now), lag)
        self._probes += 1
        if self._probes % _BACKLOG_EVERY == 0:
            settings = self.crawler.settings
            budgets = {"items_max": settings.getint("MONGO_BUFFER_MAX_ITEMS"),
                       "spill_max": settings.getint("MONGO_SPILL_MAX_BYTES")} if settings.get("MONGO_URI") else {}
            self.timings.backlog = backlog_of(self.crawler.stats, budgets)
            self._refusals()

    def _refusals(self) -> None:
        stats = self.crawler.stats.get_stats()
        self.timings.refused = refusals(stats)
        self.timings.robots_fetches = robots_fetches(stats)

    def _response_received(self, response: Response, request: Request) -> None:
        meta = request.meta
        latency = meta.get(DOWNLOAD_LATENCY)
        if latency is not None and not meta.get(ROBOTS_FETCH):  # robots.txt: timed as robots_fetch
            self.timings.record("download", latency * 1000.0)
        key = meta.get(POLITENESS_KEY_META) or meta.get(Downloader.DOWNLOAD_SLOT)
        if key is not None:
            self.timings.fetched(key)

    def _item_settled(self, item: Any = None, **kwargs: Any) -> None:
        self.timings.item_finished(item, time.perf_counter())

    def _tick(self) -> None:
        stats = self.crawler.stats
        self._refusals()
        window = self.timings.window("log")
        record = {"t": round(time.time(), 3), "node": self.config.node,
                  "pages": stats.get_value("response_received_count", 0),
                  "items": stats.get_value("item_scraped_count", 0), **window}
        self.log.window(record)
        self.timings.publish(stats)

    def _spider_closed(self) -> None:
        for loop in (self._loop, self._probe_loop):
            if loop is not None and loop.running:
                loop.stop()
        self._tick()
        self.log.close()


class ParseTimingMiddleware:
    """Innermost spider middleware: callback time and the start of each item's processing."""

    def __init__(self, timings: Timings):
        self.timings = timings

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> ParseTimingMiddleware:
        ext = crawler.get_extension(TimingsExtension)  # built before the spider middlewares
        if ext is None:
            raise NotConfigured("TimingsExtension is off (TIMINGS_ENABLED)")
        return cls(ext.timings)

    def process_spider_output(self, response: Response, result: Iterable[Any]) -> Iterable[Any]:
        timings, clock = self.timings, time.perf_counter
        started = clock()
        try:
            for element in result:
                if element is not None and not isinstance(element, Request):
                    timings.item_started(element, clock())
                yield element
        finally:
            timings.record("parse", (clock() - started) * 1000.0)

    async def process_spider_output_async(self, response: Response,
                                          result: AsyncIterator[Any]) -> AsyncIterator[Any]:
        timings, clock = self.timings, time.perf_counter
        started = clock()
        try:
            async for element in result:
                if element is not None and not isinstance(element, Request):
                    timings.item_started(element, clock())
                yield element
        finally:
            timings.record("parse", (clock() - started) * 1000.0)


class DownloadTimingMiddleware:
    """Outermost downloader middleware: stamps when a request enters the downloader, so its wait
    in the middlewares before its slot (robots.txt) is timed (``robots_wait``)."""

    def __init__(self, ext: TimingsExtension):
        self.ext = ext

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> DownloadTimingMiddleware:
        ext = crawler.get_extension(TimingsExtension)
        if ext is None:
            raise NotConfigured("TimingsExtension is off (TIMINGS_ENABLED)")
        return cls(ext)

    def process_request(self, request: Request) -> None:
        self.ext.entered(request)

    def process_exception(self, request: Request, exception: BaseException) -> None:
        self.ext.stamps.pop(id(request), None)  # refused before its slot (robots.txt, SSRF)


def _ready(scheduler: Any, now: float) -> bool:
    """Some request the scheduler holds may start now (its key queues' next ready time, when it
    keeps per-key queues: crawlproj.scheduling.keyqueue; otherwise any held request may)."""
    queues = getattr(scheduler, "queues", None)
    next_ready = getattr(queues, "next_ready_time", None)
    if next_ready is None:
        return True
    when = next_ready()
    return when is not None and when <= now


def _queued(scheduler: Any) -> bool:
    """The scheduler holds requests (its ``len``; Scrapy's pending check without one)."""
    try:
        return len(scheduler) > 0
    except TypeError:
        return bool(scheduler.has_pending_requests())
