"""Conditional GET for revisits: stored validators out, "changed or not" back.

A request is a revisit when its meta carries what the frontier stored of the page
(``crawlproj.meta.REVISIT_ETAG``, ``REVISIT_LAST_MODIFIED``, ``REVISIT_CONTENT_HASH``; they
travel on the wire, so the dispatcher can hand them out with the revisit). The middleware sends
``If-None-Match`` / ``If-Modified-Since`` (``REVISIT_CONDITIONAL_GET``) and sets the outcome in
``meta[REVISIT_OUTCOME]``:

- ``not_modified``: the server answered 304;
- ``unchanged``: a 200 whose content hash equals the stored one;
- ``changed``: any other final answer.

A spider turns the first two into :func:`history_item` (no parse, no links: they are known), and
the MongoDB pipeline then updates only the page's history fields. A spider that revisits must
accept 304 (``handle_httpstatus_list``). Stats: ``revisit/requests``, ``revisit/conditional``,
``revisit/not_modified``, ``revisit/unchanged``, ``revisit/changed``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from crawlproj.items import PageItem
from crawlproj.meta import (
    REDIRECT_URLS,
    REVISIT_CONTENT_HASH,
    REVISIT_ETAG,
    REVISIT_LAST_MODIFIED,
    REVISIT_OUTCOME,
    REVISIT_SENT,
)
from crawlproj.setting_checks import bool_setting

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.settings import BaseSettings

NOT_MODIFIED = "not_modified"
UNCHANGED = "unchanged"
CHANGED = "changed"
#: Outcomes whose stored copy is still current: only the history is written.
CURRENT = frozenset({NOT_MODIFIED, UNCHANGED})
OUTCOMES = (NOT_MODIFIED, UNCHANGED, CHANGED)
CONDITIONAL_HEADERS = (b"If-None-Match", b"If-Modified-Since")


def content_hash(body: bytes) -> str:
    """The content hash of a page (``PageItem.content_hash``): SHA-1 hex of the body."""
    return hashlib.sha1(body).hexdigest()


def is_revisit(request: Request) -> bool:
    meta = request.meta
    return bool(meta.get(REVISIT_ETAG) or meta.get(REVISIT_LAST_MODIFIED) or meta.get(REVISIT_CONTENT_HASH))


def history_item(response: Response) -> PageItem:
    """The item of a revisit whose stored copy is current: URL, status, stored hash, when."""
    meta = response.meta
    redirects = meta.get(REDIRECT_URLS)
    return PageItem(
        url=redirects[0] if redirects else response.url,
        status=response.status,
        content_hash=meta.get(REVISIT_CONTENT_HASH),
        fetched_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        revisit=meta[REVISIT_OUTCOME],
    )


@dataclass(frozen=True)
class RevisitConfig:
    conditional_get: bool

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> RevisitConfig:
        return cls(bool_setting(settings, "REVISIT_CONDITIONAL_GET", "True or False"))


class ConditionalGetMiddleware:
    """Downloader middleware: validators on revisits, their outcome in the meta (see the module)."""

    def __init__(self, crawler: Crawler, config: RevisitConfig):
        self.stats = crawler.stats
        self.config = config

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> ConditionalGetMiddleware:
        return cls(crawler, RevisitConfig.from_settings(crawler.settings))

    def process_request(self, request: Request) -> None:
        meta = request.meta
        sent = meta.get(REVISIT_SENT)
        if sent and meta.get(REDIRECT_URLS):
            # A redirect copies the headers: the stored validators are not the target's.
            for name in sent:
                request.headers.pop(name, None)
            meta[REVISIT_SENT] = ()
            return None
        if sent is not None or not is_revisit(request):
            return None
        self.stats.inc_value("revisit/requests")
        added = []
        if self.config.conditional_get:
            for name, key in zip(CONDITIONAL_HEADERS, (REVISIT_ETAG, REVISIT_LAST_MODIFIED)):
                value = meta.get(key)
                if value and name not in request.headers:
                    request.headers[name] = value
                    added.append(name)
        if added:
            self.stats.inc_value("revisit/conditional")
        meta[REVISIT_SENT] = tuple(added)
        return None

    def process_response(self, request: Request, response: Response) -> Response:
        meta = request.meta
        if REVISIT_SENT not in meta or 300 <= response.status < 400 and response.status != 304:
            return response  # not a revisit, or a redirect still to follow
        stored = meta.get(REVISIT_CONTENT_HASH)
        if response.status == 304 and meta[REVISIT_SENT]:
            outcome = NOT_MODIFIED
        elif response.status == 200 and stored and content_hash(response.body) == stored:
            outcome = UNCHANGED
        else:
            outcome = CHANGED
        meta[REVISIT_OUTCOME] = outcome
        self.stats.inc_value(f"revisit/{outcome}")
        return response
