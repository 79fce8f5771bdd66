"""Settings of a node's robots.txt and politeness: read once, checked, named in every error.

Defaults and meanings live in crawlproj/settings.py; ``from_settings`` is pure and raises
ValueError naming the setting, the value and what is expected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crawlproj.nodeid import node_name
from crawlproj.setting_checks import (
    bool_setting,
    check_setting,
    dict_setting,
    float_at_least,
    int_at_least,
    positive_float,
    typed_setting,
)

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

#: Hard limit of ROBOTS_CACHE_TTL: RFC 9309 2.4, a cached copy SHOULD NOT be used for more
#: than 24 hours unless robots.txt is unreachable.
MAX_TTL = 24 * 3600.0
KEY_KINDS = ("domain", "host")


def key_kind(settings: BaseSettings) -> str:
    """POLITENESS_KEY: what a politeness key is, for the gate and for routing alike."""
    key_by = str(settings.get("POLITENESS_KEY") or "domain")
    check_setting(key_by in KEY_KINDS, "POLITENESS_KEY", key_by, f"one of {KEY_KINDS}")
    return key_by


def throttle_enabled(settings: BaseSettings) -> bool:
    """ROBOTS_THROTTLE_ENABLED: robots.txt and politeness by crawlproj (else Scrapy's robots.txt)."""
    return bool_setting(settings, "ROBOTS_THROTTLE_ENABLED")


def state_file_source(settings: BaseSettings) -> str:
    """The setting that decides where the state file is: for error messages."""
    return "ROBOTS_STATE_FILE" if str(settings.get("ROBOTS_STATE_FILE") or "").strip() else "CRAWLPROJ_STATE_DIR"


@dataclass(frozen=True)
class PolitenessConfig:
    """The settings Politeness runs on; defaults and meanings live in crawlproj/settings.py."""

    state_file: str
    key_by: str
    delay: float
    key_delays: dict[str, float]
    crawl_delay_max: float
    adaptive: bool
    adaptive_factor: float
    adaptive_max_delay: float
    ttl: float
    retry_delay: float
    retry_max_delay: float
    fallback_after: float
    robots_fetch_timeout: float
    postpone_max: float
    robots_memory: int
    keys_memory: int
    flush_interval: float
    user_agent: str

    @classmethod
    def from_settings(cls, settings: BaseSettings, spider: Any = None) -> PolitenessConfig:
        key_by = key_kind(settings)
        raw_delay = settings.get("ROBOTS_THROTTLE_DELAY")
        delay = float_at_least(settings, "DOWNLOAD_DELAY" if raw_delay in (None, "", "None")
                               else "ROBOTS_THROTTLE_DELAY")
        raw_key_delays = dict_setting(settings, "ROBOTS_THROTTLE_KEY_DELAYS",
                                       "a dict {politeness key: seconds}")
        key_delays: dict[str, float] = {}
        for key, value in raw_key_delays.items():
            try:
                seconds = float(value)
            except (TypeError, ValueError):
                seconds = -1.0
            check_setting(seconds >= 0, "ROBOTS_THROTTLE_KEY_DELAYS", {key: value},
                          "seconds >= 0 for every key")
            key_delays[str(key).lower()] = seconds
        ttl = float(typed_setting(settings, "ROBOTS_CACHE_TTL", settings.getfloat,
                                  f"a number of seconds in (0, {MAX_TTL:.0f}] (RFC 9309: at most 24 hours)",
                                  lambda v: 0 < v <= MAX_TTL))
        retry_delay = positive_float(settings, "ROBOTS_RETRY_DELAY", "seconds > 0")
        retry_max = float_at_least(settings, "ROBOTS_RETRY_MAX_DELAY", retry_delay,
                                   f"seconds >= ROBOTS_RETRY_DELAY ({retry_delay})")
        factor = positive_float(settings, "ROBOTS_THROTTLE_ADAPTIVE_FACTOR")
        flush = positive_float(settings, "ROBOTS_STORE_FLUSH_INTERVAL", "seconds > 0")
        user_agent = settings.get("ROBOTSTXT_USER_AGENT") or settings.get("USER_AGENT") or "*"
        state_file = state_file_of(settings, spider)
        return cls(
            state_file=state_file,
            key_by=key_by,
            delay=delay,
            key_delays=key_delays,
            crawl_delay_max=float_at_least(settings, "ROBOTS_CRAWL_DELAY_MAX"),
            adaptive=bool_setting(settings, "ROBOTS_THROTTLE_ADAPTIVE"),
            adaptive_factor=factor,
            adaptive_max_delay=float_at_least(settings, "ROBOTS_THROTTLE_ADAPTIVE_MAX_DELAY"),
            ttl=ttl,
            retry_delay=retry_delay,
            retry_max_delay=retry_max,
            fallback_after=float_at_least(settings, "ROBOTS_FALLBACK_AFTER"),
            robots_fetch_timeout=positive_float(settings, "ROBOTS_FETCH_TIMEOUT", "seconds > 0"),
            postpone_max=float_at_least(settings, "ROBOTS_POSTPONE_MAX", 0.0, "seconds >= 0"),
            robots_memory=int_at_least(settings, "ROBOTS_CACHE_MEMORY", 1),
            keys_memory=int_at_least(settings, "ROBOTS_THROTTLE_MEMORY", 1),
            flush_interval=flush,
            user_agent=str(user_agent),
        )


def state_file_of(settings: BaseSettings, spider: Any = None) -> str:
    """``ROBOTS_STATE_FILE``, or ``<CRAWLPROJ_STATE_DIR>/<node name>/politeness.sqlite3``."""
    explicit = str(settings.get("ROBOTS_STATE_FILE") or "").strip()
    if explicit:
        return explicit
    state_dir = str(settings.get("CRAWLPROJ_STATE_DIR") or "state")
    name = node_name(settings, spider)
    return os.path.join(state_dir, name, "politeness.sqlite3")
