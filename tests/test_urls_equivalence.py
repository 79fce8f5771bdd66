"""Canonical URLs stay byte-for-byte what they were: the fast path against a copy of the old one.

tests/data/realhtml_links.jsonl.gz holds real links (Debian documentation, the real-HTML
benchmark's corpus, made by ``bench/realhtml_corpus.py``): every link of 400 pages in page
order, then odd links of every page, each row ``[base URL, [href, ...]]``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from w3lib.url import canonicalize_url

from crawlproj.wire.urls import BadURL, LinkJoiner, canonicalize

SAMPLE = Path(__file__).parent / "data" / "realhtml_links.jsonl.gz"


def reference_canonicalize(url: str) -> str:
    """crawlproj.wire.urls.canonicalize as it was before the caches (commit be13f2b)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise BadURL(f"unparsable URL {url!r}: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise BadURL(f"unsupported scheme in URL {url!r}")
    if not host:
        raise BadURL(f"no host in URL {url!r}")
    return canonicalize_url(url)


def reference_link(base: str, href: str) -> tuple[str, str] | None:
    """What the spider did per link: canonicalize(response.urljoin(href)), None when invalid."""
    try:
        url = reference_canonicalize(urljoin(base, href))
    except ValueError:  # BadURL, or w3lib's own
        return None
    return url, urlsplit(url).hostname or ""


def fast_link(joiner: LinkJoiner, base: str, href: str) -> tuple[str, str] | None:
    got = joiner.join(joiner.base(base), href)
    return got if type(got) is tuple else None


def rows() -> list[tuple[str, list[str]]]:
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        return [(base, hrefs) for base, hrefs in map(json.loads, f)]


ODD_BASES = [
    "http://h.test/a/b.html", "http://h.test/a/b/", "http://h.test", "http://h.test/",
    "http://h.test/a/b;p?q=1#f", "https://H.Test:8443/x/y?z", "http://h.test/a/./b/../c.html",
    "http://[::1]:8080/v6/page", "http://h.test/%7Euser/a%20b.html", "http://h.test/ä/ö.html",
    "http://h.test/a b ", "http://h.test/a?", "http://h.test/a?#", "https://h.test/sec/p.html#f",
]
ODD_HREFS = [
    "", "#", "#top", "?", "?q=2", "?b=2&a=1#x", ".", "..", "./", "../", "../../../../x.html", "/",
    "//", "//other.test/x", "//other.test", "/abs/path.html", "/abs/../up.html", "x.html",
    "x.html#f", "x.html?b=2&a=1#f", "x;p.html", "x.html;p", "dir/", "a b.html", " lead.html",
    "trail.html ", "tab\there.html", "new\nline.html", "x.html #frag", "x.html\t#frag", "ä.html",
    "%e4.html", "%zz.html", "x.html?q=%ZZ", "x\\y.html", "\\\\other.test\\x", "mailto:a@b.test",
    "javascript:void(0)", "tel:+1", "data:text/html,x", "ftp://h.test/x", "http:x.html",
    "http:/x.html", "http://", "http://[::1", "http://[::1]:99999/", "http://h.test:abc/",
    "HTTP://Other.TEST/A?B=1", "https://other.test/a#b", "http://user:pw@h.test/x",
    "http://h.test/a?b=2&a=1&a=0", "x.html?q=a+b&r=a%20b", "x.html?a&b=&c", "x.html#a#b",
    "../x.html#", "x:y.html", "./x:y.html", "\x00x.html", "x\x7f.html", "\u3000x.html",
    "x.html\u00a0", "https://xn--bcher-kva.test/", "http://bücher.test/", "http://h.test/%2e%2e/x",
    "....//x.html", "x//y.html", "./.././x.html", "?#", "#?", ";", ";p", "x?y#z?w",
    # colons and semicolons after the path, fragments of every kind, absolute links
    "x.html#a:b", "x.html#a;b", "x.html?a:b=1;c#d:e", "lib/os.html#os.path:join", "x.html#a b",
    "x.html#a\tb", "x.html# ", "x.html#", "x.html?#a", "x:y.html#a", "x.html;p#a:b", "#a:b", "#a b",
    "# ", "#\t", "#ä", "#%zz", "#a#b", "https://h.test/a#b", "http://other.test/a?b=1#c:d",
    "https:///x", "http:///x", "https://[::1]/x#f", "http://h.test:80/x#f", "https://other.test",
    "http://other.test?q", "http://other.test#f", "https://other.test/a b", "http://other.test/\\x",
    "https://Other.Test/A%7e?b=2&a=1#f", "http://other.test:/x", "http://a@other.test/x#y",
]


def joined(pairs: list[tuple[str, str]]) -> list[str]:
    out = []
    for base, href in pairs:
        try:
            out.append(urljoin(base, href))
        except ValueError:
            pass
    return out


def test_canonicalize_equals_the_reference_on_real_and_odd_urls():
    urls = joined([(base, href) for base, hrefs in rows() for href in hrefs])
    urls += joined([(b, h) for b in ODD_BASES for h in ODD_HREFS]) + ODD_HREFS + ODD_BASES
    assert len(urls) > 30_000
    for url in urls:
        try:
            expected: str | None = reference_canonicalize(url)
        except ValueError:
            expected = None
        try:
            got: str | None = canonicalize(url)
        except BadURL:
            got = None
        assert got == expected, url


def test_link_joiner_equals_urljoin_then_canonicalize_on_real_links():
    joiner = LinkJoiner()
    data = rows()
    n = 0
    for base, hrefs in data:
        for href in hrefs:
            assert fast_link(joiner, base, href) == reference_link(base, href), (base, href)
            n += 1
    assert n > 30_000
    # the cache filled over many pages answers a second pass the same
    for base, hrefs in reversed(data):
        for href in hrefs:
            assert fast_link(joiner, base, href) == reference_link(base, href), (base, href)


@pytest.mark.parametrize("base", ODD_BASES)
def test_link_joiner_equals_the_reference_on_odd_links(base):
    joiner = LinkJoiner()
    for other in ODD_BASES:  # fill the cache from other pages first
        for href in ODD_HREFS:
            joiner.join(joiner.base(other), href)
    for href in ODD_HREFS:
        assert fast_link(joiner, base, href) == reference_link(base, href), (base, href)


def test_link_joiner_cache_stays_bounded():
    joiner = LinkJoiner(size=100)
    for i in range(1000):
        assert fast_link(joiner, "http://h.test/a/", f"p{i}.html") == (f"http://h.test/a/p{i}.html", "h.test")
    assert len(joiner.cache) <= 100


def test_two_pages_interleaved_keep_their_own_bases():
    # Scrapy runs several parse() generators at once: a page's links never take another's base.
    joiner = LinkJoiner()
    a, b = joiner.base("http://h.test/releases/index.html"), joiner.base("http://h.test/internals/x.html")
    assert joiner.join(a, "1.10.html")[0] == "http://h.test/releases/1.10.html"
    assert joiner.join(b, "1.10.html")[0] == "http://h.test/internals/1.10.html"
    assert joiner.join(a, "1.10.html")[0] == "http://h.test/releases/1.10.html"


def test_cached_kinds_keep_their_bases_apart():
    # one href, cached from one page, answered right on a page of another scheme, host or path
    joiner = LinkJoiner()
    for href in ("http://other.test/a?", "https://other.test/a#b", "#top", "x.html#a:b", "/r#f", ""):
        for base in ("http://h.test/a/p.html", "https://h.test/a/p.html", "http://g.test/a/p.html",
                     "http://h.test/b/q.html?x=1", "http://h.test/a/p.html#here"):
            assert fast_link(joiner, base, href) == reference_link(base, href), (base, href)


def test_canonicalize_raises_bad_url_every_time():
    for _ in range(3):
        with pytest.raises(BadURL, match="unsupported scheme"):
            canonicalize("mailto:a@b.test")
