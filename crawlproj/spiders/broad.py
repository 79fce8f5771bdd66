"""The broad-crawl spider: follow links from seeds within a scope, one item per fetched page.

    scrapy crawl broad -a seeds=seeds.txt           # a file, one URL a line, '#' comments
    scrapy crawl broad -a seeds=http://a.test/,http://b.test/
    scrapy crawl broad -a seeds=redis               # the list or set "broad:start_urls"

Arguments (``-a``) override the matching ``BROAD_*`` settings: ``scope``, ``allowed_domains``,
``allow``, ``deny`` (lists as settings take them: comma-separated, or a JSON list) and ``max_depth`` (default: Scrapy's ``DEPTH_LIMIT``; here 0
means "the seeds only", where ``DEPTH_LIMIT = 0`` means no limit).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import scrapy
from scrapy.http import Response, TextResponse
from scrapy.utils.response import get_base_url

from crawlproj.items import PageItem
from crawlproj.linkfilter import RecentSet, recent_links
from crawlproj.meta import CANONICAL, DEPTH, REDIRECT_URLS, REVISIT_OUTCOME
from crawlproj.middlewares.revisit import CURRENT, content_hash, history_item
from crawlproj.pagelinks import links_and_title
from crawlproj.refusals import RefusalCheck
from crawlproj.setting_checks import HEADER_NAME, int_at_least, list_setting, parse_list
from crawlproj.sitemaps import sitemap_requests
from crawlproj.wire.urls import BadURL, LinkJoiner, canonicalize, host_of, registered_domain

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

SCOPES = ("domain", "allowed", "any")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _seed_url(raw: str) -> str:
    """A seed is a URL or, in the scrapy-redis JSON format, an object with a "url"."""
    raw = raw.strip()
    if raw.startswith("{"):
        data = json.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            raise BadURL(f"JSON seed without a 'url' string: {raw[:200]!r}")
        raw = data["url"]
    return canonicalize(raw)


def _compile(setting: str, patterns: list[str]) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ValueError(f"{setting}: expected regular expressions, got {pattern!r} ({exc})") from exc
    return tuple(compiled)


def _list(settings: BaseSettings, name: str, arg_name: str, arg: str | None) -> list[str]:
    """A list setting, or the spider argument that overrides it when given and not empty."""
    return parse_list(f"-a {arg_name}", arg, str) or list_setting(settings, name, str)


@dataclass(frozen=True)
class BroadConfig:
    """The BROAD_* settings, each overridden by its spider argument (``-a scope=any``)."""

    scope: str
    scope_domains: frozenset[str]
    allow_res: tuple[re.Pattern[str], ...]
    deny_res: tuple[re.Pattern[str], ...]
    item_headers: tuple[str, ...]
    redis_url: str
    redis_key: str
    max_depth: int | None

    @classmethod
    def from_settings(cls, settings: BaseSettings, spider_name: str = "broad", scope: str | None = None,
                      allowed_domains: str | None = None, allow: str | None = None, deny: str | None = None,
                      max_depth: str | None = None) -> BroadConfig:
        scope = (scope or settings.get("BROAD_SCOPE")).lower()
        if scope not in SCOPES:
            raise ValueError(f"BROAD_SCOPE (or -a scope): expected one of {SCOPES}, got {scope!r}")
        domains = frozenset(d.lower().lstrip(".") for d in
                            _list(settings, "BROAD_ALLOWED_DOMAINS", "allowed_domains", allowed_domains))
        for domain in domains:
            if not domain or any(c.isspace() or c in "/:@?#" for c in domain):
                raise ValueError(f"BROAD_ALLOWED_DOMAINS (or -a allowed_domains): expected domain names like "
                                 f"'example.com', got {domain!r}")
        allow_res = _compile("BROAD_ALLOW", _list(settings, "BROAD_ALLOW", "allow", allow))
        deny_res = _compile("BROAD_DENY", _list(settings, "BROAD_DENY", "deny", deny))
        item_headers = tuple(list_setting(settings, "BROAD_ITEM_HEADERS", str))
        for header in item_headers:
            if not HEADER_NAME.match(header):
                raise ValueError(f"BROAD_ITEM_HEADERS: expected HTTP header names, got {header!r}")
        redis_url = settings.get("BROAD_REDIS_URL")
        if not isinstance(redis_url, str) or not redis_url.startswith(REDIS_SCHEMES):
            raise ValueError(f"BROAD_REDIS_URL: expected a redis://, rediss:// or unix:// URL, got {redis_url!r}")
        key = settings.get("BROAD_REDIS_START_URLS_KEY")
        try:
            redis_key = str(key) % {"name": spider_name}
        except (KeyError, ValueError, TypeError):
            raise ValueError(f"BROAD_REDIS_START_URLS_KEY: expected a key where %(name)s may stand for the "
                             f"spider's name, got {key!r}") from None
        depth: int | None = int_at_least(settings, "DEPTH_LIMIT", 0) or None  # Scrapy: 0 = no limit
        if max_depth is not None:
            try:
                depth = int(max_depth)
            except ValueError:
                raise ValueError(f"-a max_depth: expected an integer, got {max_depth!r}") from None
            if depth < 0:
                raise ValueError(f"-a max_depth: expected >= 0, got {depth}")
        if scope == "allowed" and not domains:
            raise ValueError("BROAD_SCOPE is 'allowed' but BROAD_ALLOWED_DOMAINS (-a allowed_domains) is empty")
        return cls(scope, domains, allow_res, deny_res, item_headers, redis_url, redis_key, depth)


class BroadSpider(scrapy.Spider):
    name = "broad"
    # Error pages become items too; redirects stay with RedirectMiddleware; 304 answers a revisit.
    handle_httpstatus_list = [304, *range(400, 600)]
    config: BroadConfig
    refusal_check: RefusalCheck
    _recent: RecentSet | None = None
    _joiner: LinkJoiner | None = None

    def __init__(self, seeds: str | None = None, scope: str | None = None,
                 allowed_domains: str | None = None, allow: str | None = None,
                 deny: str | None = None, max_depth: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.seeds_arg = seeds
        self.overrides = {"scope": scope, "allowed_domains": allowed_domains, "allow": allow, "deny": deny,
                          "max_depth": max_depth}

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> BroadSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        spider.config = BroadConfig.from_settings(crawler.settings, spider.name, **spider.overrides)
        spider.refusal_check = RefusalCheck.from_crawler(crawler)
        return spider

    @property
    def recent(self) -> RecentSet:
        """Links this process saw lately (the RecentLinks extension, shared with the scheduler)."""
        if self._recent is None:
            self._recent = recent_links(self.crawler)
        return self._recent

    # -- seeds ------------------------------------------------------------------------------------

    async def start(self) -> AsyncIterator[Any]:
        raw_seeds = await self._raw_seeds()
        count = 0
        for raw in raw_seeds:
            try:
                url = _seed_url(raw)
            except (BadURL, ValueError) as exc:
                self.crawler.stats.inc_value("broad/seeds/invalid")
                logger.error("Ignoring bad seed %r: %s", raw[:200], exc, extra={"spider": self})
                continue
            if self.config.scope == "allowed" and not self.in_scope(url, ""):  # as Scrapy's offsite filter
                self.crawler.stats.inc_value("broad/seeds/out_of_scope")
                logger.info("Ignoring seed %s: not in BROAD_ALLOWED_DOMAINS", url[:300], extra={"spider": self})
                continue
            count += 1
            yield scrapy.Request(url, callback=self.parse, errback=self.on_error)
        self.crawler.stats.set_value("broad/seeds/count", count)
        if not count:
            logger.info("No seeds given to the spider (-a seeds=FILE|URL,URL|redis); "
                        "under the DispatcherScheduler the dispatcher holds them", extra={"spider": self})

    async def _raw_seeds(self) -> list[str]:
        arg = self.seeds_arg
        if not arg:
            return []
        if arg == "redis" or arg.startswith(("redis://", "rediss://", "unix://")):
            return await self._redis_seeds(self.config.redis_url if arg == "redis" else arg)
        if "://" not in arg and os.path.exists(arg):
            with open(arg, encoding="utf-8") as f:
                return [line for line in (raw.strip() for raw in f) if line and not line.startswith("#")]
        return parse_list("-a seeds", arg, str)

    async def _redis_seeds(self, url: str) -> list[str]:
        # redis.asyncio runs on the asyncio reactor's loop: no thread, no blocking call.
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url)
        try:
            kind = (await client.type(self.config.redis_key)).decode()
            if kind == "list":
                raw = await client.lpop(self.config.redis_key, await client.llen(self.config.redis_key))
            elif kind == "set":
                raw = await client.spop(self.config.redis_key, await client.scard(self.config.redis_key))
            elif kind == "none":
                raw = []
            else:
                raise ValueError(f"Redis key {self.config.redis_key!r} is a {kind}, expected a list or a set")
        finally:
            await client.aclose()
        return [r.decode("utf-8", "replace") for r in raw or []]

    # -- pages ------------------------------------------------------------------------------------

    def in_scope(self, url: str, page_domain: str) -> bool:
        return self._in_scope(host_of(url), page_domain)

    def _in_scope(self, host: str, page_domain: str) -> bool:
        if self.config.scope == "any":
            return True
        if self.config.scope == "domain" and registered_domain(host) == page_domain:
            return True
        return any(host == d or host.endswith("." + d) for d in self.config.scope_domains)

    def wanted(self, url: str) -> bool:
        if self.config.allow_res and not any(r.search(url) for r in self.config.allow_res):
            return False
        return not any(r.search(url) for r in self.config.deny_res)

    def parse(self, response: Response, **kwargs: Any) -> Iterator[Any]:
        if response.meta.get(REVISIT_OUTCOME) in CURRENT:  # the stored copy is current: no parse
            yield history_item(response)
            return
        links: list[str] = []
        is_html = isinstance(response, TextResponse) and b"html" in (
            response.headers.get(b"Content-Type") or b"html")
        if is_html and response.status < 600:
            # One parse for the links and the title (crawlproj.pagelinks), no lxml tree.
            links, title = links_and_title(response.text)  # type: ignore[union-attr]
            if response.status != 200:
                links = []
            yield self.make_item(response, len(links), title)
        else:
            yield self.make_item(response, 0, self.xpath_title(response))
        if self.config.max_depth is not None and response.meta.get(DEPTH, 0) >= self.config.max_depth:
            return
        if not links:
            return
        page_domain = registered_domain(host_of(response.url))
        joiner = self._joiner
        if joiner is None:
            joiner = self._joiner = LinkJoiner()
        # response.urljoin's base (the page URL or its <base href>), joined and canonicalized
        # through the cache: most links were on the pages of the same directory before.
        base = joiner.base(get_base_url(response))  # type: ignore[arg-type]
        join = joiner.join
        config = self.config
        any_scope = config.scope == "any"
        domain_scope = config.scope == "domain"
        filtered = bool(config.allow_res or config.deny_res)
        add_recent = self.recent.add
        invalid = out_of_scope = denied = repeated = 0
        fresh: list[str] = []  # the whole page first, the Requests after
        for href in links:
            joined = join(base, href)
            if type(joined) is not tuple:
                invalid += 1
                continue
            url, host = joined
            if not (any_scope or (domain_scope and registered_domain(host) == page_domain)
                    or self._in_scope(host, page_domain)):
                out_of_scope += 1
                continue
            if filtered and not self.wanted(url):
                denied += 1
                continue
            # Most links were seen lately: drop them before they cost a Request (exact dedup
            # stays with the dupefilter or the dispatcher). Scope first: it depends on the page.
            if not add_recent(url):
                repeated += 1
                continue
            fresh.append(url)
        stats = self.crawler.stats
        for name, count in (("invalid", invalid), ("out_of_scope", out_of_scope),
                            ("denied", denied), ("recent", repeated)):
            if count:
                stats.inc_value(f"broad/links/{name}", count)
        for url in fresh:
            yield scrapy.Request(url, callback=self.parse, errback=self.on_error, meta={CANONICAL: url})

    def parse_sitemap(self, response: Response, **kwargs: Any) -> Iterator[Any]:
        """robots.txt or a sitemap (crawlproj.sitemaps): requests for what it lists, in scope."""
        yield from sitemap_requests(self, response)

    @staticmethod
    def xpath_title(response: Response) -> str | None:
        """The title of a text response that is not HTML (XML, say), through Scrapy's selector."""
        if isinstance(response, TextResponse) and response.status < 600:
            try:
                return response.xpath("//title/text()").get()
            except ValueError:  # not markup after all
                return None
        return None

    def make_item(self, response: Response, outlinks: int, title: str | None) -> PageItem:
        redirects = response.request.meta.get(REDIRECT_URLS) if response.request else None
        headers = {}
        for name in self.config.item_headers:
            value = response.headers.get(name)
            if value is not None:
                headers[name] = value.decode("latin-1")
        item = PageItem(
            url=redirects[0] if redirects else response.url,
            final_url=response.url,
            status=response.status,
            headers=headers,
            title=title.strip() if title else None,
            content_length=len(response.body),
            content_hash=content_hash(response.body),
            outlinks=outlinks,
            depth=response.meta.get(DEPTH, 0),
            fetched_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        )
        if REVISIT_OUTCOME in response.meta:
            item["revisit"] = response.meta[REVISIT_OUTCOME]
        return item

    def on_error(self, failure: Any) -> None:
        self.refusal_check.failed(failure)
        self.crawler.stats.inc_value(f"broad/errors/{failure.type.__name__}")
        logger.info("Failed %s: %s", failure.request.url if hasattr(failure, "request") else "?",
                    failure.getErrorMessage(), extra={"spider": self})
