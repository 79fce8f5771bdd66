"""Every ``request.meta`` key crawlproj sets or reads, and which of them never go on the wire.

A key is named here once; modules import the constant. ``LOCAL`` lists the keys that describe
one download attempt or this node's bookkeeping: :mod:`crawlproj.wire.request` drops them when
a request travels to the dispatcher, so another node never sees this node's state.
"""

from __future__ import annotations

# -- crawlproj's own keys (all node-local) ------------------------------------------------------
#: Lease id of a request leased from the dispatcher (crawlproj.scheduling.leases).
LEASE = "_lease"
#: Lease id of the response that discovered this request (crawlproj.scheduling.leases).
PARENT = "_parent"
#: Politeness key of the request, computed once (crawlproj.politeness.gate); also its slot.
KEY = "politeness_key"
#: Partition of the request's key (crawlproj.scheduling.scheduler).
PARTITION = "_part"
#: A queued request re-injected through engine.crawl() to wake the engine (the scheduler).
WAKE = "_wake"
#: Name of the spider's own errback of a leased request (the scheduler installs its own).
OWN_ERRBACK = "_eb"
#: Canonical URL of a link, set by a spider that filtered it already (crawlproj.linkfilter).
CANONICAL = "_canon"
#: A robots.txt request of RobotsThrottleMiddleware (never filtered by traps or robots).
ROBOTS_FETCH = "robots_throttle_fetch"
#: (body bytes received so far, monotonic time the last of them arrived) of the request's
#: download attempt: a robots.txt body is cut at MAX_ROBOTS_BYTES, a key's delay counts from
#: the last byte of an answer (crawlproj.middlewares.robots_throttle).
RECEIVED = "_robots_throttle_received"
#: The request's answer was recorded by the politeness gate (a failure left no answer).
ANSWERED = "_robots_throttle_answered"

#: Outcome of a revisit's download: "not_modified", "unchanged" or "changed"
#: (crawlproj.middlewares.revisit; the spider and the MongoDB pipeline read it).
REVISIT_OUTCOME = "_revisit"
#: The conditional headers this node added to the request (removed again on a redirect).
REVISIT_SENT = "_revisit_sent"

CRAWLPROJ_KEYS = frozenset({LEASE, PARENT, KEY, PARTITION, WAKE, OWN_ERRBACK, CANONICAL,
                            ROBOTS_FETCH, RECEIVED, ANSWERED, REVISIT_OUTCOME, REVISIT_SENT})

# -- crawlproj's keys that travel: what the frontier knows of a URL, handed out with it ----------
#: Stored validators and content hash of a page (crawlproj.middlewares.revisit): a request that
#: carries them is a revisit, sent as a conditional GET.
REVISIT_ETAG = "revisit_etag"
REVISIT_LAST_MODIFIED = "revisit_last_modified"  # as the server sent it (an HTTP date)
REVISIT_CONTENT_HASH = "revisit_content_hash"  # SHA-1 hex of the body (PageItem.content_hash)
#: 1 on a request the dispatcher's schedule hands out again (crawlproj.dispatcher.revisits): the
#: node's per-key queues give revisits at most REVISIT_SHARE of a key's fetches.
REVISIT = "revisit"
#: <lastmod> of the sitemap entry that brought the URL, W3C datetime as written (crawlproj.sitemaps).
SITEMAP_LASTMOD = "sitemap_lastmod"
#: Sitemap index levels above a sitemap request (crawlproj.sitemaps caps the nesting).
SITEMAP_NESTING = "sitemap_nesting"

WIRE_KEYS = frozenset({REVISIT, REVISIT_ETAG, REVISIT_LAST_MODIFIED, REVISIT_CONTENT_HASH, SITEMAP_LASTMOD,
                       SITEMAP_NESTING})

# -- Scrapy's keys that crawlproj reads or sets ---------------------------------------------------
DEPTH = "depth"  # hops from a seed (DepthMiddleware); travels as the wire request's "d"
DOWNLOAD_SLOT = "download_slot"  # = KEY: one downloader slot per politeness key
DOWNLOAD_LATENCY = "download_latency"
REDIRECT_URLS = "redirect_urls"
RETRY_TIMES = "retry_times"
DONT_OBEY_ROBOTSTXT = "dont_obey_robotstxt"
PROXY = "proxy"
DOWNLOAD_MAXSIZE = "download_maxsize"  # per request; sitemaps get the protocol's 50 MiB

#: Scrapy's keys of one download attempt: a leased request starts its attempts afresh.
SCRAPY_ATTEMPT_KEYS = frozenset({
    DEPTH, DOWNLOAD_SLOT, DOWNLOAD_LATENCY, "download_timeout", "redirect_times", "redirect_ttl",
    REDIRECT_URLS, "redirect_reasons", RETRY_TIMES, "handle_httpstatus_list",
    "handle_httpstatus_all", DONT_OBEY_ROBOTSTXT,
})

#: Never on the wire.
LOCAL = CRAWLPROJ_KEYS | SCRAPY_ATTEMPT_KEYS
