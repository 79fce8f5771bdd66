"""Scrapy add-ons: each turns one crawlproj mode on with one line of ``ADDONS`` in settings.py.

    ADDONS = {
        "crawlproj.addons.Politeness": 100,      # robots.txt (RFC 9309) + one politeness gate
        "crawlproj.addons.Hardening": 200,       # SSRF guard, trap guard, counted decompression
        "crawlproj.addons.MongoDB": 300,         # the item pipeline (off while MONGO_URI is empty)
        "crawlproj.addons.Timings": 400,         # timings of every operation
        "crawlproj.addons.Revisits": 450,        # conditional GET of revisits, sitemaps
        "crawlproj.addons.DispatcherNode": 500,  # distributed mode: leases from the dispatcher
    }

Each ``update_settings`` puts its components into Scrapy's component dicts (at the priorities
below) and sets what the mode needs with priority "addon", so a value in settings.py or on the
command line still wins. ``ADDONS`` given on the command line replaces the project's whole
dict: :func:`merged_addons` and :func:`combine` build the value that adds modes to the project's own.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from scrapy.utils.misc import load_object

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

# Where crawlproj's components go in Scrapy's chains.
SSRF_GUARD_ORDER = 50  # before robots.txt: a refused host is never fetched at all
TRAP_GUARD_ORDER = 60
ROBOTS_ORDER = 100  # the place of Scrapy's RobotsTxtMiddleware
DECOMPRESSION_ORDER = 590  # the place of Scrapy's HttpCompressionMiddleware
SSRF_PEER_CHECK_ORDER = 950  # first to see a response
FETCH_START_ORDER = 1000  # last before the downloader: a key's delay ends, then straight to its slot
LEASE_TRACKER_ORDER = 10  # outermost spider middleware: it sees the final output
PARSE_TIMING_ORDER = 1050  # innermost: one perf_counter pair per response
POLITENESS_GATE_ORDER = 0
CONTACT_CHECK_ORDER = 10
TIMINGS_ORDER = 510
DOWNLOAD_TIMING_ORDER = 1  # outermost downloader middleware: a request's time in the others
MONGO_ORDER = 800
REVISIT_ORDER = 540  # its process_response sees only final answers: after redirects, retries, decompression
SITEMAP_DISCOVERY_ORDER = 750  # after DepthMiddleware (900) in the output: robots.txt requests at depth 0

SCRAPY_ROBOTS = "scrapy.downloadermiddlewares.robotstxt.RobotsTxtMiddleware"
SCRAPY_COMPRESSION = "scrapy.downloadermiddlewares.httpcompression.HttpCompressionMiddleware"


def _put(settings: BaseSettings, name: str, components: dict[str, int | None]) -> None:
    for path, order in components.items():
        settings.set_in_component_priority_dict(name, load_object(path), order)


class Politeness:
    """robots.txt and per-key politeness by crawlproj (``ROBOTS_THROTTLE_ENABLED``, default on);
    off, Scrapy's robots.txt middleware with its concurrent-waiter bug fixed. The User-Agent says
    who crawls (crawlproj.identity: ``BOT_CONTACT``)."""

    def update_settings(self, settings: BaseSettings) -> None:
        from crawlproj.identity import bot_contact, user_agent
        from crawlproj.politeness.config import throttle_enabled

        settings.set("USER_AGENT", user_agent(bot_contact(settings)), "addon")  # USER_AGENT set by you wins
        _put(settings, "EXTENSIONS", {"crawlproj.identity.ContactCheck": CONTACT_CHECK_ORDER})
        _put(settings, "DOWNLOADER_MIDDLEWARES", {SCRAPY_ROBOTS: None})
        if throttle_enabled(settings):
            _put(settings, "EXTENSIONS", {"crawlproj.politeness.gate.PolitenessGate": POLITENESS_GATE_ORDER})
            _put(settings, "DOWNLOADER_MIDDLEWARES", {
                "crawlproj.middlewares.robots_throttle.RobotsThrottleMiddleware": ROBOTS_ORDER,
                "crawlproj.middlewares.robots_throttle.FetchStartMiddleware": FETCH_START_ORDER})
        else:
            _put(settings, "DOWNLOADER_MIDDLEWARES", {
                "crawlproj.middlewares.robotstxt.FixedRobotsTxtMiddleware": ROBOTS_ORDER})


class Hardening:
    """Hostile input: the SSRF guard, crawler-trap guard and counted decompression bombs."""

    def update_settings(self, settings: BaseSettings) -> None:
        _put(settings, "DOWNLOADER_MIDDLEWARES", {
            SCRAPY_COMPRESSION: None,
            "crawlproj.security.ssrf.SSRFGuardMiddleware": SSRF_GUARD_ORDER,
            "crawlproj.security.traps.TrapGuardMiddleware": TRAP_GUARD_ORDER,
            "crawlproj.security.traps.CountingHttpCompressionMiddleware": DECOMPRESSION_ORDER,
            "crawlproj.security.ssrf.SSRFPeerCheckMiddleware": SSRF_PEER_CHECK_ORDER,
        })


class MongoDB:
    """Items to MongoDB, batched upserts by URL fingerprint; the pipeline is off while MONGO_URI is empty."""

    def update_settings(self, settings: BaseSettings) -> None:
        _put(settings, "ITEM_PIPELINES", {"crawlproj.pipelines.mongo.MongoPipeline": MONGO_ORDER})


class Timings:
    """Timings of every operation that can get slow, to stats, logs and the dispatcher."""

    def update_settings(self, settings: BaseSettings) -> None:
        _put(settings, "EXTENSIONS", {"crawlproj.observability.extension.TimingsExtension": TIMINGS_ORDER})
        _put(settings, "SPIDER_MIDDLEWARES", {
            "crawlproj.observability.extension.ParseTimingMiddleware": PARSE_TIMING_ORDER})
        _put(settings, "DOWNLOADER_MIDDLEWARES", {
            "crawlproj.observability.extension.DownloadTimingMiddleware": DOWNLOAD_TIMING_ORDER})


class Revisits:
    """Continuous crawling: conditional GET of revisits (crawlproj.middlewares.revisit) and
    sitemaps (crawlproj.sitemaps, when SITEMAP_ENABLED)."""

    def update_settings(self, settings: BaseSettings) -> None:
        _put(settings, "DOWNLOADER_MIDDLEWARES", {
            "crawlproj.middlewares.revisit.ConditionalGetMiddleware": REVISIT_ORDER})
        _put(settings, "SPIDER_MIDDLEWARES", {"crawlproj.sitemaps.SitemapDiscovery": SITEMAP_DISCOVERY_ORDER})


class DispatcherNode:
    """Distributed mode: this process is a node that leases its requests from the dispatcher at
    DISPATCHER_ENDPOINT (crawlproj.scheduling.scheduler.DispatcherScheduler)."""

    def update_settings(self, settings: BaseSettings) -> None:
        settings.set("SCHEDULER", "crawlproj.scheduling.scheduler.DispatcherScheduler", "addon")
        _put(settings, "SPIDER_MIDDLEWARES", {
            "crawlproj.scheduling.leases.LeaseTrackerMiddleware": LEASE_TRACKER_ORDER})


#: The add-on of the distributed mode, as a dotted path, and as an ADDONS entry.
NODE_MODE = f"{__name__}.DispatcherNode"
NODE_ADDONS: dict[str, int] = {NODE_MODE: 500}

SETTINGS_MODULE = "crawlproj.settings"


def _addons_of(value: Mapping[str, Any] | str) -> dict[str, Any]:
    parsed: Any = value
    if isinstance(value, str):
        try:
            parsed = json.loads(value) if value.strip() else {}
        except ValueError:
            parsed = None
    if not isinstance(parsed, Mapping):
        raise ValueError(f"ADDONS: expected a mapping (or a JSON object) of add-on paths to priorities, "
                         f"got {value!r}")
    return dict(parsed)


def merged_addons(value: Mapping[str, Any] | str) -> dict[str, Any]:
    """The project's ADDONS with ``value`` (a dict, or JSON as ``-s ADDONS=...`` gives it) on top.

    Scrapy replaces the whole ADDONS dict with one given on the command line (or to scrapyd's
    schedule.json), which would drop the add-ons of settings.py; callers pass this union instead.
    """
    project = getattr(importlib.import_module(SETTINGS_MODULE), "ADDONS", {})
    return {**project, **_addons_of(value)}


def combine(*settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings dicts merged left to right, their ADDONS united (not the last one winning)."""
    merged: dict[str, Any] = {}
    addons: dict[str, Any] | None = None
    for one in settings:
        for name, value in one.items():
            if name == "ADDONS":
                addons = {**(addons or {}), **_addons_of(value)}
            else:
                merged[name] = value
    if addons is not None:
        merged["ADDONS"] = addons
    return merged


def node_settings() -> dict[str, Any]:
    """Settings that make a ``scrapy crawl`` a dispatcher node (with :func:`combine` or the runner,
    on top of the project's add-ons)."""
    return {"ADDONS": dict(NODE_ADDONS)}
