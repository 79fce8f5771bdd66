"""Progress lines and a stats file: what a person watching a crawl, and a tool after it, read."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import NotConfigured
from twisted.internet import task

from crawlproj.setting_checks import file_setting, float_at_least

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings


@dataclass(frozen=True)
class ProgressConfig:
    """The PROGRESS_* settings; defaults and meanings live in crawlproj/settings.py."""

    interval: float  # 0: no progress lines
    stats_file: str  # "": no stats file

    @staticmethod
    def enabled(settings: BaseSettings) -> bool:
        config = ProgressConfig.from_settings(settings)
        return config.interval > 0 or bool(config.stats_file)

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> ProgressConfig:
        return cls(float_at_least(settings, "PROGRESS_INTERVAL", 0.0, "seconds >= 0"),
                   file_setting(settings, "PROGRESS_STATS_FILE", create_dirs=False))


class Progress:
    """Every ``PROGRESS_INTERVAL`` seconds, one line on stderr: pages, rate, items, errors."""

    def __init__(self, crawler: Crawler, config: ProgressConfig):
        self.crawler = crawler
        self.stats = crawler.stats
        self.interval = config.interval
        self.stats_file = config.stats_file
        self.loop: task.LoopingCall | None = None
        self.last_pages = 0
        self.last_time = 0.0
        self.started = 0.0

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Progress:
        if not ProgressConfig.enabled(crawler.settings):
            raise NotConfigured  # off by default: no "Disabled" warning on every crawl
        ext = cls(crawler, ProgressConfig.from_settings(crawler.settings))
        crawler.signals.connect(ext.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(ext.spider_closed, signal=signals.spider_closed)
        return ext

    def spider_opened(self, spider: Any) -> None:
        self.started = self.last_time = time.monotonic()
        if self.interval > 0:
            self.loop = task.LoopingCall(self.report)
            self.loop.start(self.interval, now=False)

    def report(self) -> None:
        now = time.monotonic()
        pages = self.stats.get_value("response_received_count", 0)
        rate = (pages - self.last_pages) / max(now - self.last_time, 1e-9)
        self.last_pages, self.last_time = pages, now
        print(f"[progress] {now - self.started:6.1f}s  pages {pages:7d}  {rate:7.1f} pages/s  "
              f"items {self.stats.get_value('item_scraped_count', 0):7d}  "
              f"robots-forbidden {self.forbidden():5d}  "
              f"errors {self.stats.get_value('log_count/ERROR', 0):4d}", file=sys.stderr, flush=True)

    def forbidden(self) -> int:
        # RobotsThrottleMiddleware counts robots/forbidden, Scrapy's robots middleware robotstxt/
        return int(self.stats.get_value("robots/forbidden", 0)
                   + self.stats.get_value("robotstxt/forbidden", 0))

    def spider_closed(self, spider: Any, reason: str) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        if self.stats_file:
            data = {k: (v.isoformat() if hasattr(v, "isoformat") else v)
                    for k, v in self.stats.get_stats().items()}
            data["finish_reason"] = reason
            data["elapsed_wall_seconds"] = time.monotonic() - self.started
            with open(self.stats_file, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
