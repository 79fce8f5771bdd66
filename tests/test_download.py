"""crawlproj.download: a busy node reads a big body in a few loop turns, a bad
DOWNLOAD_READ_SIZE stops the crawl with one line, names are resolved by the reactor's resolver."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
from contextlib import suppress
from collections.abc import Iterator
from typing import Any
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from scrapy.settings import Settings
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import DNSLookupError

from crawlproj import settings as project_settings
from crawlproj.setting_checks import check_scrapy_settings

BODY = b"x" * (6 * 1024 * 1024)  # 96 of Twisted's 64 KiB reads
TURN = 0.2  # seconds each turn of the busy node's loop costs (a parse of other responses)
TIMEOUT = 8  # DOWNLOAD_TIMEOUT: 96 turns take 19 s; the big reads need ~15 turns, whatever the size

# A node whose every loop turn costs TURN seconds fetches BODY once; prints what it got.
BUSY_NODE = r"""
import json, sys, time
import scrapy
from scrapy.crawler import CrawlerProcess
from twisted.internet import task

class Busy:
    turns = 0
    @classmethod
    def from_crawler(cls, crawler):
        ext = cls()
        ext.loop = task.LoopingCall(ext.turn)
        ext.loop.start(0, now=False)
        return ext
    def turn(self):
        Busy.turns += 1
        time.sleep(%(turn)r)

class Big(scrapy.Spider):
    name = "big"
    result = {"status": None}
    async def start(self):
        self.t0 = time.monotonic()
        yield scrapy.Request(sys.argv[1], callback=self.got, errback=self.failed, dont_filter=True)
    def got(self, response):
        Big.result = {"status": response.status, "length": len(response.body), "turns": Busy.turns,
                      "seconds": round(time.monotonic() - self.t0, 2)}
    def failed(self, failure):
        Big.result = {"status": None, "error": failure.type.__name__}

settings = {"DOWNLOAD_TIMEOUT": %(timeout)r, "RETRY_ENABLED": False, "LOG_LEVEL": "ERROR",
            "TELNETCONSOLE_ENABLED": False, "EXTENSIONS": {"__main__.Busy": 0},
            "DOWNLOAD_MAXSIZE": 0, "DOWNLOAD_WARNSIZE": 0}
if sys.argv[2] == "crawlproj":
    from crawlproj.settings import DOWNLOAD_HANDLERS, DOWNLOAD_READ_SIZE
    settings.update(DOWNLOAD_HANDLERS=DOWNLOAD_HANDLERS, DOWNLOAD_READ_SIZE=DOWNLOAD_READ_SIZE)
process = CrawlerProcess(settings)
process.crawl(Big)
process.start()
print(json.dumps(Big.result))
""" % {"turn": TURN, "timeout": TIMEOUT}


class _BigBody(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        with suppress(ConnectionError):  # the node that timed out closed the connection
            self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def big_body_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BigBody)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/big"
    server.shutdown()
    server.server_close()


def _fetch(url: str, handler: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", BUSY_NODE, url, handler], capture_output=True,
                         text=True, timeout=TIMEOUT * 6)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_busy_node_reads_a_big_body_within_the_download_timeout(big_body_url: str) -> None:
    got = _fetch(big_body_url, "crawlproj")
    assert got.get("status") == 200 and got["length"] == len(BODY), got
    # the same node with Scrapy's own handler (64 KiB per turn) runs out of time on it
    stock = _fetch(big_body_url, "scrapy")
    assert stock.get("status") is None and stock.get("error") == "DownloadTimeoutError", stock


def test_a_bad_read_size_stops_the_crawl_with_one_line() -> None:
    settings = Settings()
    settings.setmodule(project_settings, priority="project")
    settings.set("DOWNLOAD_READ_SIZE", "lots")
    with pytest.raises(ValueError, match=r"^DOWNLOAD_READ_SIZE: expected bytes per read, an integer "
                                         r">= 65536, got 'lots'$"):
        check_scrapy_settings(settings)
    settings.set("DOWNLOAD_READ_SIZE", 1024)
    with pytest.raises(ValueError, match=r"^DOWNLOAD_READ_SIZE: .*got 1024"):
        check_scrapy_settings(settings)


class _Reactor:
    """The reactor's ``resolve`` as the SSRF guard and the aiohttp handler call it."""

    def __init__(self, answers: dict[str, str]):
        self.answers = answers
        self.asked: list[str] = []

    def resolve(self, name: str) -> Deferred[str]:
        self.asked.append(name)
        if name in self.answers:
            return succeed(self.answers[name])
        return fail(DNSLookupError(name))


def test_the_aiohttp_handler_resolves_names_with_the_reactor_s_resolver() -> None:
    # the address the SSRF guard checked (the same resolver and cache) is the one connected to
    from crawlproj.download import _ReactorResolver

    reactor = _Reactor({"a.test": "127.0.0.1", "six.test": "::1"})
    resolver = _ReactorResolver(reactor)

    async def lookups() -> tuple[list[Any], list[Any]]:
        return await resolver.resolve("a.test", 80), await resolver.resolve("six.test", 443)

    four, six = asyncio.run(lookups())
    assert [(r["host"], r["port"], r["family"]) for r in four] == [("127.0.0.1", 80, socket.AF_INET)]
    assert [(r["host"], r["port"], r["family"]) for r in six] == [("::1", 443, socket.AF_INET6)]
    # a failed lookup is an OSError, which aiohttp turns into a DNS error (Scrapy's
    # CannotResolveHostError, retried like Twisted's DNSLookupError)
    with pytest.raises(OSError, match="DNS lookup failed: nowhere.test"):
        asyncio.run(resolver.resolve("nowhere.test", 80))
    assert reactor.asked == ["a.test", "six.test", "nowhere.test"]
