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
#: Bytes received so far of a robots.txt request (cut at MAX_ROBOTS_BYTES).
ROBOTS_BYTES = "_robots_throttle_bytes"
#: The request's answer was recorded by the politeness gate (a failure left no answer).
ANSWERED = "_robots_throttle_answered"

CRAWLPROJ_KEYS = frozenset({LEASE, PARENT, KEY, PARTITION, WAKE, OWN_ERRBACK, CANONICAL,
                            ROBOTS_FETCH, ROBOTS_BYTES, ANSWERED})

# -- Scrapy's keys that crawlproj reads or sets ---------------------------------------------------
DEPTH = "depth"  # hops from a seed (DepthMiddleware); travels as the wire request's "d"
DOWNLOAD_SLOT = "download_slot"  # = KEY: one downloader slot per politeness key
DOWNLOAD_LATENCY = "download_latency"
REDIRECT_URLS = "redirect_urls"
RETRY_TIMES = "retry_times"
DONT_OBEY_ROBOTSTXT = "dont_obey_robotstxt"
PROXY = "proxy"

#: Scrapy's keys of one download attempt: a leased request starts its attempts afresh.
SCRAPY_ATTEMPT_KEYS = frozenset({
    DEPTH, DOWNLOAD_SLOT, DOWNLOAD_LATENCY, "download_timeout", "redirect_times", "redirect_ttl",
    REDIRECT_URLS, "redirect_reasons", RETRY_TIMES, "handle_httpstatus_list",
    "handle_httpstatus_all", DONT_OBEY_ROBOTSTXT,
})

#: Never on the wire.
LOCAL = CRAWLPROJ_KEYS | SCRAPY_ATTEMPT_KEYS
