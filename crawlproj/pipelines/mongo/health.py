"""Whether the MongoDB pipeline may write: the outage and retry back-off, the fatal stop, and the
record of the writes that succeeded (stats, latency). Reactor side.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pymongo.errors import ConnectionFailure, PyMongoError

from crawlproj.politeness.timing import LatencySampler

from .messages import MESSAGE_LIMIT, WriteOutcome
from .writer import IndexCheckError, TransientWriteError

if TYPE_CHECKING:
    from scrapy.statscollectors import StatsCollector
    from twisted.python.failure import Failure

    from .config import MongoConfig

logger = logging.getLogger(__package__)  # one logger for the whole pipeline

#: The retry back-off stops doubling here (it is capped by MONGO_RETRY_BACKOFF_MAX long before).
MAX_DOUBLINGS = 32


class Health:
    def __init__(self, config: MongoConfig, stats: StatsCollector, log_extra: Callable[[], dict[str, Any]]):
        self.config = config
        self.stats = stats
        self._log_extra = log_extra
        self.healthy = True
        self.fatal: Exception | None = None
        self.failures = 0  # consecutive failed attempts
        self.retry_at = 0.0
        self.outage_started = 0.0
        self.outage_spilled = 0
        self.write_latency = LatencySampler("mongo/write_latency_ms")  # one bulk_write

    @property
    def writing(self) -> bool:
        """MongoDB is believed to answer and nothing has stopped the writes."""
        return self.healthy and self.fatal is None

    def job_failed(self, failure: Failure) -> bool:
        """Count a failed job of the worker; True when it stops the writes for good."""
        exc = failure.value
        if isinstance(exc, IndexCheckError):
            return self._set_fatal(exc)
        if not isinstance(exc, PyMongoError):
            logger.error("Unexpected error in the MongoDB pipeline's worker; retrying",
                         exc_info=(failure.type, failure.value, failure.getTracebackObject()),
                         extra=self._log_extra())
        self.failed(exc)
        return False

    def failed(self, exc: BaseException, log: bool = True) -> None:
        now = time.monotonic()
        kind = getattr(exc, "kind", None) or type(exc).__name__
        self.stats.inc_value(f"mongo/errors/{kind}")
        self.stats.inc_value("mongo/retries")
        self.failures += 1
        doublings = min(self.failures - 1, MAX_DOUBLINGS)
        delay = min(self.config.retry_backoff_min * 2**doublings, self.config.retry_backoff_max)
        self.retry_at = now + delay
        message = str(exc)[:MESSAGE_LIMIT]
        # An unreachable server is weather; anything else (auth, a server bug) needs a person.
        level = logging.WARNING if isinstance(exc, (ConnectionFailure, TransientWriteError)) else logging.ERROR
        if self.healthy:
            self.healthy = False
            self.outage_started = now
            self.outage_spilled = 0
            if log:
                logger.log(level, "MongoDB write failed (%s: %s); retrying with back-off, items wait up to "
                           "%.1fs in memory, then go to the spill file in %s", kind, message,
                           self.config.spill_after, self.config.spill_dir, extra=self._log_extra())
        else:
            logger.log(logging.INFO if level == logging.WARNING else level,
                       "MongoDB still failing (attempt %d, %s: %s); next try in %.1fs", self.failures,
                       kind, message, delay, extra=self._log_extra())

    def answered(self) -> None:
        """A probe succeeded: write again (the back-off is reset by the first write that succeeds)."""
        logger.warning("MongoDB answers again after %.1fs and %d failed attempts; %d items were spilled "
                       "meanwhile", time.monotonic() - self.outage_started, self.failures,
                       self.outage_spilled, extra=self._log_extra())
        self.healthy = True

    def succeeded(self, outcome: WriteOutcome) -> None:
        self.healthy = True
        self.failures = 0
        self.stats.inc_value("mongo/batches", outcome.bulk_writes)
        if outcome.already_applied:
            self.stats.inc_value("mongo/already_applied", outcome.already_applied)
        for ms in outcome.latencies_ms:
            self.write_latency.add(ms)

    def _set_fatal(self, exc: Exception) -> bool:
        if self.fatal is not None:
            return False
        self.fatal = exc
        self.stats.inc_value(f"mongo/errors/{type(exc).__name__}")
        logger.error("%s; no more writes to MongoDB, items go to the spill file; closing the spider", exc,
                     extra=self._log_extra())
        return True
