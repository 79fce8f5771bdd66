"""Download handlers (Twisted's HTTP/1.1 client, aiohttp's) reading a response body in big reads.

Twisted reads a TCP connection 64 KiB per readable event, one read per turn of the event loop,
and a fresh connection's kernel receive buffer holds about 128 KiB. A node that is busy (every
turn it parses the other responses that arrived) then needs one loop turn per 64 KiB of a big
body: a 2 MiB page takes 32 turns, and on a CPU-starved node a turn takes 0.1-1 s, so the page
passes DOWNLOAD_TIMEOUT although the server sent it in 40 ms, and it is fetched again, and again.
:class:`HTTP11DownloadHandler` reads up to ``DOWNLOAD_READ_SIZE`` bytes per read and gives its
sockets a receive buffer of that size, so a body the server has sent is read in one turn (the
reads of a turn run before its expired timers), whatever its size.
The kernel caps the receive buffer at ``net.core.rmem_max`` (many kernels default to 208 KiB;
raise it with sysctl where nodes fetch big pages): beyond it a body takes a turn per buffer.
"""

from __future__ import annotations

import ipaddress
import socket
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import aiohttp
import aiohttp.connector
from aiohttp.abc import AbstractResolver, ResolveResult
from scrapy.core.downloader.handlers._aiohttp import AiohttpDownloadHandler as ScrapyAiohttpDownloadHandler
from scrapy.core.downloader.handlers._aiohttp import _ClientResponse
from scrapy.core.downloader.handlers._base_streaming import BaseStreamingDownloadHandler
from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler as ScrapyHTTP11DownloadHandler
from scrapy.core.downloader.handlers.http11 import _LenientHTTP11ClientFactory, _LenientHTTP11ClientProtocol
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.ssl import _make_ssl_context
from twisted.internet.error import DNSLookupError

from crawlproj.setting_checks import int_at_least

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.settings import BaseSettings
    from twisted.internet.interfaces import IAddress, ITransport
    from twisted.web._newclient import HTTP11ClientProtocol

#: Twisted's own read size (``twisted.internet.abstract.FileDescriptor.bufferSize``).
TWISTED_READ_SIZE = 64 * 1024


def read_size_setting(settings: BaseSettings) -> int:
    """``DOWNLOAD_READ_SIZE``, or ValueError naming it (checked at start by
    :class:`crawlproj.setting_checks.ScrapySettingsCheck` through each handler's
    ``check_settings``: Scrapy builds a handler at the first request of its scheme and turns its
    failure into failed requests)."""
    return int_at_least(settings, "DOWNLOAD_READ_SIZE", TWISTED_READ_SIZE,
                        f"bytes per read, an integer >= {TWISTED_READ_SIZE}")


def _ask_receive_buffer(sock: socket.socket, size: int) -> None:
    """A fresh connection's receive buffer starts near 128 KiB and grows only as fast as the node
    reads: ask for room for a whole body (the kernel caps it at rmem_max)."""
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class _BigReadProtocol(_LenientHTTP11ClientProtocol):
    read_size = TWISTED_READ_SIZE

    def makeConnection(self, transport: ITransport) -> None:
        # the TCP transport is the connection's own (plain HTTP) or under the TLS protocol's
        tcp: Any = transport
        while tcp is not None and not hasattr(tcp, "socket"):
            tcp = getattr(tcp, "transport", None)
        if tcp is not None:
            tcp.bufferSize = max(tcp.bufferSize, self.read_size)
            _ask_receive_buffer(tcp.socket, self.read_size)
        super().makeConnection(transport)


class _BigReadFactory(_LenientHTTP11ClientFactory):
    read_size = TWISTED_READ_SIZE

    def buildProtocol(self, addr: IAddress | None) -> HTTP11ClientProtocol:
        protocol = _BigReadProtocol(self._quiescentCallback)  # type: ignore[no-untyped-call]
        protocol.read_size = self.read_size
        return protocol


class HTTP11DownloadHandler(ScrapyHTTP11DownloadHandler):
    """Scrapy's handler with ``DOWNLOAD_READ_SIZE`` bytes per read on its connections."""

    check_settings = staticmethod(read_size_setting)

    def __init__(self, crawler: Crawler):
        super().__init__(crawler)
        read_size = self.check_settings(crawler.settings)
        # Scrapy sets the pool's factory the same way (HTTPConnectionPool has no argument for it)
        factory = type("_SizedBigReadFactory", (_BigReadFactory,), {"read_size": read_size})
        self._pool._factory = factory


class _ReactorResolver(AbstractResolver):
    """aiohttp's name lookups through the reactor's resolver (``reactor.resolve``: the configured
    ``DNS_RESOLVER`` and its cache), the one the SSRF guard checked the address with."""

    def __init__(self, reactor: Any):
        self._reactor = reactor

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        try:
            address = await maybe_deferred_to_future(self._reactor.resolve(host))
        except DNSLookupError as exc:
            raise OSError(socket.EAI_NONAME, f"DNS lookup failed: {host}: {exc}") from None
        ip = ipaddress.ip_address(address)
        af = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return [{"hostname": host, "host": address, "port": port, "family": af, "proto": 0,
                 "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV}]

    async def close(self) -> None:
        pass


class _BigReadResponse(_ClientResponse):
    read_size = TWISTED_READ_SIZE

    async def start(self, connection: aiohttp.connector.Connection) -> aiohttp.ClientResponse:
        transport: Any = connection.transport
        if transport is not None and not hasattr(transport, "crawlproj_small_read"):
            transport.crawlproj_small_read = transport.max_size  # asyncio's bytes per recv
            sock = transport.get_extra_info("socket")
            if sock is not None:
                _ask_receive_buffer(sock, self.read_size)
        response = await super().start(connection)  # the status line and the headers
        if transport is not None:
            # the body in big reads when it is big or of unknown length; a recv of read_size
            # costs more than asyncio's 256 KiB on the many small pages
            small = transport.crawlproj_small_read
            length = self.content_length
            transport.max_size = small if length is not None and length <= small else self.read_size
        return response


class AiohttpDownloadHandler(ScrapyAiohttpDownloadHandler):
    """HTTP and HTTPS through aiohttp (its C parser of HTTP/1.1) on the reactor's asyncio loop.

    Scrapy's own aiohttp handler (``scrapy.core.downloader.handlers._aiohttp``, marked
    experimental by Scrapy 2.19, pinned here) with: names resolved by the reactor's resolver
    (the SSRF guard's lookup and cache, and the test harness's resolver), and
    ``DOWNLOAD_READ_SIZE`` bytes per socket read and of read buffer, as
    :class:`HTTP11DownloadHandler` has. Scrapy's machinery above the handler (maximum and
    warning sizes, headers_received and bytes_received, download_latency, proxies from
    ``meta["proxy"]``, the errors of ``scrapy.exceptions``) is Scrapy's. Per node on the
    synthetic CPU-bound web it costs about 13% less CPU a page than Twisted's HTTP client.
    """

    check_settings = staticmethod(read_size_setting)
    experimental = False  # crawlproj's tests pin what the crawl relies on (tests/test_download.py)

    def __init__(self, crawler: Crawler):
        self._read_size = read_size_setting(crawler.settings)
        # the base class's settings; the session is made at the first download, on the running
        # loop (Scrapy may build a handler before the loop runs, and aiohttp needs the loop)
        BaseStreamingDownloadHandler.__init__(self, crawler)
        self._ssl_context = _make_ssl_context(crawler.settings)
        self._session: aiohttp.ClientSession | None = None  # type: ignore[assignment]

    def _new_session(self) -> aiohttp.ClientSession:
        from twisted.internet import reactor

        connector = aiohttp.TCPConnector(
            local_addr=self._bind_address, limit=self._pool_size_total,
            limit_per_host=self._pool_size_per_host, resolver=_ReactorResolver(reactor),
            use_dns_cache=False)  # the reactor's resolver has the cache
        response_class = type("_SizedBigReadResponse", (_BigReadResponse,), {"read_size": self._read_size})
        return aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
            response_class=response_class, read_bufsize=self._read_size,
            skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type", "User-Agent"))

    async def download_request(self, request: Request) -> Response:
        if self._session is None:
            self._session = self._new_session()
        return await super().download_request(request)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
