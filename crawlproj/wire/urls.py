"""URL facts shared by every process: canonical form, fingerprint, politeness key, partition.

The dispatcher, the nodes, the item pipeline and the tests all import these functions, so a URL
means the same thing everywhere. Nothing here uses Python's ``hash()``: every value that crosses
a process boundary comes from a keyed-free, stable digest.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import urljoin, urlparse, urlsplit, urlunparse

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


CANONICAL_CACHE = 1 << 16  # canonical forms kept (links repeat: most were on other pages too)
JOIN_CACHE = 1 << 17  # (base directory, link) pairs kept by LinkJoiner


def _canonical_or_error(url: str) -> str | BadURL:
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        return BadURL(f"unparsable URL {url!r}: {exc}")
    if parts.scheme not in ("http", "https"):
        return BadURL(f"unsupported scheme in URL {url!r}")
    if not host:
        return BadURL(f"no host in URL {url!r}")
    try:
        return _w3lib_canonicalize(url)
    except ValueError as exc:
        return BadURL(f"unparsable URL {url!r}: {exc}")


_canonical_cached = lru_cache(maxsize=CANONICAL_CACHE)(_canonical_or_error)


def canonicalize(url: str) -> str:
    """The one canonical form of ``url``: lower-case scheme and host, sorted query, no fragment.

    Raises :class:`BadURL` for anything that is not an absolute http(s) URL with a host.
    """
    # The canonical form has no fragment, so "page#a" and "page#b" share one cache entry. Not
    # when the part before "#" ends in a space or control character: w3lib strips those only at
    # the very end of the URL, so cutting the fragment would change the path.
    head, sep, _fragment = url.partition("#")
    if sep and head and head[-1] > " ":
        url = head
    result = _canonical_cached(url)
    if type(result) is str:
        return result
    raise BadURL(*result.args)  # a fresh one: the cached instance would pile up tracebacks


# A link whose join depends only on its page's scheme, host and directory: no scheme (no ":"
# before the query or fragment), a path (not empty, not starting "?" or "#"), no params (";" in
# the path), no backslash, no whitespace or control characters (which urllib strips or removes
# before parsing). Its query and fragment may hold ":" and ";": urllib looks for a scheme only
# before the first character that cannot be in one ("/", "?", "#"), and for params only in the path.
_DIRECTORY_RELATIVE = re.compile(r"[^\x00-\x20:;\\?#][^\x00-\x20:;\\?#]*(?:[?#][^\x00-\x20\\]*)?").fullmatch
# An absolute http(s) link with a host: its join depends on the page's scheme only (urljoin keeps
# it as written when the schemes differ, and rebuilds it from its own parts when they match).
_ABSOLUTE = re.compile(r"https?://[^\x00-\x20\\/?#][^\x00-\x20\\]*").fullmatch


class Base(NamedTuple):
    """A page's base URL and the cache keys of the links that depend only on part of it."""

    url: str
    dir_key: str  # scheme, host and directory: for "x.html", "../y/", "z?q#f"
    root_key: str  # scheme and host: for "/x.html"
    scheme_key: str  # scheme and ":": for "https://other.test/x"
    page_key: str  # the URL without its fragment, "" if it ends in whitespace: for "#x"


class LinkJoiner:
    """Joins a page's links to its base URL and canonicalizes them, with a cache across pages.

    ``join(base, href)`` equals ``canonicalize(urllib.parse.urljoin(base.url, href))`` (a
    :class:`BadURL` for a link that cannot be crawled) and gives the canonical URL's host too.
    Most links are relative to the page's directory ("../x.html", "y.html#z") and repeat on the
    pages of that directory, so they are cached under (scheme, host, directory, link): urljoin's
    result depends on nothing else for them (RFC 3986 5.2.2, as urllib implements it). Likewise
    "/x" under (scheme, host), "https://h/x" under the page's scheme, and every fragment-only link
    ("#x") of a page under the page: it joins to the page's URL plus that fragment, and canonical
    forms have no fragment (so the other kinds are cached without theirs too: the part before the
    "#" has no whitespace, which would keep it). Other links ("//h/x", "?q", odd ones) take the
    long way each time.
    """

    def __init__(self, size: int = JOIN_CACHE):
        self.size = size
        self.cache: dict[tuple[str, str], tuple[str, str] | BadURL] = {}

    @staticmethod
    def base(url: str) -> Base:
        """The :class:`Base` of a page's base URL (its URL, or its ``<base href>``)."""
        try:
            scheme, netloc, path, params, query, _fragment = urlparse(url)
        except ValueError:
            return Base(url, "", "", "", "")  # no caching: every link takes the long way
        segments = path.split("/")
        if segments[-1] != "":
            del segments[-1]
        root = f"{scheme}://{netloc}"
        # "#x" joins to this plus "#x"; canonicalize cuts the fragment unless this ends in whitespace
        page = urlunparse((scheme, netloc, path, params, query, ""))
        return Base(url, root + "/".join(segments) + "\x00", root, scheme + ":",
                    page if page and page[-1] > " " else "")

    def join(self, base: Base, href: str) -> tuple[str, str] | BadURL:
        """(canonical URL, host) of ``href`` on ``base``, or the BadURL it raises."""
        # Keys of the four kinds cannot meet: a directory key ends in NUL, a root key has no
        # path, a scheme key has no "//", and a page key pairs with "#" (no other href is "#").
        if not base.dir_key:
            return self._resolve(base.url, href)
        first = href[:1]
        if first == "#":
            if not base.page_key:
                return self._resolve(base.url, href)
            key = (base.page_key, "#")
            href = "#x"  # the same page, the same canonical URL
        else:
            if _DIRECTORY_RELATIVE(href) is not None and href[:2] != "//":
                kind = base.root_key if first == "/" else base.dir_key
            elif _ABSOLUTE(href) is not None:
                kind = base.scheme_key
            else:
                return self._resolve(base.url, href)
            if "#" in href:  # "x.html#a" and "x.html#b" join to one canonical URL, that of "x.html"
                href = href[:href.index("#")]
            key = (kind, href)
        cache = self.cache
        cached = cache.get(key)
        if cached is None:
            cached = self._resolve(base.url, href)
            if len(cache) >= self.size:
                cache.clear()
            cache[key] = cached
        return cached

    @staticmethod
    def _resolve(base: str, href: str) -> tuple[str, str] | BadURL:
        try:
            canonical = canonicalize(urljoin(base, href))
            return canonical, _host_of_canonical(canonical)
        except BadURL as exc:
            return exc
        except ValueError as exc:
            return BadURL(f"cannot join {href!r} to {base!r}: {exc}")


@lru_cache(maxsize=CANONICAL_CACHE)
def _host_of_canonical(canonical: str) -> str:
    return host_of(canonical)


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
