"""Crawler traps and hostile responses: each ends in a refused request and a counted outcome.

:class:`TrapGuardMiddleware` (a downloader middleware, after the SSRF guard and before robots.txt,
so a refused request costs no robots.txt fetch) ends with IgnoreRequest, counted as
``traps/refused/<reason>``, a request

- whose URL is longer than Scrapy's ``URLLENGTH_LIMIT`` (session ids, ever-growing query
  strings): Scrapy's UrlLengthMiddleware drops such links from the spider's output
  (``urllength/request_ignored_count``); this catches redirects and requests leased from the
  dispatcher (pushed by a node with other settings),
- deeper than ``TRAP_MAX_DEPTH`` (Scrapy's ``depth`` meta; off by default: in a broad crawl
  depth also counts hops between hosts, and ``DEPTH_LIMIT`` / ``-a max_depth`` exist),
- whose path repeats one segment more than ``TRAP_MAX_SEGMENT_REPEATS`` times
  (``/a/b/a/b/a/b/a/b``: relative links resolved against themselves),
- that redirects back to a URL of its own redirect chain (``redirect_loop``), or
- whose host already had ``TRAP_MAX_PAGES_PER_HOST`` requests from this process (endless
  calendars, session ids in paths). A host's pages are all served by the node that owns its
  politeness key's partition, so the count lives in that node's memory (``TRAP_HOSTS_TRACKED``
  hosts, least recently used forgotten); it starts again when a node restarts or the partition
  moves to another node.

It also names two outcomes Scrapy reports only as generic failures:

- ``hostile/too_large``: a download cancelled at ``DOWNLOAD_MAXSIZE`` (declared or streamed);
- ``hostile/decompression_bomb``: a response whose decompressed body passes ``DOWNLOAD_MAXSIZE``
  (:class:`CountingHttpCompressionMiddleware`, which replaces Scrapy's HttpCompressionMiddleware,
  counts it; Scrapy 2.19 stops decompressing at that size and ignores the response).
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING, Any

from scrapy.downloadermiddlewares.httpcompression import HttpCompressionMiddleware
from scrapy.exceptions import DownloadCancelledError, IgnoreRequest, NotConfigured
from scrapy.utils.httpobj import urlparse_cached

from crawlproj.meta import DEPTH, REDIRECT_URLS, RETRY_TIMES, ROBOTS_FETCH
from crawlproj.setting_checks import bool_setting, int_at_least

if TYPE_CHECKING:
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

MAXSIZE_MESSAGE = "download max size"  # Scrapy's get_maxsize_msg() for cancelled downloads


def _cap(settings: BaseSettings, name: str) -> int:
    return int_at_least(settings, name, 0, "an integer >= 0 (0 = no cap)")


class TrapGuardMiddleware:
    def __init__(self, crawler: Crawler, max_url_length: int, max_depth: int, max_segment_repeats: int,
                 max_pages_per_host: int, hosts_tracked: int):
        self.crawler = crawler
        self.stats = crawler.stats
        self.max_url_length = max_url_length
        self.max_depth = max_depth
        self.max_segment_repeats = max_segment_repeats
        self.max_pages_per_host = max_pages_per_host
        self.hosts_tracked = hosts_tracked
        self.pages: OrderedDict[str, int] = OrderedDict()  # host -> requests let through (LRU)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> TrapGuardMiddleware:
        s = crawler.settings
        if not bool_setting(s, "TRAP_GUARD_ENABLED"):
            raise NotConfigured("TRAP_GUARD_ENABLED is off")
        return cls(crawler, _cap(s, "URLLENGTH_LIMIT"), _cap(s, "TRAP_MAX_DEPTH"),
                   _cap(s, "TRAP_MAX_SEGMENT_REPEATS"), _cap(s, "TRAP_MAX_PAGES_PER_HOST"),
                   int_at_least(s, "TRAP_HOSTS_TRACKED", 1))

    def process_request(self, request: Request) -> None:
        meta = request.meta
        if meta.get(ROBOTS_FETCH):
            return None
        url = request.url
        if self.max_url_length and len(url) > self.max_url_length:
            self._refuse(request, "url_length", f"{len(url)} characters > URLLENGTH_LIMIT {self.max_url_length}")
        if self.max_depth and meta.get(DEPTH, 0) > self.max_depth:
            self._refuse(request, "depth", f"depth {meta.get(DEPTH)} > TRAP_MAX_DEPTH {self.max_depth}")
        parts = urlparse_cached(request)
        if self.max_segment_repeats:
            segments = Counter(seg for seg in parts.path.split("/") if seg)
            if segments and max(segments.values()) > self.max_segment_repeats:
                seg, n = segments.most_common(1)[0]
                self._refuse(request, "repeated_segment",
                             f"segment {seg[:50]!r} {n} times > TRAP_MAX_SEGMENT_REPEATS {self.max_segment_repeats}")
        if url in (meta.get(REDIRECT_URLS) or ()):
            self._refuse(request, "redirect_loop", "redirected back to a URL of its own chain")
        if self.max_pages_per_host and not meta.get(RETRY_TIMES):
            self._count_host(request, (parts.hostname or "").lower())
        return None

    def _count_host(self, request: Request, host: str) -> None:
        pages, cap = self.pages, self.max_pages_per_host
        n = pages.pop(host, 0)
        pages[host] = min(n + 1, cap + 1)  # most recent last; cap + 1 = "already reported"
        if len(pages) > self.hosts_tracked:
            pages.popitem(last=False)
        if n < cap:
            return
        if n == cap:
            self.stats.inc_value("traps/capped_hosts")
            logger.warning("Host %s reached TRAP_MAX_PAGES_PER_HOST (%d requests): refusing the rest",
                           host, cap, extra={"spider": self.crawler.spider})
        self._refuse(request, "host_cap", f"host {host} had {cap} requests (TRAP_MAX_PAGES_PER_HOST)")

    def _refuse(self, request: Request, reason: str, detail: str) -> None:
        self.stats.inc_value(f"traps/refused/{reason}")
        logger.debug("Trap guard refused %s: %s", request.url[:300], detail,
                     extra={"spider": self.crawler.spider})
        raise IgnoreRequest(f"trap guard: {detail}")

    def process_exception(self, request: Request, exception: BaseException) -> None:
        # Scrapy 2.19 cancels a download (DownloadCancelledError, its message empty when the body
        # was streamed past the limit) for DOWNLOAD_MAXSIZE; time-outs have an exception of their own.
        if isinstance(exception, DownloadCancelledError) or MAXSIZE_MESSAGE in str(exception):
            self.stats.inc_value("hostile/too_large")
        return None


class CountingHttpCompressionMiddleware(HttpCompressionMiddleware):
    """Scrapy's HttpCompressionMiddleware, counting responses refused as decompression bombs."""

    def process_response(self, request: Request, response: Response, spider: Spider | None = None) -> Any:
        try:
            return super().process_response(request, response)
        except IgnoreRequest:
            if self.stats is not None:
                self.stats.inc_value("hostile/decompression_bomb")
            raise
