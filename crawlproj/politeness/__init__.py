"""robots.txt (RFC 9309) and per-key politeness of a node.

    from crawlproj.politeness.gate import PolitenessGate
    gate = crawler.get_extension(PolitenessGate)     # the node's one gate (a Scrapy extension)
    key = gate.key_of(request); gate.may_start(key, time.monotonic())
    state = gate.export_partitions({3, 17}, 1024); other.import_state(state)   # handoff

Modules: config (settings), gate (the one clock and key), core (per-key state, handoff),
robots_cache (the cache policy), robots (RFC 9309 rows and parsing), store (SQLite), lru,
timing (latency samplers). The middleware that fetches robots.txt and configures the
downloader slots is :class:`crawlproj.middlewares.robots_throttle.RobotsThrottleMiddleware`.
"""

from __future__ import annotations

from .config import PolitenessConfig, state_file_of, throttle_enabled
from .core import Politeness
from .robots import MAX_ROBOTS_BYTES, MAX_ROBOTS_REDIRECTS, ParsedRobots, RobotsRow, parse_robots
from .robots_cache import RobotsVerdict
from .store import KeyRow, StateStore

__all__ = [
    "MAX_ROBOTS_BYTES",
    "MAX_ROBOTS_REDIRECTS",
    "KeyRow",
    "ParsedRobots",
    "Politeness",
    "PolitenessConfig",
    "RobotsRow",
    "RobotsVerdict",
    "StateStore",
    "parse_robots",
    "state_file_of",
    "throttle_enabled",
]
