"""Scrapy Request <-> wire request (see crawlproj.wire.protocol), callbacks by name, msgpack-safe meta."""

from __future__ import annotations

import logging
from typing import Any

import msgpack
from scrapy import Request, Spider

from crawlproj.meta import DEPTH
from crawlproj.meta import LOCAL as LOCAL_META
from crawlproj.wire.protocol import wire_request
from crawlproj.wire.urls import canonicalize, fingerprint_canonical, partition_of, politeness_key

logger = logging.getLogger(__name__)



class Unserializable(ValueError):
    """A request that cannot travel to the dispatcher (its callback is not a spider method...)."""


def _method_name(func: Any, spider: Spider, what: str) -> str | None:
    if func is None:
        return None
    name = getattr(func, "__name__", None)
    if name and getattr(func, "__self__", None) is spider and getattr(spider, name, None) == func:
        return name
    raise Unserializable(f"{what} {func!r} is not a method of spider {spider.name!r}")


def _carryable(value: Any) -> bool:
    try:
        msgpack.packb(value, use_bin_type=True)
        return True
    except (TypeError, ValueError, OverflowError):
        return False


class WireCodec:
    """Encodes requests for the dispatcher and rebuilds them on the node that leases them."""

    def __init__(self, spider: Spider, partitions: int, key_by: str = "domain", stats: Any = None):
        self.spider = spider
        self.partitions = partitions
        self.key_by = key_by
        self.stats = stats

    def route(self, url: str) -> tuple[str, bytes, str, int]:
        """(canonical URL, fingerprint, politeness key, partition); raises BadURL."""
        canonical = canonicalize(url)
        return (canonical, *self.route_canonical(canonical))

    def route_canonical(self, canonical: str) -> tuple[bytes, str, int]:
        """(fingerprint, politeness key, partition) of an already canonical URL."""
        key = politeness_key(canonical, self.key_by)
        return fingerprint_canonical(canonical), key, partition_of(key, self.partitions)

    def encode(self, request: Request, fp: bytes, key: str, part: int) -> dict[str, Any]:
        cb = _method_name(request.callback, self.spider, "callback")
        eb = _method_name(request.errback, self.spider, "errback")
        if request.cb_kwargs and not _carryable(request.cb_kwargs):
            raise Unserializable(f"cb_kwargs of {request.url} cannot be encoded with msgpack")
        meta = {}
        for name, value in request.meta.items():
            if name in LOCAL_META:
                continue
            if _carryable(value):
                meta[name] = value
            elif self.stats is not None:
                self.stats.inc_value("dispatcher/meta_dropped")
                logger.warning("Meta key %r of %s cannot travel (msgpack) and is dropped",
                               name, request.url)
        headers = None
        if request.headers:
            headers = {k.decode("latin-1"): [v.decode("latin-1") for v in vs]
                       for k, vs in request.headers.items()}
        return wire_request(
            request.url, fp, key, part, method=request.method, headers=headers, body=request.body,
            callback=None if cb == "parse" else cb,
            errback=eb,
            priority=request.priority, depth=request.meta.get(DEPTH) or 0,
            dont_filter=request.dont_filter, cb_kwargs=request.cb_kwargs, meta=meta)

    def decode(self, wire: dict[str, Any]) -> Request:
        spider = self.spider
        callback = getattr(spider, wire["cb"]) if "cb" in wire else None
        errback = getattr(spider, wire["eb"]) if "eb" in wire else None
        meta = dict(wire.get("meta") or {})
        meta[DEPTH] = wire.get("d", 0)
        headers = wire.get("h")
        return Request(
            wire["u"], callback=callback, errback=errback, method=wire.get("m", "GET"),
            headers=headers, body=wire.get("b"), priority=wire.get("pr", 0), meta=meta,
            cb_kwargs=wire.get("kw"), dont_filter=bool(wire.get("df")),
        )
