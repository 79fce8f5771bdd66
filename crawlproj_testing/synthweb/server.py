"""One asyncio process serving every synthetic host on 127.0.0.1 by its Host header.

A hand-rolled HTTP/1.1 keep-alive server on ``asyncio.Protocol``: responses are rendered once
and cached as bytes, so serving costs a dict lookup and a socket write. The access log
(tab-separated: start_ms, end_ms, host, path, status, node) is what tests read to check
completeness, robots compliance and politeness.

Control endpoints, on any host: ``/_synthweb/stats`` (JSON counters and CPU time),
``/_synthweb/robots?host=H&variant=V`` (switch a host's robots.txt variant at run time) and, for
a changing web (``WebSpec.change_classes``), ``/_synthweb/clock?set=T`` or ``?advance=S`` (web
time; read it without arguments) and ``/_synthweb/history?host=H&path=P`` (a page's versions).
Its pages answer with ETag and Last-Modified, and 304 to a matching If-None-Match or
If-Modified-Since (:mod:`.changes`). Sitemaps (``WebSpec.sitemaps``): :mod:`.sitemaps`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
import time
from collections import OrderedDict
from typing import TextIO
from urllib.parse import parse_qs, unquote, urlsplit

from .changes import CHANGING_KINDS, WEB_EPOCH, Changes, etag_of, http_date, not_modified
from .model import ROBOTS_PATHS, ROBOTS_VARIANTS, Host, Page, Web, WebSpec
from .render import Rendered, http_bytes, render_page, render_robots
from .sitemaps import OVER_LIMIT_CHILDREN, render_sitemap

NODE_HEADER = b"x-crawlproj-node"
MAX_HEAD_BYTES = 16 * 1024


def _now_ms() -> float:
    return time.time() * 1000.0


def _json(body: object) -> bytes:
    return http_bytes(Rendered(200, (("Content-Type", "application/json"),), json.dumps(body).encode()))


class SynthWeb:
    """Shared state of the server: the model, rendered-bytes cache, overrides and the log."""

    def __init__(self, web: Web, access_log: TextIO | None, hold_seconds: float,
                 cache_size: int = 20000, time_scale: float = 0.0):
        self.web = web
        self.changes = Changes(web)
        self.time_scale = time_scale  # web seconds per real second; 0: a virtual clock, set by tests
        self.clock_offset = 0.0
        self.clock_base = time.monotonic()
        self.port = 0
        self.log = access_log
        self.hold_seconds = hold_seconds
        self.cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self.cache_size = cache_size
        self.robots_override: dict[str, str] = {}
        self.versions: OrderedDict[tuple[str, str, int], tuple[bytes, str, float, tuple[tuple[str, str], ...]]] = \
            OrderedDict()
        self.requests = 0
        self.started = time.monotonic()

    def host_of(self, name: str) -> Host | None:
        host = self.web.by_name.get(name)
        if host is not None and name in self.robots_override:
            host = Host(host.index, host.name, host.pages, self.robots_override[name], host.latency_ms)
        return host

    def now(self) -> float:
        """Web time, seconds since changes.WEB_EPOCH."""
        return self.clock_offset + (time.monotonic() - self.clock_base) * self.time_scale

    def respond(self, host_name: str, target: str, if_none_match: str | None = None,
                if_modified_since: str | None = None) -> tuple[int, bytes | None]:
        """(status, full response bytes) for a GET; bytes None means never answer."""
        path = unquote(urlsplit(target).path) or "/"
        if path.startswith("/_synthweb/"):
            return self.control(path, target)
        if self.changes.enabled:
            page = self.web.resolve(host_name, path)
            if page is not None and page.kind in CHANGING_KINDS:
                return self.respond_changing(page, if_none_match, if_modified_since)
        key = (host_name, path)
        cached = self.cache.get(key)
        if cached is not None:
            return int(cached[9:12]), cached
        host = self.host_of(host_name)
        rendered: Rendered | None
        if host is None:
            rendered = Rendered(404, (("Content-Type", "text/plain"),), b"unknown host")
        elif path in ROBOTS_PATHS:
            rendered = render_robots(self.web, host, path, self.port)
            if rendered is None:
                return 0, None
            # robots answers can be switched at run time: never cache them
            return rendered.status, http_bytes(rendered)
        elif (sitemap := render_sitemap(self.web, host, path, self.port, self.lastmod)) is not None:
            if self.changes.enabled and path not in OVER_LIMIT_CHILDREN:
                return sitemap.status, http_bytes(sitemap)  # <lastmod> moves with the clock
            rendered = sitemap
        else:
            page = self.web.resolve(host_name, path)
            if page is None:
                rendered = Rendered(404, (("Content-Type", "text/html"),), b"<html>no such page</html>")
            else:
                rendered = render_page(self.web, page, self.port)
        data = http_bytes(rendered)
        self.cache[key] = data
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return rendered.status, data

    def respond_changing(self, page: Page, if_none_match: str | None,
                         if_modified_since: str | None) -> tuple[int, bytes]:
        version = self.changes.version(page, self.now())
        key = (page.host, page.path, version.number)
        cached = self.versions.get(key)
        if cached is None:
            rendered = render_page(self.web, page, self.port, version.number)
            etag = etag_of(rendered.body)
            validators = (("ETag", etag), ("Last-Modified", http_date(version.since)))
            rendered = Rendered(rendered.status, rendered.headers + validators, rendered.body)
            cached = self.versions[key] = (http_bytes(rendered), etag, version.since, validators)
            if len(self.versions) > self.cache_size:
                self.versions.popitem(last=False)
        data, etag, since, validators = cached
        if not_modified(etag, since, if_none_match, if_modified_since):
            return 304, http_bytes(Rendered(304, validators, b""))
        return 200, data

    def lastmod(self, host: str, path: str) -> str | None:
        """<lastmod> of a page in a sitemap: when its current version was made (W3C datetime)."""
        page = self.web.resolve(host, path)
        if page is None:
            return None
        since = self.changes.version(page, self.now()).since
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(WEB_EPOCH + since))

    def control(self, path: str, target: str) -> tuple[int, bytes]:
        query = parse_qs(urlsplit(target).query)
        if path == "/_synthweb/clock":
            if "set" in query or "advance" in query:
                try:
                    value = float((query.get("set") or query["advance"])[0])
                except ValueError:
                    return 400, http_bytes(Rendered(400, (), b"need set=<web seconds> or advance=<seconds>"))
                self.clock_offset = value if "set" in query else self.now() + value
                self.clock_base = time.monotonic()
            return 200, _json({"now": self.now(), "time_scale": self.time_scale})
        if path == "/_synthweb/history":
            host, page_path = query.get("host", [""])[0], query.get("path", ["/"])[0]
            page = self.web.resolve(host, page_path)
            if page is None:
                return 404, http_bytes(Rendered(404, (), b"need host=<known host>&path=<a page's path>"))
            now = self.now()
            versions = [[v.number, v.since] for v in self.changes.history(page, now)]
            return 200, _json({"host": host, "path": page_path, "now": now,
                               "period": self.changes.period(page), "versions": versions})
        if path == "/_synthweb/stats":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            body = {"requests": self.requests, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                    "uptime_seconds": time.monotonic() - self.started, "port": self.port}
            return 200, _json(body)
        if path == "/_synthweb/robots":
            host = query.get("host", [""])[0]
            variant = query.get("variant", [""])[0]
            if host not in self.web.by_name or variant not in ROBOTS_VARIANTS:
                return 400, http_bytes(Rendered(400, (), b"need host=<known host>&variant=<variant>"))
            self.robots_override[host] = variant
            return 200, http_bytes(Rendered(200, (), b"ok"))
        return 404, http_bytes(Rendered(404, (), b"unknown control path"))

    def write_log(self, start: float, end: float, host: str, path: str, status: int, node: str) -> None:
        if self.log is not None and not path.startswith("/_synthweb/"):
            self.log.write(f"{start:.1f}\t{end:.1f}\t{host}\t{path}\t{status}\t{node}\n")


class HTTPProtocol(asyncio.Protocol):
    def __init__(self, site: SynthWeb):
        self.site = site
        self.buf = b""
        self.busy = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > MAX_HEAD_BYTES and b"\r\n\r\n" not in self.buf:
            self._close()
            return
        self._next()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _next(self) -> None:
        # One request at a time per connection, in order (clients do not pipeline, but may).
        while not self.busy and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buf = self.buf[:end], self.buf[end + 4:]
            self._handle(head)

    def _handle(self, head: bytes) -> None:
        start = _now_ms()
        lines = head.split(b"\r\n")
        try:
            method, target, _version = lines[0].decode("latin-1").split(" ", 2)
        except ValueError:
            self._close()
            return
        host = node = ""
        inm = ims = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"host":
                host = value.strip().decode("latin-1").rsplit(":", 1)[0].lower()
            elif name == NODE_HEADER:
                node = value.strip().decode("latin-1")
            elif name == b"if-none-match":
                inm = value.strip().decode("latin-1")
            elif name == b"if-modified-since":
                ims = value.strip().decode("latin-1")
        site = self.site
        site.requests += 1
        status, data = site.respond(host, target, inm, ims)
        path = target.split("?", 1)[0]
        if data is None:
            # The time-out variant: hold the connection, then drop it unanswered.
            self.busy = True
            asyncio.get_running_loop().call_later(site.hold_seconds, self._close)
            site.write_log(start, start + site.hold_seconds * 1000, host, path, 0, node)
            return
        if method == "HEAD":
            data = data[: data.find(b"\r\n\r\n") + 4]
        h = site.web.by_name.get(host)
        delay = h.latency_ms / 1000.0 if h is not None else 0.0
        if delay > 0:
            self.busy = True
            asyncio.get_running_loop().call_later(delay, self._send, data, start, host, path, status, node)
        else:
            self._send(data, start, host, path, status, node)

    def _send(self, data: bytes, start: float, host: str, path: str, status: int, node: str) -> None:
        self.busy = False
        if self.transport is None:
            return
        self.transport.write(data)
        self.site.write_log(start, _now_ms(), host, path, status, node)
        self._next()


def spec_from_args(args: argparse.Namespace) -> WebSpec:
    if args.spec:
        return WebSpec(**json.loads(args.spec))
    return WebSpec(seed=args.seed, hosts=args.hosts, min_pages=args.min_pages,
                   max_pages=args.max_pages, pareto_alpha=args.alpha, links_per_page=args.links,
                   cross_host_share=args.cross, slow_latency_ms=args.slow_latency_ms,
                   slow_host_share=args.slow_share, base_latency_ms=args.base_latency_ms,
                   crawl_delay=args.crawl_delay)


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    d = WebSpec()
    parser.add_argument("--spec", help="the whole WebSpec as JSON (overrides the options below)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--hosts", type=int, default=d.hosts)
    parser.add_argument("--min-pages", type=int, default=d.min_pages)
    parser.add_argument("--max-pages", type=int, default=d.max_pages)
    parser.add_argument("--alpha", type=float, default=d.pareto_alpha, help="Pareto shape of page counts")
    parser.add_argument("--links", type=int, default=d.links_per_page)
    parser.add_argument("--cross", type=float, default=d.cross_host_share)
    parser.add_argument("--slow-share", type=float, default=d.slow_host_share)
    parser.add_argument("--slow-latency-ms", type=int, default=d.slow_latency_ms)
    parser.add_argument("--base-latency-ms", type=int, default=d.base_latency_ms)
    parser.add_argument("--crawl-delay", type=float, default=d.crawl_delay)


async def serve(web: Web, host: str, port: int, access_log: str | None, hold_seconds: float,
                time_scale: float = 0.0, site_class: type[SynthWeb] = SynthWeb,
                protocol: type[HTTPProtocol] = HTTPProtocol) -> None:
    """Serve ``web`` until SIGTERM or SIGINT (``site_class`` and ``protocol``: a test's variant)."""
    log = open(access_log, "a", buffering=1, encoding="utf-8") if access_log else None
    site = site_class(web, log, hold_seconds, time_scale=time_scale)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: protocol(site), host, port, backlog=1024)
    site.port = server.sockets[0].getsockname()[1]
    # The fixture and the cluster runner read this line to learn the port.
    print(f"SYNTHWEB LISTENING http://{host}:{site.port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    if log is not None:
        log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crawlproj synthweb", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--access-log", default=None)
    parser.add_argument("--hold-seconds", type=float, default=30.0,
                        help="how long the time-out robots variant holds a request")
    parser.add_argument("--time-scale", type=float, default=0.0,
                        help="web seconds per real second of a changing web; 0: a virtual clock "
                             "moved by /_synthweb/clock")
    add_spec_arguments(parser)
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print("synthweb serves loopback only", file=sys.stderr)
        return 2
    web = Web(spec_from_args(args))
    try:
        asyncio.run(serve(web, args.host, args.port, args.access_log, args.hold_seconds, args.time_scale))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
