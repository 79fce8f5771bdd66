"""Sitemaps of the synthetic web (``WebSpec.sitemaps``): what each host serves, and which pages
only a sitemap brings.

robots.txt names ``/sitemap_index.xml``; the index lists a gzip child (the host's orphan pages,
which no page links to, with ``<lastmod>``) and a plain child (its first pages). ``/sitemap.xml``
lists the orphans too, for hosts whose robots.txt names nothing (404, garbage...). With
``sitemap_over_limits`` the first host's index lists two more gzip children past the protocol's
limits: ``too-many`` (50,000 entries, mostly on a foreign host, then the ``/cut/`` pages) and
``too-big`` (a ``/kept/`` page, > 50 MiB of padding, then a ``/cut/`` page).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable
from xml.sax.saxutils import escape

from .model import SITEMAP_INDEX_PATH, SITEMAP_PATH, Host, Web
from .render import Rendered

#: The sitemaps protocol's limits per file (sitemaps.org): entries, and bytes uncompressed.
PROTOCOL_MAX_URLS = 50_000
PROTOCOL_MAX_BYTES = 50 * 1024 * 1024
SITEMAP_NS = "http://www.sitemaps.org/schemas/sitemap/0.9"
FOREIGN_HOST = "elsewhere.invalid"  # entries of too-many out of every scope
PLAIN_CHILD_PAGES = 50
CUT_TOO_MANY = 3  # /cut/1..3 are entries 50,001..50,003 of too-many
KEPT_TOO_MANY = 2  # /kept/1..2 are its entries 49,999 and 50,000
#: Children with no <lastmod>: the same bytes whatever the clock (the server caches them).
OVER_LIMIT_CHILDREN = ("/sitemaps/too-many.xml.gz", "/sitemaps/too-big.xml.gz")
CHILDREN = {
    "/sitemaps/orphans.xml.gz": "orphans",
    "/sitemaps/pages.xml": "pages",
    "/sitemaps/too-many.xml.gz": "too_many",
    "/sitemaps/too-big.xml.gz": "too_big",
}


def over_limits_host(web: Web, host: Host) -> bool:
    return web.spec.sitemaps and web.spec.sitemap_over_limits and host.index == 0


def sitemap_section_size(web: Web, host: Host, section: str) -> int:
    """How many pages a sitemap-only section of ``host`` has (the model's resolve asks)."""
    if not web.spec.sitemaps:
        return 0
    if section == "orphan":
        return web.spec.orphan_pages
    if not over_limits_host(web, host):
        return 0
    return KEPT_TOO_MANY + 1 if section == "kept" else CUT_TOO_MANY + 1


def sitemap_only_pages(web: Web) -> dict[str, set[tuple[str, str]]]:
    """(host, path) of the pages only sitemaps list: "listed" within the limits, "cut" past them."""
    listed = {(h.name, f"/orphan/{i}") for h in web.hosts for i in range(1, sitemap_section_size(web, h, "orphan") + 1)}
    cut: set[tuple[str, str]] = set()
    for host in web.hosts:
        if over_limits_host(web, host):
            listed |= {(host.name, f"/kept/{i}") for i in range(1, KEPT_TOO_MANY + 2)}
            cut |= {(host.name, f"/cut/{i}") for i in range(1, CUT_TOO_MANY + 2)}
    return {"listed": listed, "cut": cut}


def _url(host: str, port: int, path: str) -> str:
    return f"http://{host}:{port}{path}"


def _entry(tag: str, loc: str, lastmod: str | None = None) -> str:
    extra = f"<lastmod>{lastmod}</lastmod>" if lastmod else ""
    return f"<{tag}><loc>{escape(loc)}</loc>{extra}</{tag}>\n"


def _document(root: str, entries: Iterable[str], padding: int = 0, tail: Iterable[str] = ()) -> bytes:
    head = f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{SITEMAP_NS}">\n'
    pad = (" " * 1023 + "\n") * (padding // 1024 + 1) if padding else ""
    return (head + "".join(entries) + pad + "".join(tail) + f"</{root}>\n").encode()


def render_sitemap(web: Web, host: Host, path: str, port: int,
                   lastmod: Callable[[str, str], str | None]) -> Rendered | None:
    """The sitemap at ``path`` of ``host``, or None when it serves none there.

    ``lastmod(host, path)`` gives a page's <lastmod> (W3C datetime) or None.
    """
    if not web.spec.sitemaps:
        return None
    name = host.name
    kind = "orphans" if path == SITEMAP_PATH else CHILDREN.get(path)
    if path == SITEMAP_INDEX_PATH:
        children = [p for p, k in CHILDREN.items() if k in ("orphans", "pages") or over_limits_host(web, host)]
        body = _document("sitemapindex", (_entry("sitemap", _url(name, port, p)) for p in children))
        return Rendered(200, (("Content-Type", "application/xml"),), body)
    if kind is None or (kind in ("too_many", "too_big") and not over_limits_host(web, host)):
        return None
    if kind == "orphans":
        paths = [f"/orphan/{i}" for i in range(1, web.spec.orphan_pages + 1)]
        body = _document("urlset", (_entry("url", _url(name, port, p), lastmod(name, p)) for p in paths))
    elif kind == "pages":
        paths = [web.page_path(host, i) for i in range(min(host.pages, PLAIN_CHILD_PAGES))]
        body = _document("urlset", (_entry("url", _url(name, port, p), lastmod(name, p)) for p in paths))
    elif kind == "too_many":
        foreign = PROTOCOL_MAX_URLS - KEPT_TOO_MANY
        entries = [_entry("url", _url(FOREIGN_HOST, port, f"/x/{i}")) for i in range(foreign)]
        entries += [_entry("url", _url(name, port, f"/kept/{i}")) for i in range(1, KEPT_TOO_MANY + 1)]
        entries += [_entry("url", _url(name, port, f"/cut/{i}")) for i in range(1, CUT_TOO_MANY + 1)]
        body = _document("urlset", entries)
    else:  # too_big: one entry within the limit, padding past it, one entry after
        body = _document("urlset", [_entry("url", _url(name, port, f"/kept/{KEPT_TOO_MANY + 1}"))],
                         padding=PROTOCOL_MAX_BYTES,
                         tail=[_entry("url", _url(name, port, f"/cut/{CUT_TOO_MANY + 1}"))])
    if not path.endswith(".gz"):
        return Rendered(200, (("Content-Type", "application/xml"),), body)
    return Rendered(200, (("Content-Type", "application/x-gzip"),), gzip.compress(body, 6, mtime=0))
