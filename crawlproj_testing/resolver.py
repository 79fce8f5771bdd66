"""A DNS resolver that answers reserved test names locally, so no /etc/hosts edit is needed.

Turned on by the :class:`crawlproj_testing.addons.SyntheticWeb` add-on, which also gives the
``SYNTHWEB_*`` settings their defaults; production settings never name it.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from scrapy.resolver import CachingThreadedResolver
from twisted.internet import defer

from crawlproj.setting_checks import list_setting

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings
    from twisted.internet.base import ReactorBase

RESOLVER = f"{__name__}.SyntheticResolver"


def resolve_config(settings: BaseSettings) -> tuple[tuple[str, ...], str]:
    """(``SYNTHWEB_RESOLVE_SUFFIXES``, ``SYNTHWEB_RESOLVE_ADDRESS``); ValueError naming the bad one."""
    suffixes = tuple(s.lower().lstrip(".") for s in list_setting(settings, "SYNTHWEB_RESOLVE_SUFFIXES", str))
    for suffix in suffixes:
        if not suffix or any(c.isspace() or c in "/:@" for c in suffix):
            raise ValueError(f"SYNTHWEB_RESOLVE_SUFFIXES: expected domain suffixes like ['test'], "
                             f"got a bad suffix {suffix!r}")
    address = str(settings.get("SYNTHWEB_RESOLVE_ADDRESS", "127.0.0.1"))
    try:
        ipaddress.IPv4Address(address)  # getHostByName answers IPv4
    except ValueError:
        raise ValueError(f"SYNTHWEB_RESOLVE_ADDRESS: expected an IPv4 address, got {address!r}") from None
    return suffixes, address


class SyntheticResolver(CachingThreadedResolver):
    """Resolves names under ``SYNTHWEB_RESOLVE_SUFFIXES`` to ``SYNTHWEB_RESOLVE_ADDRESS``.

    Every other name goes to the normal (caching, threaded) resolver; with no suffixes it behaves
    exactly like Scrapy's default.
    """

    def __init__(self, reactor: ReactorBase, cache_size: int, timeout: float,
                 suffixes: tuple[str, ...] = (), address: str = "127.0.0.1"):
        super().__init__(reactor, cache_size, timeout)
        self.suffixes = suffixes
        self.address = address

    @classmethod
    def from_crawler(cls, crawler: Crawler, reactor: ReactorBase) -> Any:
        settings = crawler.settings
        suffixes, address = resolve_config(settings)
        cache_size = settings.getint("DNSCACHE_SIZE") if settings.getbool("DNSCACHE_ENABLED") else 0
        return cls(reactor, cache_size, settings.getfloat("DNS_TIMEOUT"), suffixes, address)

    def matches(self, name: str) -> bool:
        name = name.lower().rstrip(".")
        return any(name == s or name.endswith("." + s) for s in self.suffixes)

    def getHostByName(self, name: str, timeout: Any = ()) -> defer.Deferred[str]:
        if self.suffixes and self.matches(name):
            return defer.succeed(self.address)
        return super().getHostByName(name, timeout)
