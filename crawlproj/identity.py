"""Who crawls: the default User-Agent names crawlproj, its version and ``BOT_CONTACT``.

    crawlproj/0.1.0 (+https://example.com/crawler)      BOT_CONTACT = "https://example.com/crawler"
    crawlproj/0.1.0 (+ops@example.com)                  BOT_CONTACT = "ops@example.com"

The add-on crawlproj.addons.Politeness sets ``USER_AGENT`` to it with priority "addon", so a
``USER_AGENT`` in settings.py, a spider's ``custom_settings`` or ``-s USER_AGENT=...`` still
wins (Scrapy's own default is replaced). :class:`ContactCheck` warns once, at the first request
to a host of the public web, when ``BOT_CONTACT`` is empty: site operators must be able to reach
whoever runs a crawler (Heritrix requires it of its operators).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import NotConfigured
from scrapy.utils.httpobj import urlparse_cached

from crawlproj import __version__
from crawlproj.setting_checks import check_setting, str_setting

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

PRODUCT = f"crawlproj/{__version__}"
_EMAIL = re.compile(r"^[^@\s/:]+@[^@\s/:]+\.[^@\s/:]+$")
_URL = re.compile(r"^https?://[^\s/]+\.[^\s/]+(/\S*)?$")
#: Names that never reach the public web (RFC 2606, RFC 6761, mDNS).
LOCAL_SUFFIXES = (".test", ".example", ".invalid", ".localhost", ".local")
LOCAL_HOSTS_MAX = 10_000  # local hosts ContactCheck remembers (it runs for every request until a public one)


def bot_contact(settings: BaseSettings) -> str:
    """``BOT_CONTACT``: "" or an http(s) URL or an e-mail address."""
    contact = str_setting(settings, "BOT_CONTACT").strip()
    check_setting(not contact or bool(_URL.match(contact) or _EMAIL.match(contact)), "BOT_CONTACT",
                  contact, "an http(s) URL or an e-mail address where site operators reach you, or ''")
    return contact


def user_agent(contact: str) -> str:
    """crawlproj's User-Agent with ``contact`` (may be "")."""
    return f"{PRODUCT} (+{contact})" if contact else PRODUCT


def is_local_host(host: str) -> bool:
    """``host`` is not on the public web: a non-global IP literal or a reserved name."""
    host = host.lower().rstrip(".")
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_global
    except ValueError:
        return host == "localhost" or host.endswith(LOCAL_SUFFIXES)


class ContactCheck:
    """Warns once, at the first request to a public host, that ``BOT_CONTACT`` is empty."""

    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        self._local: set[str] = set()  # hosts found local already (each is checked once)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> ContactCheck:
        if bot_contact(crawler.settings):
            raise NotConfigured
        check = cls(crawler)
        crawler.signals.connect(check._request, signal=signals.request_reached_downloader)
        return check

    def _request(self, request: Request, **kwargs: Any) -> None:
        host = urlparse_cached(request).hostname or ""
        if host in self._local:
            return
        if not host or is_local_host(host):
            if len(self._local) >= LOCAL_HOSTS_MAX:
                self._local.clear()
            self._local.add(host)
            return
        self.crawler.signals.disconnect(self._request, signal=signals.request_reached_downloader)
        logger.warning("BOT_CONTACT is empty: this crawl of public hosts (%s first) does not say who runs it. "
                       "Set BOT_CONTACT to a URL or e-mail address; it goes into the User-Agent (%s)",
                       host, self.crawler.settings.get("USER_AGENT"), extra={"spider": self.crawler.spider})
