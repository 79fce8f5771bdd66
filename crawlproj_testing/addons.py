"""Scrapy add-ons of the test harness.

    ADDONS = {"crawlproj_testing.addons.SyntheticWeb": 900}     # or -s ADDONS='{"...": 900}'

:class:`SyntheticWeb` makes a crawl of the synthetic web work: names under
``SYNTHWEB_RESOLVE_SUFFIXES`` (default ``["test"]``) resolve to ``SYNTHWEB_RESOLVE_ADDRESS``
(default ``127.0.0.1``) through :class:`crawlproj_testing.resolver.SyntheticResolver`, and that
address joins ``SSRF_ALLOWED_NETWORKS`` so the SSRF guard lets the crawl reach it. Scrapy installs
the resolver from the process settings before any crawler exists, so enable the add-on in the
project or command-line settings, not in a spider's ``custom_settings``.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from scrapy.settings import SETTINGS_PRIORITIES

from crawlproj.security.ssrf import network_list
from crawlproj_testing.resolver import RESOLVER, resolve_config

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

PRIORITY = "addon"
DEFAULTS = {"SYNTHWEB_RESOLVE_SUFFIXES": ["test"], "SYNTHWEB_RESOLVE_ADDRESS": "127.0.0.1"}
ALLOWED = "SSRF_ALLOWED_NETWORKS"


def apply(settings: BaseSettings) -> None:
    """Set the resolver and its defaults (higher-priority values win); allow the address."""
    settings.set("TWISTED_DNS_RESOLVER", RESOLVER, priority=PRIORITY)
    for name, value in DEFAULTS.items():
        settings.set(name, value, priority=PRIORITY)
    _suffixes, address = resolve_config(settings)  # ValueError naming the setting
    network = ipaddress.ip_network(address)
    allowed = network_list(settings, ALLOWED)
    if network not in allowed:
        # appended at the setting's own priority: settings.py's [] (or a -s value) keeps its place
        priority = max(settings.getpriority(ALLOWED) or 0, SETTINGS_PRIORITIES[PRIORITY])
        settings.set(ALLOWED, [*map(str, allowed), str(network)], priority=priority)


class SyntheticWeb:
    """Crawl the synthetic web: its resolver, its names, its address allowed by the SSRF guard."""

    @classmethod
    def update_pre_crawler_settings(cls, settings: BaseSettings) -> None:
        apply(settings)  # the process settings: where Scrapy reads TWISTED_DNS_RESOLVER

    def update_settings(self, settings: BaseSettings) -> None:
        apply(settings)  # the crawler's copy (already applied when the add-on came with the process)
