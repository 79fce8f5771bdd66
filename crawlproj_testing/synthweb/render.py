"""Bytes of synthetic responses: status, headers and body for every page and robots variant."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .model import (
    HUGE_PAGE_BYTES,
    SITEMAP_INDEX_PATH,
    OVERSIZED_ROBOTS_BYTES,
    Host,
    Page,
    Web,
)

_WORDS = (
    "crawl frontier domain partition lease robots politeness queue latency throughput "
    "dispatcher node scheduler index pipeline spider request response sitemap anchor "
    "canonical fingerprint heartbeat credit batch window replay spill upsert shard"
).split()
# One long filler text; pages take slices of it so rendering costs a slice, not a generator.
_FILLER = " ".join(random.Random("filler").choice(_WORDS) for _ in range(40000))


@dataclass(frozen=True)
class Rendered:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def _reason(status: int) -> str:
    return {200: "OK", 301: "Moved Permanently", 302: "Found", 404: "Not Found",
            500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Unknown")


def render_page(web: Web, page: Page, port: int, version: int | None = None) -> Rendered:
    """The page's response; ``version`` (a changing web only) is written into the body."""
    if page.redirect_to is not None:
        location = f"http://{page.host}:{port}{page.redirect_to}"
        return Rendered(301, (("Location", location), ("Content-Type", "text/html")), b"")
    kind = page.kind
    if kind == "not_found":
        return Rendered(404, (("Content-Type", "text/html; charset=utf-8"),),
                        b"<html><head><title>Not found</title></head><body>gone</body></html>")
    if kind == "server_error":
        return Rendered(500, (("Content-Type", "text/html; charset=utf-8"),),
                        b"<html><head><title>Error</title></head><body>boom</body></html>")
    if kind == "binary":
        rng = random.Random(f"bin:{page.host}:{page.index}")
        return Rendered(200, (("Content-Type", "application/octet-stream"),), rng.randbytes(4096))
    if kind == "huge":
        filler = (_FILLER * (HUGE_PAGE_BYTES // len(_FILLER) + 1))[:HUGE_PAGE_BYTES]
        body = f"<html><head><title>Huge {page.index}</title></head><body><p>{filler}</p></body></html>"
        return Rendered(200, (("Content-Type", "text/html; charset=utf-8"),), body.encode())
    latin1 = kind == "latin1"
    title = f"Page {page.index} of {page.host}" + (" — café" if latin1 else "")
    links = "\n".join(
        f'<li><a href="{"" if h == page.host else f"http://{h}:{port}"}{p}">link {n} señal</a></li>'
        for n, (h, p) in enumerate(page.links)
    )
    filler_len = max(0, web.spec.page_bytes - 60 * len(page.links) - 300)
    start = (page.index * 7919) % (len(_FILLER) - filler_len - 1) if filler_len else 0
    charset = "iso-8859-1" if latin1 else "utf-8"
    changes = "" if version is None else f'<p id="version">version {version}</p>'
    body = (
        f'<!DOCTYPE html><html><head><meta charset="{charset}"><title>{title}</title></head>'
        f"<body><h1>{title}</h1>{changes}<ul>\n{links}\n</ul><p>{_FILLER[start:start + filler_len]}</p>"
        "</body></html>"
    )
    data = body.replace("—", "-").encode(charset) if latin1 else body.encode(charset)
    return Rendered(200, (("Content-Type", f"text/html; charset={charset}"),), data)


def robots_text(web: Web, host: Host, port: int = 0) -> str:
    """The ``*`` group and a foreign group that must not apply to us."""
    lines = ["User-agent: otherbot", "Disallow: /", ""]
    lines.append("User-agent: *")
    rules = web.robots_rules(host)
    if not rules:
        lines.append("Disallow:")
    for rule in rules:
        lines.append(f"{'Allow' if rule.allow else 'Disallow'}: {rule.prefix}")
    delay = web.crawl_delay(host)
    if delay is not None:
        lines.append(f"Crawl-delay: {delay:g}")
    if web.spec.sitemaps:
        lines += ["", f"Sitemap: http://{host.name}:{port}{SITEMAP_INDEX_PATH}"]
    return "\n".join(lines) + "\n"


def render_robots(web: Web, host: Host, path: str, port: int) -> Rendered | None:
    """Response for a robots path; None means "never answer" (the time-out variant)."""
    text_plain = (("Content-Type", "text/plain"),)
    variant = host.robots
    if variant == "redirect":
        if path == "/robots.txt":
            return Rendered(301, (("Location", f"http://{host.name}:{port}/robots-hop1.txt"),), b"")
        if path == "/robots-hop1.txt":
            return Rendered(302, (("Location", f"http://{host.name}:{port}/robots-hop2.txt"),), b"")
        return Rendered(200, text_plain, robots_text(web, host, port).encode())
    if path != "/robots.txt":
        return Rendered(404, text_plain, b"not found")
    if variant == "timeout":
        return None
    if variant == "not_found":
        return Rendered(404, text_plain, b"no robots here")
    if variant == "server_error":
        return Rendered(500, text_plain, b"robots backend failed")
    if variant == "unavailable":
        return Rendered(503, text_plain, b"try later")
    if variant == "garbage":
        rng = random.Random(f"garbage:{host.name}")
        return Rendered(200, text_plain, rng.randbytes(2048))
    text = robots_text(web, host, port)
    if variant == "oversized":
        pad_line = "# " + "padding " * 12 + "\n"
        text += pad_line * (OVERSIZED_ROBOTS_BYTES // len(pad_line) + 1)
    return Rendered(200, text_plain, text.encode())


def http_bytes(r: Rendered, head_only: bool = False) -> bytes:
    head = [f"HTTP/1.1 {r.status} {_reason(r.status)}", f"Content-Length: {len(r.body)}",
            "Server: crawlproj-synthweb"]
    head.extend(f"{k}: {v}" for k, v in r.headers)
    data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
    return data if head_only else data + r.body
