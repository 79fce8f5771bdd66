"""Refused requests: their stats keys, what would allow each, and the loud end of an all-refused crawl.

A refusal is counted once in the stats under the key of the component that refused it (Scrapy's
style, ``<component>/<what>/<reason>``): ``ssrf/refused/<reason>`` (the SSRF guard),
``traps/refused/<reason>`` (the trap guard), ``robots/forbidden/<reason>`` (robots.txt),
``broad/seeds/invalid`` and ``broad/seeds/out_of_scope`` (the broad spider's seeds).
:func:`refusals` reads them from any stats dict (a node's report too).

:class:`RefusalCheck` (connected by the spider): when the spider goes idle and not one request
got an answer (a response or a download error) while some were refused, it logs one WARNING per
reason naming the setting that would allow it, and closes the spider with reason ``refused``;
``scrapy crawl`` (crawlproj.commands.crawl) then exits 1. Under the DispatcherScheduler the
dispatcher decides when the crawl ends: the warning is logged at close, the exit code stays 0.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import CloseSpider, IgnoreRequest

from crawlproj.meta import ROBOTS_FETCH
from crawlproj.nodeid import standalone

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from twisted.python.failure import Failure

logger = logging.getLogger(__name__)

#: Finish reason of a crawl whose every request was refused.
REFUSED = "refused"
#: Finish reasons of the MongoDB pipeline when it cannot start or go on (crawlproj.pipelines.mongo).
MONGO_INDEX_CHECK_FAILED = "mongo_index_check_failed"
MONGO_START_REFUSED = "mongo_start_refused"
#: Finish reasons after which ``scrapy crawl`` exits 1.
FAILED_REASONS = frozenset({REFUSED, MONGO_INDEX_CHECK_FAILED, MONGO_START_REFUSED})

#: Stats key (or key prefix, ending in "/") -> what refused, and what would allow it.
SOURCES: dict[str, tuple[str, str]] = {
    "ssrf/refused/": ("the SSRF guard (a non-public address)",
                      "SSRF_ALLOWED_NETWORKS (e.g. ['127.0.0.1/32']) for hosts you run, or SSRF_ENABLED=False"),
    "traps/refused/depth": ("the trap guard (too deep)", "TRAP_MAX_DEPTH"),
    "traps/refused/repeated_segment": ("the trap guard (a repeated path segment)", "TRAP_MAX_SEGMENT_REPEATS"),
    "traps/refused/host_cap": ("the trap guard (pages per host)", "TRAP_MAX_PAGES_PER_HOST"),
    "traps/refused/url_length": ("the trap guard (URL length)", "URLLENGTH_LIMIT"),
    "traps/refused/": ("the trap guard", "TRAP_GUARD_ENABLED=False"),
    "robots/forbidden/unreachable": ("robots.txt unreachable (held ROBOTS_HOLD_TIME, postponed up to "
                                     "ROBOTS_POSTPONE_MAX, then dropped)",
                                     "a longer ROBOTS_POSTPONE_MAX (ROBOTS_HOLD_TIME without a dispatcher), "
                                     "or sites whose robots.txt answers"),
    "robots/forbidden/": ("robots.txt", "ROBOTSTXT_OBEY=False (only for sites you run)"),
    "broad/seeds/invalid": ("bad seeds (not http(s) URLs)", "-a seeds=FILE|URL,URL with http(s) URLs"),
    "broad/seeds/out_of_scope": ("seeds outside BROAD_ALLOWED_DOMAINS",
                                 "BROAD_ALLOWED_DOMAINS (-a allowed_domains) or BROAD_SCOPE (-a scope)"),
}


def source_of(key: str) -> tuple[str, str] | None:
    """(what refused, what would allow it) of a refusal stats key, or None if it is not one."""
    for prefix, source in SOURCES.items():  # the exact keys come before their prefix
        if key == prefix or (prefix.endswith("/") and key.startswith(prefix) and len(key) > len(prefix)):
            return source
    return None


def refusals(stats: Mapping[str, Any]) -> dict[str, int]:
    """The refusal counts among ``stats``, by stats key (``{"ssrf/refused/loopback": 3}``)."""
    return {key: int(value) for key, value in stats.items()
            if isinstance(value, (int, float)) and value and source_of(key) is not None}


class RefusalCheck:
    """Counts the answered requests of a crawl; a crawl with refusals and no answer ends loud."""

    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        self.answered = 0
        self.warned = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> RefusalCheck:
        check = cls(crawler)
        crawler.signals.connect(check._response, signal=signals.response_received)
        crawler.signals.connect(check._idle, signal=signals.spider_idle)
        crawler.signals.connect(check._closed, signal=signals.spider_closed)
        return check

    def failed(self, failure: Failure) -> None:
        """A request's errback ran: a download error is an answer, a refusal is not."""
        if not failure.check(IgnoreRequest):
            self.answered += 1

    def _response(self, response: Response, request: Request) -> None:
        if not request.meta.get(ROBOTS_FETCH):
            self.answered += 1

    def all_refused(self) -> dict[str, int]:
        """The refusals, if every request was refused; else {}."""
        if self.answered:
            return {}
        return refusals(self.crawler.stats.get_stats())

    def _warn(self, refused: dict[str, int]) -> None:
        if self.warned:
            return
        self.warned = True
        for key, count in sorted(refused.items()):
            what, allow = source_of(key) or ("?", "?")
            logger.warning("Nothing crawled, every request refused: %d by %s [%s]; to allow them: %s",
                           count, what, key, allow, extra={"spider": self.crawler.spider})

    def _idle(self) -> None:
        refused = self.all_refused()
        if refused and standalone(self.crawler.settings):  # the add-ons have run by now
            self._warn(refused)
            raise CloseSpider(REFUSED)

    def _closed(self, reason: str) -> None:
        refused = self.all_refused()
        if refused:
            self._warn(refused)
