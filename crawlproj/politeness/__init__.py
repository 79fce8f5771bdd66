"""robots.txt (RFC 9309) and per-key politeness state of a node, shared by its components.

    from crawlproj.politeness import get_politeness
    pol = get_politeness(crawler)           # one per crawler, built from its settings
    pol.delay_for(key); pol.next_allowed(key); pol.record_fetch_start(key, time.time())
    state = pol.export_partitions({3, 17}, 1024); other.import_state(state)   # handoff

The middleware that enforces it is :class:`crawlproj.middlewares.robots_throttle.RobotsThrottleMiddleware`.
"""

from __future__ import annotations

from .core import (
    CRAWLER_ATTRIBUTE,
    Politeness,
    PolitenessConfig,
    RobotsVerdict,
    get_politeness,
    node_name,
    state_file_of,
    throttle_enabled,
)
from .robots import MAX_ROBOTS_BYTES, MAX_ROBOTS_REDIRECTS, ParsedRobots, RobotsRow, parse_robots
from .store import KeyRow, StateStore

__all__ = [
    "CRAWLER_ATTRIBUTE",
    "MAX_ROBOTS_BYTES",
    "MAX_ROBOTS_REDIRECTS",
    "KeyRow",
    "ParsedRobots",
    "Politeness",
    "PolitenessConfig",
    "RobotsRow",
    "RobotsVerdict",
    "StateStore",
    "get_politeness",
    "node_name",
    "parse_robots",
    "state_file_of",
    "throttle_enabled",
]
