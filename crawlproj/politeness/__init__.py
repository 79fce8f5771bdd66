"""robots.txt (RFC 9309) and per-key politeness of a node.

    from crawlproj.politeness.gate import PolitenessGate
    gate = crawler.get_extension(PolitenessGate)     # the node's one gate (a Scrapy extension)
    key = gate.key_of(request); gate.may_start(key, time.monotonic())
    state = gate.export_partitions({3, 17}, 1024); other.import_state(state)   # handoff

Modules: config (settings), gate (the one clock and key), core (per-key state, handoff),
robots_cache (the cache policy), robots (RFC 9309 rows and parsing), store (SQLite), lru,
timing (latency samplers). Import from them: this package imports nothing, so the synthetic
web can use the RFC 9309 outcomes of ``robots`` without loading Scrapy. The middleware that
fetches robots.txt and configures the downloader slots is
:class:`crawlproj.middlewares.robots_throttle.RobotsThrottleMiddleware`.
"""
