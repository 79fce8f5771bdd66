"""URL facts shared by every process: canonical form, fingerprint, politeness key, partition.

The dispatcher, the nodes, the item pipeline and the tests all import these functions, so a URL
means the same thing everywhere. Nothing here uses Python's ``hash()``: every value that crosses
a process boundary comes from a keyed-free, stable digest.
"""

from __future__ import annotations

import hashlib
import ipaddress
from functools import lru_cache
from urllib.parse import urlsplit

import tldextract
from w3lib.url import canonicalize_url as _w3lib_canonicalize

#: Suffixes treated as public suffixes on top of the bundled list. ``.test`` is reserved for
#: testing (RFC 6761) and is not on the public suffix list, so without this every synthetic host
#: ``siteNNNN.test`` would share the registered domain ``test``.
EXTRA_SUFFIXES = ("test",)

# Offline: the bundled suffix list only, no download, no cache directory writes.
_EXTRACT = tldextract.TLDExtract(
    suffix_list_urls=(), cache_dir=None, extra_suffixes=list(EXTRA_SUFFIXES)
)


class BadURL(ValueError):
    """A URL that cannot be crawled (no scheme/host, unsupported scheme, unparsable)."""


@lru_cache(maxsize=65536)  # links repeat: most of a page's links were on other pages too
def canonicalize(url: str) -> str:
    """The one canonical form of ``url``: lower-case scheme and host, sorted query, no fragment.

    Raises :class:`BadURL` for anything that is not an absolute http(s) URL with a host.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise BadURL(f"unparsable URL {url!r}: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise BadURL(f"unsupported scheme in URL {url!r}")
    if not host:
        raise BadURL(f"no host in URL {url!r}")
    return _w3lib_canonicalize(url)


def fingerprint(url: str) -> bytes:
    """20-byte SHA-1 of the canonical URL: the dedup key and the MongoDB ``_id``."""
    return fingerprint_canonical(canonicalize(url))


def fingerprint_canonical(canonical: str) -> bytes:
    """:func:`fingerprint` of a URL already in canonical form."""
    return hashlib.sha1(canonical.encode("utf-8")).digest()


def fingerprint_hex(url: str) -> str:
    return fingerprint(url).hex()


def host_of(url: str) -> str:
    """Lower-case host name of ``url`` without port (IPv6 literals without brackets)."""
    try:
        host = urlsplit(url).hostname
    except ValueError as exc:
        raise BadURL(f"unparsable URL {url!r}: {exc}") from exc
    if not host:
        raise BadURL(f"no host in URL {url!r}")
    return host


@lru_cache(maxsize=65536)
def registered_domain(host: str) -> str:
    """eTLD+1 of ``host``; an IP literal or a bare suffix is its own key."""
    host = host.lower().rstrip(".")
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    parts = _EXTRACT(host)
    if parts.domain and parts.suffix:
        return f"{parts.domain}.{parts.suffix}"
    return host


def politeness_key(url: str, by: str = "domain") -> str:
    """The key whose fetches are spaced out: registered domain (default) or full host."""
    host = host_of(url)
    if by == "host":
        return host
    if by != "domain":
        raise ValueError(f"politeness key kind must be 'domain' or 'host', got {by!r}")
    return registered_domain(host)


def stable_hash64(data: str | bytes) -> int:
    """64-bit unsigned hash that is the same in every process and on every machine."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def partition_of(key: str, partitions: int) -> int:
    """Virtual partition of a politeness key; ``partitions`` is fixed for a crawl's life."""
    return stable_hash64(key) % partitions
