"""Time a node's operations: a Scrapy extension and a spider middleware.

    EXTENSIONS = {"crawlproj.observability.extension.TimingsExtension": 510}
    SPIDER_MIDDLEWARES = {"crawlproj.observability.extension.ParseTimingMiddleware": 1050}

The extension records download latency (Scrapy's ``download_latency`` meta) and the politeness
key of every response, ends the item timings (``item_*`` signals), adopts the politeness
state's samplers (store lookups and writes, robots.txt fetches and parsing), writes a TIMINGS
summary line every ``TIMINGS_LOG_INTERVAL`` and the whole-crawl ``timing/<op>/*`` stats. The
spider middleware, innermost, times each callback's output with one ``perf_counter`` pair per
response and stamps the items it yields. Both are off with ``TIMINGS_ENABLED = False``.

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

from crawlproj.meta import DOWNLOAD_LATENCY
from crawlproj.meta import KEY as POLITENESS_KEY_META
from crawlproj.nodeid import node_name
from crawlproj.politeness.gate import PolitenessGate
from crawlproj.setting_checks import bool_setting, file_setting, positive_float, typed_setting

from .timings import NullTimings, TimingLog, Timings

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)


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

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> TimingsExtension:
        if not TimingsConfig.enabled(crawler.settings):
            raise NotConfigured("TIMINGS_ENABLED is off")
        ext = cls(crawler, TimingsConfig.from_settings(crawler.settings))
        connect = crawler.signals.connect
        connect(ext._spider_opened, signal=signals.spider_opened)
        connect(ext._spider_closed, signal=signals.spider_closed)
        connect(ext._response_received, signal=signals.response_received)
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

    def _response_received(self, response: Response, request: Request) -> None:
        meta = request.meta
        latency = meta.get(DOWNLOAD_LATENCY)
        if latency is not None:
            self.timings.record("download", latency * 1000.0)
        key = meta.get(POLITENESS_KEY_META) or meta.get(Downloader.DOWNLOAD_SLOT)
        if key is not None:
            self.timings.fetched(key)

    def _item_settled(self, item: Any = None, **kwargs: Any) -> None:
        self.timings.item_finished(item, time.perf_counter())

    def _tick(self) -> None:
        stats = self.crawler.stats
        window = self.timings.window("log")
        record = {"t": round(time.time(), 3), "node": self.config.node,
                  "pages": stats.get_value("response_received_count", 0),
                  "items": stats.get_value("item_scraped_count", 0), **window}
        self.log.window(record)
        self.timings.publish(stats)

    def _spider_closed(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
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
