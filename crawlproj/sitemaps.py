"""Sitemaps: robots.txt ``Sitemap:`` lines and ``/sitemap.xml`` bring URLs no page links to.

:class:`SitemapDiscovery` (a spider middleware, ``SITEMAP_ENABLED``) adds, for each authority
the spider's output reaches first in this process, a request for its robots.txt with the
spider's callback ``parse_sitemap``, which hands the response to :func:`sitemap_requests`:

- robots.txt: a request for each ``Sitemap:`` line (Scrapy's ``sitemap_urls_from_robots``), or
  for ``/sitemap.xml`` when it names none (or did not answer 200);
- a sitemap index (plain or gzip): a request for each sitemap it lists, nesting capped;
- a urlset: a request (callback ``parse``) for each page in the spider's scope rules
  (``in_scope`` and ``wanted``), its ``<lastmod>`` in ``meta[SITEMAP_LASTMOD]`` for the schedule.

The sitemaps protocol's limits hold per file: ``SITEMAP_MAX_URLS`` entries (50,000) and
``SITEMAP_MAX_BYTES`` uncompressed (50 MiB; also the file's ``download_maxsize``); what is past
them is cut and counted. Parsing is Scrapy's ``Sitemap`` (lxml, recovering: a cut file yields
its whole entries). Stats: ``sitemap/*`` (docs/stats.md).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from scrapy import Request
from scrapy.exceptions import NotConfigured
from scrapy.utils.gz import gunzip, gzip_magic_number
from scrapy.utils.sitemap import Sitemap, sitemap_urls_from_robots

from crawlproj.linkfilter import RecentSet
from crawlproj.meta import CANONICAL, DOWNLOAD_MAXSIZE, REDIRECT_URLS, SITEMAP_LASTMOD, SITEMAP_NESTING
from crawlproj.setting_checks import bool_setting, check_setting, int_at_least
from crawlproj.wire.urls import BadURL, canonicalize, host_of, registered_domain

if TYPE_CHECKING:
    from scrapy import Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.settings import BaseSettings
    from scrapy.statscollectors import StatsCollector

logger = logging.getLogger(__name__)

#: The sitemaps protocol's limits per file (sitemaps.org/protocol.html).
PROTOCOL_MAX_URLS = 50_000
PROTOCOL_MAX_BYTES = 50 * 1024 * 1024
#: robots.txt is level 0, what it names 1, the children of an index 2; an index deeper than
#: that breaks the protocol (an index lists sitemaps, not indexes) and is not followed.
MAX_NESTING = 2
ROBOTS_PATH = "/robots.txt"
FALLBACK_PATH = "/sitemap.xml"
CALLBACK = "parse_sitemap"  # the spider's callback for robots.txt and sitemap responses
AUTHORITIES_TRACKED = 100_000  # authorities whose discovery this process remembers


@dataclass(frozen=True)
class SitemapConfig:
    enabled: bool
    max_urls: int
    max_bytes: int

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> SitemapConfig:
        max_urls = int_at_least(settings, "SITEMAP_MAX_URLS", 1)
        check_setting(max_urls <= PROTOCOL_MAX_URLS, "SITEMAP_MAX_URLS", max_urls,
                      f"at most the protocol's {PROTOCOL_MAX_URLS}")
        max_bytes = int_at_least(settings, "SITEMAP_MAX_BYTES", 1)
        check_setting(max_bytes <= PROTOCOL_MAX_BYTES, "SITEMAP_MAX_BYTES", max_bytes,
                      f"at most the protocol's {PROTOCOL_MAX_BYTES} bytes")
        return cls(bool_setting(settings, "SITEMAP_ENABLED", "True or False"), max_urls, max_bytes)


def authority_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def sitemap_body(response: Response, max_bytes: int) -> tuple[bytes | None, bool]:
    """(the XML of a sitemap response, whether it was cut at ``max_bytes``); None: no sitemap."""
    body = response.body
    if gzip_magic_number(response):
        try:
            return gunzip(body, max_size=max_bytes), False
        except ValueError:  # past max_bytes: keep the first max_bytes, the parser recovers
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body, max_bytes), True
        except (OSError, EOFError):
            return None, False
    if body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] != b"<":
        return None, False
    return body[:max_bytes], len(body) > max_bytes


class _Context:
    """One sitemap response being read: its spider, config and stats."""

    def __init__(self, spider: Spider, response: Response, config: SitemapConfig):
        self.spider = spider
        self.response = response
        self.config = config
        self.stats: StatsCollector = spider.crawler.stats
        self.nesting = int(response.meta.get(SITEMAP_NESTING, 0))
        self.domain = registered_domain(host_of(response.url))

    def count(self, name: str, n: int = 1) -> None:
        if n:
            self.stats.inc_value(f"sitemap/{name}", n)

    def accept(self, raw: str, page: bool) -> str | None:
        """The canonical URL if the spider's scope rules take it, else None (counted)."""
        try:
            url = canonicalize(raw)
        except (BadURL, ValueError):
            self.count("filtered/invalid")
            return None
        in_scope = getattr(self.spider, "in_scope", None)
        if in_scope is not None and not in_scope(url, self.domain):
            self.count("filtered/out_of_scope")
            return None
        wanted = getattr(self.spider, "wanted", None)
        if page and wanted is not None and not wanted(url):
            self.count("filtered/denied")
            return None
        return url

    def sitemap_request(self, url: str) -> Request | None:
        if self.nesting + 1 > MAX_NESTING:
            self.count("too_deep")
            return None
        accepted = self.accept(url, page=False)
        if accepted is None:
            return None
        self.count("sitemaps")
        return Request(accepted, callback=getattr(self.spider, CALLBACK), errback=_errback(self.spider),
                       meta={SITEMAP_NESTING: self.nesting + 1, DOWNLOAD_MAXSIZE: self.config.max_bytes})

    def page_request(self, entry: dict[str, Any]) -> Request | None:
        url = self.accept(entry["loc"], page=True)
        if url is None:
            return None
        meta: dict[str, Any] = {CANONICAL: url}
        if entry.get("lastmod"):
            meta[SITEMAP_LASTMOD] = entry["lastmod"]
        self.count("urls")
        return Request(url, callback=self.spider.parse, errback=_errback(self.spider), meta=meta)


def _errback(spider: Spider) -> Any:
    return getattr(spider, "on_error", None)


def discovery_request(spider: Spider, authority: str) -> Request:
    """The request that starts an authority's sitemaps: its robots.txt, read by ``parse_sitemap``."""
    return Request(authority + ROBOTS_PATH, callback=getattr(spider, CALLBACK), errback=_errback(spider),
                   meta={SITEMAP_NESTING: 0})


def sitemap_requests(spider: Spider, response: Response) -> Iterator[Request]:
    """What a robots.txt or sitemap response brings: sitemap and page requests (see the module)."""
    config = SitemapConfig.from_settings(spider.crawler.settings)
    ctx = _Context(spider, response, config)
    requested = (response.meta.get(REDIRECT_URLS) or [response.url])[0]
    if ctx.nesting == 0 and requested.endswith(ROBOTS_PATH):  # robots.txt, maybe redirected
        yield from _from_robots(ctx)
        return
    if response.status != 200:
        ctx.count(f"status/{response.status}")
        return
    body, cut_bytes = sitemap_body(response, config.max_bytes)
    if body is None:
        ctx.count("invalid")
        return
    ctx.count("files")
    if gzip_magic_number(response):
        ctx.count("gzip")
    if cut_bytes:
        ctx.count("cut/bytes")
        logger.warning("Sitemap %s is larger than %d bytes uncompressed (SITEMAP_MAX_BYTES): cut there",
                       response.url, config.max_bytes, extra={"spider": spider})
    try:
        sitemap = Sitemap(body)
    except (StopIteration, SyntaxError, ValueError):  # lxml found no root element
        ctx.count("invalid")
        return
    if sitemap.type == "sitemapindex":
        ctx.count("indexes")
        make = lambda entry: ctx.sitemap_request(entry["loc"])  # noqa: E731
    elif sitemap.type == "urlset":
        make = ctx.page_request
    else:
        ctx.count("invalid")
        return
    yield from _entries(ctx, sitemap, make)


def _from_robots(ctx: _Context) -> Iterator[Request]:
    response = ctx.response
    ctx.count("robots")
    urls = list(sitemap_urls_from_robots(response.body, base_url=response.url)) if response.status == 200 else []
    ctx.count("robots_sitemaps", len(urls))
    if not urls:
        ctx.count("fallback")
        urls = [urljoin(response.url, FALLBACK_PATH)]
    for url in urls:
        request = ctx.sitemap_request(url)
        if request is not None:
            yield request


def _entries(ctx: _Context, entries: Iterable[dict[str, Any]], make: Any) -> Iterator[Request]:
    seen = 0
    for entry in entries:
        seen += 1
        if seen > ctx.config.max_urls:
            continue  # counted below: the rest of the file is read only to count it
        request = make(entry)
        if request is not None:
            yield request
    if seen > ctx.config.max_urls:
        ctx.count("cut/urls")
        ctx.count("cut/urls_dropped", seen - ctx.config.max_urls)
        logger.warning("Sitemap %s lists %d entries, more than %d (SITEMAP_MAX_URLS): the rest is cut",
                       ctx.response.url, seen, ctx.config.max_urls, extra={"spider": ctx.spider})


class SitemapDiscovery:
    """Spider middleware: robots.txt of each new authority in the spider's output, read for
    sitemaps by the spider's ``parse_sitemap`` (see the module)."""

    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        self.seen = RecentSet(AUTHORITIES_TRACKED)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> SitemapDiscovery:
        config = SitemapConfig.from_settings(crawler.settings)
        if not config.enabled:
            raise NotConfigured  # off unless SITEMAP_ENABLED; no "Disabled" warning on a normal run
        return cls(crawler)

    def _with_discovery(self, element: Any) -> Iterator[Any]:
        if isinstance(element, Request) and element.url.startswith(("http://", "https://")):
            spider = self.crawler.spider
            if getattr(element.callback, "__name__", None) != CALLBACK and hasattr(spider, CALLBACK):
                authority = authority_of(element.url)
                if self.seen.add(authority):
                    self.crawler.stats.inc_value("sitemap/discovered")
                    yield discovery_request(spider, authority)
        yield element

    async def process_start(self, start: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for element in start:
            for out in self._with_discovery(element):
                yield out

    def process_spider_output(self, response: Response, result: Iterable[Any]) -> Iterable[Any]:
        for element in result:
            yield from self._with_discovery(element)

    async def process_spider_output_async(self, response: Response,
                                          result: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for element in result:
            for out in self._with_discovery(element):
                yield out
