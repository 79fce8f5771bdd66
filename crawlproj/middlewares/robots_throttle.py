"""robots.txt (RFC 9309) and per-key politeness for Scrapy's downloader; replaces RobotsTxtMiddleware.

For every http(s) request:

1. Its politeness key (:meth:`crawlproj.politeness.gate.PolitenessGate.key_of`: registered
   domain, or host) becomes its ``download_slot``. This middleware tells the gate when a fetch
   on the key starts and ends (the downloader's signals), and configures the key's slot from the
   gate: one fetch in flight, the key's delay counted from the previous answer, a last fetch
   from an earlier run or another node waited out the same way. Under the DispatcherScheduler
   the gate already held the request back until then (but for a few milliseconds of handoff,
   ``HANDOFF_LEAD``), so it does not wait in the slot for the delay.
2. Its authority's robots.txt verdict comes from the node's cache (memory, then SQLite). A missing,
   expired or due-for-retry copy is fetched once, through ``crawler.engine.download_async`` with
   the same slot (so it obeys the same politeness), redirects followed here (up to 5, rules
   applied to the original authority), at most 500 KiB read. Requests arriving meanwhile wait
   on the one fetch, each on a Deferred of its own.
3. 2xx: obey the rules. 4xx: allow all. 5xx, network error or ``ROBOTS_FETCH_TIMEOUT``:
   disallow all for now and retry with exponential back-off; requests are held (up to
   ``ROBOTS_HOLD_TIME``) across retries and go on when robots.txt answers. Then a leased request
   (DispatcherScheduler) is postponed: it goes back to the dispatcher with the next retry time
   (:class:`~crawlproj.politeness.gate.Postponed`, stats ``robots/postponed``), until robots.txt
   has failed for ``ROBOTS_POSTPONE_MAX``. A request robots.txt forbids, or whose hold (or
   postponement) runs out, ends with IgnoreRequest (its errback sees it; ``robots/forbidden``).
4. Under the dispatcher, a leased request waits out its key's delay in the last downloader
   middleware, :class:`FetchStartMiddleware`, and starts only if the node's fence still holds
   (re-read on the monotonic clock just before it enters its slot); otherwise it is postponed,
   not fetched. A robots.txt fetch checks the fence too. The delay counts from the answer's
   last byte where the body is known whole (:func:`answer_end`), else from when the
   downloader handed the answer on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import ParseResult, urlsplit

from scrapy import Request, signals
from scrapy.exceptions import IgnoreRequest, NotConfigured, StopDownload
from scrapy.http.request import NO_CALLBACK
from scrapy.utils.asyncio import CallLaterResult, call_later
from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future
from scrapy.utils.httpobj import urlparse_cached
from twisted.internet.defer import Deferred

from crawlproj.meta import (
    ANSWERED,
    DONT_OBEY_ROBOTSTXT,
    DOWNLOAD_LATENCY,
    DOWNLOAD_SLOT,
    KEY,
    LEASE,
    RECEIVED,
    ROBOTS_FETCH,
)
from crawlproj.politeness.config import throttle_enabled
from crawlproj.politeness.gate import HANDOFF_LEAD, PolitenessGate, Postponed
from crawlproj.politeness.robots import MAX_ROBOTS_BYTES, MAX_ROBOTS_REDIRECTS, REDIRECT_STATUSES
from crawlproj.politeness.robots_cache import FAILING
from crawlproj.setting_checks import float_at_least
from crawlproj.wire.urls import BadURL

if TYPE_CHECKING:
    from scrapy.core.downloader import Slot
    from scrapy.crawler import Crawler
    from scrapy.http import Response

    from crawlproj.politeness.robots import ParsedRobots

logger = logging.getLogger(__name__)


HTTP_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Like Scrapy's RobotsTxtMiddleware: robots.txt goes first in the slot's politeness order.
ROBOTS_PRIORITY = 1000


def answer_end(response: Response, received: tuple[int, float] | None, now: float) -> float:
    """Monotonic time an answer ended, from which its key's delay counts: when the last byte of
    its body arrived (the server sent it before), if the body is known whole, i.e. exactly its
    Content-Length was received and no Transfer-Encoding ends it otherwise; else ``now``, when
    the downloader handed the answer on, one reactor turn or more after its last byte."""
    if received is None:
        return now
    headers = response.headers
    length = headers.get(b"Content-Length")
    if length is None or length != str(received[0]).encode() or b"Transfer-Encoding" in headers:
        return now
    return min(received[1], now)


async def start_fenced(gate: PolitenessGate, key: str) -> None:
    """Wait out ``key``'s delay (not in its slot), then read the fence: the request enters its
    slot and starts at once, or is postponed (``politeness/fence_stopped``)."""
    while True:
        wait = gate.last_fetch(key) + gate.delay_for(key) - time.monotonic()
        if wait <= 0:
            break
        d: Deferred[None] = Deferred()
        call_later(wait, d.callback, None)
        await maybe_deferred_to_future(d)
    if not gate.fence_holds(time.monotonic()):
        if gate.state.stats is not None:
            gate.state.stats.inc_value("politeness/fence_stopped")
        raise Postponed(0.0, "fence")


class FetchStartMiddleware:
    """The last downloader middleware: under the dispatcher a leased request waits out its key's
    delay here and starts only if the node's fence still holds, with no other middleware left
    to run between the end of the delay and its slot (the Politeness add-on puts it last)."""

    def __init__(self, gate: PolitenessGate):
        self.gate = gate
        gate.starts_last = True

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> FetchStartMiddleware:
        if not throttle_enabled(crawler.settings):
            raise NotConfigured("ROBOTS_THROTTLE_ENABLED is off")
        gate = crawler.get_extension(PolitenessGate)
        if gate is None:
            raise NotConfigured("FetchStartMiddleware needs the PolitenessGate extension "
                                "(the add-on crawlproj.addons.Politeness enables both)")
        return cls(gate)

    async def process_request(self, request: Request) -> None:
        meta = request.meta
        key = meta.get(KEY)
        if key is not None and LEASE in meta and self.gate.fenced and not meta.get(ROBOTS_FETCH):
            await start_fenced(self.gate, key)


def authority_of(url: ParseResult) -> str:
    """``scheme://host[:port]``, lower case, the port only when not the scheme's default."""
    host = url.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = url.port
    if port is None or port == HTTP_DEFAULT_PORTS.get(url.scheme):
        return f"{url.scheme}://{host}"
    return f"{url.scheme}://{host}:{port}"


@dataclass
class _Pending:
    """Requests of one authority waiting for its next robots.txt fetch."""

    key: str
    waiters: list[Deferred[bool]] = field(default_factory=list)
    fetching: bool = False
    timer: CallLaterResult | None = None
    timer_at: float = 0.0


class RobotsThrottleMiddleware:
    def __init__(self, crawler: Crawler, gate: PolitenessGate, obey: bool, hold_time: float):
        self.crawler = crawler
        self.gate = gate
        self.pol = gate.state
        self.obey = obey
        self.hold_time = hold_time
        self.stats = crawler.stats
        self.user_agent = gate.config.user_agent
        self.postpone_max = gate.config.postpone_max
        self.fetch_timeout = gate.config.robots_fetch_timeout
        self._pending: dict[str, _Pending] = {}
        self._closing = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> RobotsThrottleMiddleware:
        settings = crawler.settings
        if not throttle_enabled(settings):
            raise NotConfigured("ROBOTS_THROTTLE_ENABLED is off")
        hold = float_at_least(settings, "ROBOTS_HOLD_TIME", 0.0, "seconds >= 0")
        if settings.getbool("AUTOTHROTTLE_ENABLED"):
            logger.warning("AUTOTHROTTLE_ENABLED: AutoThrottle changes slot delays too; "
                           "RobotsThrottleMiddleware sets them again before every request "
                           "(use ROBOTS_THROTTLE_ADAPTIVE instead)")
        gate = crawler.get_extension(PolitenessGate)
        if gate is None:
            raise NotConfigured("RobotsThrottleMiddleware needs the PolitenessGate extension "
                                "(the add-on crawlproj.addons.Politeness enables both)")
        mw = cls(crawler, gate, settings.getbool("ROBOTSTXT_OBEY"), hold)
        connect = crawler.signals.connect
        connect(mw._request_reached_downloader, signal=signals.request_reached_downloader)
        connect(mw._response_downloaded, signal=signals.response_downloaded)
        connect(mw._request_left_downloader, signal=signals.request_left_downloader)
        connect(mw._headers_received, signal=signals.headers_received)
        connect(mw._bytes_received, signal=signals.bytes_received)
        connect(mw._spider_closed, signal=signals.spider_closed)
        return mw

    # -- the request path -----------------------------------------------------------------------

    async def process_request(self, request: Request) -> None:
        meta = request.meta
        if meta.get(ROBOTS_FETCH):
            return None  # our own robots.txt fetch: key and slot were set when it was made
        url = urlparse_cached(request)
        if url.scheme not in HTTP_DEFAULT_PORTS or not url.hostname:
            return None
        key = self.gate.key_of(request)
        meta.pop(ANSWERED, None)  # a retry or redirect copies the meta of its original
        if self.obey and not meta.get(DONT_OBEY_ROBOTSTXT):
            rules = await self._robots_for(authority_of(url), key, request)
            if not rules.allowed(request.url, self.user_agent):
                self._forbid(request, "rules", "Forbidden by robots.txt")
        if self.gate.fenced and LEASE in meta and not self.gate.starts_last:
            await start_fenced(self.gate, key)  # FetchStartMiddleware is not in the chain
        return None

    async def _robots_for(self, authority: str, key: str, request: Request) -> ParsedRobots:
        deadline: float | None = None
        first = True
        while True:
            verdict = await self.pol.robots_verdict(authority, count=first)
            first = False
            if verdict.parsed is not None:
                return verdict.parsed
            if self._closing:
                self._forbid(request, "closing", "Crawl closing before robots.txt was known")
            now = self.pol.clock()
            if verdict.kind != FAILING:  # missing, expired or retry due: fetch now
                await self._await_fetch(authority, key, now, None)
                continue
            if deadline is None:
                # The hold counts from the authority's first failure, not from this request: once
                # robots.txt has failed for ROBOTS_HOLD_TIME, its requests are postponed or end at
                # once instead of each waiting out a hold of its own, one after another on the key.
                deadline = (verdict.fail_since or now) + self.hold_time
                if now < deadline:
                    self.stats.inc_value("robots/held")
            if now >= deadline:
                failing_for = now - (verdict.fail_since or now)
                if LEASE in request.meta and failing_for < self.postpone_max:
                    # RFC 9309: unreachable is a temporary disallow. The dispatcher keeps the
                    # request and serves it again when the next retry of robots.txt is due, or
                    # once robots.txt has failed for ROBOTS_POSTPONE_MAX if that comes first
                    # (then it ends, not a back-off later).
                    self.stats.inc_value("robots/postponed")
                    until = min(verdict.retry_at, (verdict.fail_since or now) + self.postpone_max)
                    raise Postponed(until - now, "robots")
                self._forbid(request, "unreachable", "robots.txt unreachable: disallow all")
            await self._await_fetch(authority, key, verdict.retry_at, deadline)

    def _forbid(self, request: Request, reason: str, message: str) -> NoReturn:
        self.stats.inc_value("robots/forbidden")
        self.stats.inc_value(f"robots/forbidden/{reason}")
        logger.debug("%s (%s): %s", message, reason, request, extra={"spider": self.crawler.spider})
        raise IgnoreRequest(message)

    # -- one fetch per authority, many waiters ----------------------------------------------------

    async def _await_fetch(self, authority: str, key: str, at: float, deadline: float | None) -> bool:
        """Wait for the authority's next robots.txt fetch, started at ``at`` (epoch seconds) unless
        one is already running or due sooner. False when ``deadline`` came first."""
        pending = self._pending.get(authority)
        if pending is None:
            pending = self._pending[authority] = _Pending(key)
        waiter: Deferred[bool] = Deferred()
        pending.waiters.append(waiter)
        if not pending.fetching:
            wait = at - self.pol.clock()
            if wait <= 0:
                self._start_fetch(authority)
            elif pending.timer is None or at < pending.timer_at:
                if pending.timer is not None:
                    pending.timer.cancel()
                pending.timer = call_later(wait, self._start_fetch, authority)
                pending.timer_at = at
        expiry = None
        if deadline is not None:
            expiry = call_later(max(0.0, deadline - self.pol.clock()), self._expire, authority, waiter)
        try:
            return await maybe_deferred_to_future(waiter)
        finally:
            if expiry is not None:
                expiry.cancel()

    def _expire(self, authority: str, waiter: Deferred[bool]) -> None:
        if waiter.called:
            return
        pending = self._pending.get(authority)
        if pending is not None and waiter in pending.waiters:
            pending.waiters.remove(waiter)
            if not pending.waiters and not pending.fetching:
                self._drop_pending(authority)
        waiter.callback(False)

    def _drop_pending(self, authority: str) -> None:
        pending = self._pending.pop(authority, None)
        if pending is not None and pending.timer is not None:
            pending.timer.cancel()

    def _start_fetch(self, authority: str) -> None:
        pending = self._pending.get(authority)
        if pending is None or pending.fetching:
            return
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None
        if not pending.waiters:  # everyone gave up: nobody needs this fetch
            self._drop_pending(authority)
            return
        if not self.gate.fence_holds(time.monotonic()):  # a robots.txt fetch is a fetch on the key
            self.stats.inc_value("politeness/fence_stopped")
            waiters = pending.waiters
            self._drop_pending(authority)
            for waiter in waiters:
                if not waiter.called:
                    waiter.errback(Postponed(0.0, "fence"))
            return
        pending.fetching = True
        deferred_from_coro(self._fetch(authority, pending))

    async def _fetch(self, authority: str, pending: _Pending) -> None:
        started = time.perf_counter()
        failure: Exception | None = None
        try:
            status, body, error = await self._download_robots(authority, pending.key)
            await self.pol.record_robots_fetch(authority, pending.key, status, body, error)
            slot = self._slot(pending.key)
            if slot is not None:  # a new Crawl-delay applies to requests already in the slot
                slot.delay = self.gate.delay_for(pending.key)
        except Exception as exc:  # a bug here must fail the waiting requests, not hang them
            logger.exception("robots.txt of %s: could not record the fetch", authority)
            failure = exc
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            self.pol.robots.fetch_ms.add(elapsed_ms)
            logger.debug("robots.txt of %s fetched in %.1f ms", authority, elapsed_ms)
            waiters, pending.waiters, pending.fetching = pending.waiters, [], False
            if self._pending.get(authority) is pending:
                self._drop_pending(authority)
            for waiter in waiters:
                if waiter.called:
                    continue
                if failure is None:
                    waiter.callback(True)
                else:
                    waiter.errback(failure)

    async def _download_robots(self, authority: str, key: str) -> tuple[int, bytes, str | None]:
        """(status of the final hop, body, None) or (0, b"", exception name) on a network error."""
        url = f"{authority}/robots.txt"
        status = 0
        for _hop in range(MAX_ROBOTS_REDIRECTS + 1):
            request = Request(
                url, callback=NO_CALLBACK, priority=ROBOTS_PRIORITY, dont_filter=True,
                # no compression: a small compressed body must not inflate past our limits
                headers={"Accept-Encoding": "identity"},
                meta={ROBOTS_FETCH: True, KEY: key, DOWNLOAD_SLOT: key,
                      "dont_redirect": True, "dont_retry": True, DONT_OBEY_ROBOTSTXT: True,
                      "handle_httpstatus_all": True, "download_timeout": self.fetch_timeout,
                      # the body is cut at MAX_ROBOTS_BYTES by _bytes_received, whatever its size
                      "download_maxsize": 0, "download_warnsize": 0},
            )
            try:
                response = await self.crawler.engine.download_async(request)
            except Exception as exc:
                return 0, b"", type(exc).__name__
            status = response.status
            if status not in REDIRECT_STATUSES:
                return status, response.body, None
            location = response.headers.get(b"Location")
            if not location:
                break
            url = response.urljoin(location.decode("latin-1"))
            try:
                if urlsplit(url).scheme not in HTTP_DEFAULT_PORTS:
                    break
                key = self.pol.key_of(url)  # a redirect elsewhere spends that key's politeness
            except (BadURL, ValueError):
                break
            self.stats.inc_value("robots/fetch/redirect")
        else:
            self.stats.inc_value("robots/fetch/too_many_redirects")
        # RFC 9309 2.3.1.2: redirects that lead nowhere mean "unavailable" (a 3xx: allow all)
        return status, b"", None

    # -- downloader slots: one fetch in flight per key, delay from the key's state ---------------

    def _slot(self, key: str) -> Slot | None:
        return self.crawler.engine.downloader.slots.get(key)

    def _request_reached_downloader(self, request: Request) -> None:
        key = request.meta.get(KEY)
        slot = self._slot(key) if key is not None else None
        if slot is None:
            return
        assert key is not None
        now = time.monotonic()
        slot.concurrency = 1
        slot.jitter = 0.0  # Scrapy's jitter goes below the delay too
        slot.delay = self.gate.delay_for(key)
        last = self.gate.last_fetch(key)
        if last > slot.lastseen:
            # a fetch of an earlier run or of the key's previous owner (the state file)
            if not slot.lastseen and last + slot.delay > now:
                self.stats.inc_value("politeness/waited_for_earlier_fetch")
            slot.lastseen = last
        if slot.queue or slot.transferring or slot.lastseen + slot.delay - now > HANDOFF_LEAD:
            # the request waits in the slot for its key's delay, holding one of CONCURRENT_REQUESTS
            after = "after_robots" if self.gate.last_was_robots(key) else "page"
            self.stats.inc_value(f"politeness/slot_wait/{after}")
        self.gate.started(key, now)

    def _response_downloaded(self, response: Response, request: Request) -> None:
        key = request.meta.get(KEY)
        if key is None:
            return
        now = answer_end(response, request.meta.get(RECEIVED), time.monotonic())
        slot = self._slot(key)
        if slot is not None:
            # Space the next fetch from this answer: the delay then holds as the server sees
            # it, whatever the reactor's jitter in sending requests.
            slot.lastseen = now
        request.meta[ANSWERED] = True
        latency = request.meta.get(DOWNLOAD_LATENCY)
        if latency is not None:
            self.pol.observe_latency(key, latency, response.status)
            if slot is not None:
                slot.delay = self.gate.delay_for(key)
        self.gate.ended(key, now, request, robots=bool(request.meta.get(ROBOTS_FETCH)))

    def _request_left_downloader(self, request: Request) -> None:
        key = request.meta.get(KEY)
        if key is None or request.meta.get(ANSWERED):
            return
        now = time.monotonic()  # failed: the attempt still counts
        slot = self._slot(key)
        if slot is not None:
            slot.lastseen = now
        self.gate.ended(key, now, request, robots=bool(request.meta.get(ROBOTS_FETCH)))

    def _headers_received(self, request: Request) -> None:
        request.meta[RECEIVED] = (0, time.monotonic())  # a new attempt: nothing of its body yet

    def _bytes_received(self, data: bytes, request: Request) -> None:
        meta = request.meta
        received = meta.get(RECEIVED, (0, 0.0))[0] + len(data)
        meta[RECEIVED] = (received, time.monotonic())
        if received > MAX_ROBOTS_BYTES and meta.get(ROBOTS_FETCH):
            self.stats.inc_value("robots/fetch/cut_at_limit")
            raise StopDownload(fail=False)  # RFC 9309 2.5: the first 500 KiB are enough

    def _spider_closed(self) -> None:
        self._closing = True
        for authority, pending in list(self._pending.items()):
            self._drop_pending(authority)
            if pending.fetching:
                continue
            for waiter in pending.waiters:
                if not waiter.called:
                    waiter.callback(False)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} obey={self.obey} hold={self.hold_time}s>"
