"""Back-pressure of the MongoDB pipeline: the engine is paused while the buffer is full and
nothing can take its items (MongoDB slower than the crawl, or failing with the spill full), and
unpaused once the buffer has drained to half.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scrapy.core.engine import ExecutionEngine
    from scrapy.crawler import Crawler

    from .schedule import Schedule

logger = logging.getLogger(__package__)  # one logger for the whole pipeline


def engine_of(crawler: Crawler) -> ExecutionEngine | None:
    try:
        return crawler.engine
    except RuntimeError:  # not crawling (the pipeline driven on its own, e.g. a benchmark)
        return None


class EngineBrake:
    def __init__(self, crawler: Crawler, schedule: Schedule):
        self.crawler = crawler
        self.schedule = schedule
        self.paused = False

    def update(self) -> None:
        schedule, config = self.schedule, self.schedule.config
        extra = {"spider": self.crawler.spider}
        if not self.paused and schedule.must_pause(time.monotonic()):
            logger.warning("Pausing the engine: %d items wait for MongoDB (MONGO_BUFFER_MAX_ITEMS=%d) and %s",
                           schedule.waiting(), config.buffer_max_items,
                           "MongoDB is slower than the crawl" if schedule.health.healthy else
                           f"the spill is full ({schedule.spill.bytes} bytes, MONGO_SPILL_MAX_BYTES="
                           f"{config.spill_max_bytes})", extra=extra)
            self.crawler.stats.inc_value("mongo/engine_pauses")
            self.set(True)
        elif self.paused and schedule.may_unpause():
            logger.info("Unpausing the engine: %d items wait for MongoDB", schedule.waiting(), extra=extra)
            self.set(False)

    def set(self, paused: bool) -> None:
        engine: Any = engine_of(self.crawler)
        if paused == self.paused or engine is None:
            return
        self.paused = paused
        if paused:
            engine.pause()
        else:
            engine.unpause()
