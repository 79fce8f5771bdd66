"""Items produced by crawlproj spiders."""

from __future__ import annotations

import scrapy


class PageItem(scrapy.Item):
    """One fetched page, whatever its status or content type."""

    url = scrapy.Field()  # the URL requested (before redirects)
    final_url = scrapy.Field()  # the URL that answered (after redirects)
    status = scrapy.Field()
    headers = scrapy.Field()  # dict of the headers named in BROAD_ITEM_HEADERS
    title = scrapy.Field()  # None for non-HTML responses
    content_length = scrapy.Field()  # body bytes as received
    content_hash = scrapy.Field()  # SHA-1 hex of the body
    outlinks = scrapy.Field()  # links found on the page (before scope and dedup filtering)
    depth = scrapy.Field()
    fetched_at = scrapy.Field()  # ISO 8601 UTC
    revisit = scrapy.Field()  # a revisit's outcome (crawlproj.middlewares.revisit); unset on a first fetch
