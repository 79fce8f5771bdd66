"""Progress lines and a stats file: what a person watching a crawl, and a tool after it, read."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import NotConfigured
from twisted.internet import task

from crawlproj.setting_checks import float_at_least

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


class Progress:
    """Every ``PROGRESS_INTERVAL`` seconds, one line on stderr: pages, rate, items, errors."""

    def __init__(self, crawler: Crawler, interval: float, stats_file: str | None):
        self.crawler = crawler
        self.stats = crawler.stats
        self.interval = interval
        self.stats_file = stats_file
        self.loop: task.LoopingCall | None = None
        self.last_pages = 0
        self.last_time = 0.0
        self.started = 0.0

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Progress:
        interval = float_at_least(crawler.settings, "PROGRESS_INTERVAL", 0.0, "seconds >= 0")
        stats_file = crawler.settings.get("PROGRESS_STATS_FILE") or None
        if stats_file and not os.path.isdir(os.path.dirname(os.path.abspath(stats_file))):
            raise ValueError(f"PROGRESS_STATS_FILE: expected a file in an existing directory, got {stats_file!r}")
        if interval == 0 and not stats_file:
            raise NotConfigured("PROGRESS_INTERVAL is 0 and PROGRESS_STATS_FILE is empty")
        ext = cls(crawler, interval, stats_file)
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
