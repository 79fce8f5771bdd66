"""Scrapy's HTTP/1.1 download handler, reading a response body in big reads.

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

import socket
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler as ScrapyHTTP11DownloadHandler
from scrapy.core.downloader.handlers.http11 import _LenientHTTP11ClientFactory, _LenientHTTP11ClientProtocol

from crawlproj.setting_checks import int_at_least

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings
    from twisted.internet.interfaces import IAddress, ITransport
    from twisted.web._newclient import HTTP11ClientProtocol

#: Twisted's own read size (``twisted.internet.abstract.FileDescriptor.bufferSize``).
TWISTED_READ_SIZE = 64 * 1024


class _BigReadProtocol(_LenientHTTP11ClientProtocol):
    read_size = TWISTED_READ_SIZE

    def makeConnection(self, transport: ITransport) -> None:
        # the TCP transport is the connection's own (plain HTTP) or under the TLS protocol's
        tcp: Any = transport
        while tcp is not None and not hasattr(tcp, "socket"):
            tcp = getattr(tcp, "transport", None)
        if tcp is not None:
            tcp.bufferSize = max(tcp.bufferSize, self.read_size)
            # a fresh connection's receive buffer starts near 128 KiB and grows only as fast as
            # the node reads: ask for room for a whole body (the kernel caps it at rmem_max)
            with suppress(OSError):
                tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.read_size)
        super().makeConnection(transport)


class _BigReadFactory(_LenientHTTP11ClientFactory):
    read_size = TWISTED_READ_SIZE

    def buildProtocol(self, addr: IAddress | None) -> HTTP11ClientProtocol:
        protocol = _BigReadProtocol(self._quiescentCallback)  # type: ignore[no-untyped-call]
        protocol.read_size = self.read_size
        return protocol


class HTTP11DownloadHandler(ScrapyHTTP11DownloadHandler):
    """Scrapy's handler with ``DOWNLOAD_READ_SIZE`` bytes per read on its connections."""

    @staticmethod
    def check_settings(settings: BaseSettings) -> int:
        """``DOWNLOAD_READ_SIZE``, or ValueError naming it (checked at start by
        :class:`crawlproj.setting_checks.ScrapySettingsCheck`: Scrapy builds a handler at the
        first request of its scheme and turns its failure into failed requests)."""
        return int_at_least(settings, "DOWNLOAD_READ_SIZE", TWISTED_READ_SIZE,
                            f"bytes per read, an integer >= {TWISTED_READ_SIZE}")

    def __init__(self, crawler: Crawler):
        super().__init__(crawler)
        read_size = self.check_settings(crawler.settings)
        # Scrapy sets the pool's factory the same way (HTTPConnectionPool has no argument for it)
        factory = type("_SizedBigReadFactory", (_BigReadFactory,), {"read_size": read_size})
        self._pool._factory = factory
