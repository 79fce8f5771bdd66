"""DispatcherScheduler: a Scrapy scheduler that leases its requests from the ZeroMQ dispatcher.

    ADDONS = {..., "crawlproj.addons.DispatcherNode": 500}   # sets SCHEDULER to this class

The node registers under a stable name, owns the partitions the dispatcher assigns it, pulls
leased requests with credit, keeps them in per-politeness-key queues and hands Scrapy only a
request whose key the politeness gate (crawlproj.politeness.gate) lets start: no fetch in
flight, its delay past, on the gate's one clock. Its session with the dispatcher is in
crawlproj.scheduling.session, partition handoff in crawlproj.scheduling.handoff. Discovered requests are filtered through
a bounded recently-sent set and pushed in batches; a leased request is acked when its fate is
final (crawlproj.scheduling.leases), postponed when the downloader middlewares say it cannot
start yet (its robots.txt unreachable, or the fence passed), and renewed while held. A request's
time from queued to handed to Scrapy is the ``politeness_wait`` operation (its timings). On revoke
it releases what it has not started, finishes what it has, and hands the partitions'
politeness state over.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from scrapy import Request, signals
from scrapy.core.scheduler import BaseScheduler
from scrapy.utils.defer import deferred_from_coro
from scrapy.utils.reactor import is_asyncio_reactor_installed
from twisted.internet.defer import Deferred

from crawlproj.linkfilter import recent_links
from crawlproj.meta import CANONICAL, KEY, LEASE, OWN_ERRBACK, PARENT, REDIRECT_URLS, REVISIT, WAKE
from crawlproj.meta import PARTITION as PART
from crawlproj.observability.extension import timings_of
from crawlproj.politeness.gate import PolitenessGate, fetch_ended
from crawlproj.wire.protocol import check_wire_request
from crawlproj.scheduling.config import NodeConfig
from crawlproj.scheduling.handoff import PartitionHandoff
from crawlproj.scheduling.keyqueue import KeyQueues
from crawlproj.scheduling.leases import LeaseBook, LeaseTrackerMiddleware, lease_final, lease_postponed
from crawlproj.scheduling.link import DispatcherLink
from crawlproj.scheduling.session import DispatcherSession
from crawlproj.wire.request import Unserializable, WireCodec
from crawlproj.wire.urls import BadURL, canonicalize

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.spiders import Spider

logger = logging.getLogger(__name__)

OVER_CREDIT_FACTOR = 8  # leases held past this x DISPATCHER_QUEUE_TARGET (more than ever asked for) go back


class DispatcherScheduler(DispatcherSession, PartitionHandoff, BaseScheduler):
    def __init__(self, crawler: Crawler, config: NodeConfig, book: LeaseBook,
                 gate: PolitenessGate | None):
        if not is_asyncio_reactor_installed():
            raise ValueError("TWISTED_REACTOR: DispatcherScheduler needs the asyncio reactor "
                             "(twisted.internet.asyncioreactor.AsyncioSelectorReactor)")
        self.crawler = crawler
        self.stats = crawler.stats
        self.config = config
        self.node = config.node_name
        self.book = book
        # revisits (handed out again by the dispatcher's schedule) get REVISIT_SHARE of a key's fetches
        self.queues: KeyQueues[Request] = KeyQueues(lambda r: REVISIT in r.meta, book.revisit.share)
        # when each queued request was queued: its politeness_wait ends when Scrapy takes it
        self.queued_at: weakref.WeakKeyDictionary[Request, float] = weakref.WeakKeyDictionary()
        self.recent = recent_links(crawler)
        self.partitions = 0  # P, from the dispatcher's welcome
        self.owned: set[int] = set()
        self.revoking: dict[int, float] = {}  # revoked, not yet handed off -> monotonic revoke time
        self.inflight: dict[int, tuple[str, int]] = {}  # lease id -> (key, partition), given to Scrapy
        self.busy_by: dict[str, int] = {}  # key -> lease id of the request holding it
        self._early: list[Request] = []  # start requests that came before the welcome
        self.requested = 0  # credit asked for and not yet served
        self.push_buffer: list[dict[str, Any]] = []
        self.replay_log: deque[tuple[float, str, list[Any]]] = deque()
        self.ack_buffer: list[int] = []
        self.ack_outcomes: dict[int, dict[str, Any]] = {}  # lease id -> revisit outcome of its ack
        self.epoch: Any = None
        self.registered = False
        self.finished = False
        self.closing = False
        self.codec: WireCodec | None = None
        self.link: DispatcherLink | None = None
        self.spider: Spider | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake_handle: asyncio.Handle | None = None
        self._wake_at = 0.0  # monotonic time the pending wake is due (0: as soon as possible)
        self._welcomed = asyncio.Event()
        # when a key may be fetched: the node's one politeness gate (None: Scrapy's slots decide)
        self.gate = gate
        self.engine_ready = False  # engine.crawl() may be used to wake the engine only once open
        self.timings = timings_of(crawler)
        self.timings.open_reader("report")  # read by _send_stats
        self._ping_sent = 0.0  # perf_counter of the last heartbeat: its answer times the round trip
        self.lease_timeout = 0.0  # the dispatcher's, from its welcome: a lease held longer goes back
        self.renew_interval = 0.0  # the dispatcher's, from its welcome: how often leases are renewed
        self.fence = 0.0  # the dispatcher's, from its welcome (docs/protocol.md, Fenced ownership)
        self.fence_until = 0.0  # monotonic: no fetch starts from then on (none before a welcome)
        self.fenced_at: dict[int, float] = {}  # partition of a dead owner -> when we got it (<= P)
        self.held: set[int] = set()  # lease ids queued or in flight here: renewed, never taken twice
        self.postpone_buffer: list[list[Any]] = []  # [lease id, retry in seconds], to send
        if gate is not None:
            gate.fence_until = 0.0
        self._warned_heartbeat = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> DispatcherScheduler:
        tracker = crawler.get_spider_middleware(LeaseTrackerMiddleware)
        if tracker is None:
            raise ValueError("SPIDER_MIDDLEWARES: DispatcherScheduler needs crawlproj.scheduling.leases."
                             "LeaseTrackerMiddleware (the add-on crawlproj.addons.DispatcherNode enables both)")
        gate = crawler.get_extension(PolitenessGate)
        scheduler = cls(crawler, NodeConfig.from_settings(crawler.settings, crawler.spider), tracker.book, gate)
        connect = crawler.signals.connect
        connect(scheduler._lease_final, signal=lease_final)
        connect(scheduler._lease_postponed, signal=lease_postponed)
        if gate is not None:
            connect(scheduler._fetch_ended, signal=fetch_ended)
        else:
            connect(scheduler._left_downloader, signal=signals.request_left_downloader)
        connect(scheduler._spider_opened, signal=signals.spider_opened)
        return scheduler

    # -- life cycle -------------------------------------------------------------------------------

    def open(self, spider: Spider) -> Deferred[None]:
        # Scrapy awaits a Deferred (not a coroutine) from Scheduler.open()
        return deferred_from_coro(self._open(spider))

    async def _open(self, spider: Spider) -> None:
        self.spider = spider
        self.link = DispatcherLink(self.config.endpoint, self.node, self._on_message, self.stats,
                                   curve=self.config.curve)
        self.link.start()
        self._register()
        loop = asyncio.get_event_loop()
        self._tasks = [loop.create_task(self._every(self.config.flush_interval, self._flush)),
                       loop.create_task(self._every(self.config.heartbeat_interval, self._heartbeat)),
                       loop.create_task(self._every(self.config.stats_interval, self._send_stats)),
                       loop.create_task(self._renew_every())]
        logger.info("Node %s connecting to the dispatcher at %s", self.node, self.config.endpoint)
        try:
            await asyncio.wait_for(self._welcomed.wait(), self.config.timeout)
        except asyncio.TimeoutError:
            logger.warning("No welcome from the dispatcher at %s after %.0f s; still trying",
                           self.config.endpoint, self.config.timeout)

    def _spider_opened(self, spider: Spider) -> None:
        self.engine_ready = True
        self._wake_soon()

    async def _every(self, interval: float, func: Any) -> None:
        while True:
            await asyncio.sleep(interval)  # a timer, not synchronisation
            try:
                func()
            except Exception:
                logger.exception("Error in the scheduler's periodic %s", func.__name__)

    def close(self, reason: str) -> None:
        self.closing = True
        for task in self._tasks:
            task.cancel()
        if self._wake_handle is not None:
            self._wake_handle.cancel()
        if self.link is None:
            return
        released = self._unqueue(self.queues.clear())
        self._flush()
        if released:
            self.link.send("release", node=self.node, leases=released)
        if self.registered and self.partitions:
            parts = sorted(self.owned | self.revoking.keys())
            self.link.send("handoff", node=self.node, partitions=parts,
                           state=self._export_state(set(parts)))
            self.link.send("bye", node=self.node)
        self._send_stats()
        logger.info("Node %s closing (%s): released %d queued leases, %d still in flight",
                    self.node, reason, len(released), len(self.inflight))
        self.link.close()

    def has_pending_requests(self) -> bool:
        if (len(self.queues) or self.inflight or self.push_buffer or self.ack_buffer
                or self.postpone_buffer):
            return True
        return not self.finished

    def __len__(self) -> int:
        return len(self.queues)

    # -- Scrapy hands us requests ------------------------------------------------------------------

    def enqueue_request(self, request: Request) -> bool:
        meta = request.meta
        if meta.pop(WAKE, False):
            self.queues.push(meta[KEY], request, front=True)
            self.queues.release(meta[KEY], 0.0)  # it was ready when taken out for the wake-up
            return True
        parent = meta.pop(PARENT, None)
        lease_id = meta.get(LEASE)
        if parent is None and lease_id is not None:
            return self._continue(request, lease_id)
        try:
            return self._discover(request)
        finally:
            if parent is not None:
                self.book.request_arrived(parent)

    def _continue(self, request: Request, lease_id: int) -> bool:
        """A retry (same URL) stays here under its lease; a redirect is a new URL for the
        dispatcher to deduplicate (so redirect loops end as they do in Scrapy), and the lease
        of the redirected request ends."""
        if lease_id not in self.inflight:  # given up (a late handoff): its new owner fetches it
            self.stats.inc_value("dispatcher/retry_given_up")
            return False
        # leased requests arrive without redirect history, so any history means a redirect
        if not request.meta.get(REDIRECT_URLS):
            self.stats.inc_value("dispatcher/retried")
            self._queue(request.meta[KEY], request, front=True)
            self._wake_soon()
            return True
        own_errback = request.meta.pop(OWN_ERRBACK, None)
        for name in (LEASE, KEY, PART):
            request.meta.pop(name, None)
        request.errback = getattr(self.spider, own_errback) if own_errback else None
        self._discover(request)
        self.stats.inc_value("dispatcher/redirected")
        # final through _lease_final (acked, out of inflight, a revoked partition handed off);
        # popping inflight first skipped the handoff check, which kept a revoked partition
        # waiting for DISPATCHER_HANDOFF_TIMEOUT when a redirect was its last request
        self.book.end(lease_id)
        if self.inflight.pop(lease_id, None) is not None and self.revoking:
            self._maybe_handoff()  # the book did not know it: not final through it
        return True

    def _discover(self, request: Request) -> bool:
        codec = self.codec
        if codec is None:
            # Start requests can come before the dispatcher's welcome (P unknown yet).
            self._early.append(request)
            return True
        canonical = request.meta.pop(CANONICAL, None)  # set by a spider that used the filter
        try:
            if canonical is None:
                canonical = canonicalize(request.url)
                if not self.recent.add(canonical) and not request.dont_filter:
                    self.stats.inc_value("dispatcher/recently_sent")
                    return False
            fp, key, part = codec.route_canonical(canonical)
        except BadURL as exc:
            self.stats.inc_value("dispatcher/bad_url")
            logger.warning("Not pushing %s: %s", request.url[:300], exc)
            return False
        try:
            wire = codec.encode(request, fp, key, part)
        except Unserializable as exc:
            self.stats.inc_value("dispatcher/unserializable")
            logger.error("LOST REQUEST %s: it cannot be sent to the dispatcher: %s", request.url, exc)
            return False
        self.push_buffer.append(wire)
        self.stats.inc_value("dispatcher/discovered")
        if len(self.push_buffer) >= self.config.push_batch:
            self._flush()
        return True

    def _queue(self, key: str, request: Request, front: bool = False) -> None:
        """Queue a leased request. A key with nothing queued keeps no time in the queues: it
        waits for the gate's (a fetch lately, before a restart, or by the node that handed it over)."""
        fresh = key not in self.queues
        self.queues.push(key, request, front=front)
        self.queued_at[request] = time.monotonic()
        if fresh and self.gate is not None:
            since = self.fenced_at.get(request.meta[PART])
            if since is not None and self.gate.last_fetch(key) < since:
                self.gate.hold(key, since)  # its dead owner's last fetch ended by then at the latest
            self.queues.hold(key, self.gate.ready_at(key))

    def next_request(self) -> Request | None:
        now = time.monotonic()
        if not self._fence_holds(now):
            return None  # ownership of our keys is not sure: nothing starts
        popped = self.queues.pop_ready(now)
        if popped is None:
            self._arm_wake()
            self._pull()
            return None
        key, request = popped
        queued = self.queued_at.pop(request, None)
        if queued is not None:
            self.timings.record("politeness_wait", (now - queued) * 1000.0)
        lease_id = request.meta[LEASE]
        self.busy_by[key] = lease_id
        self.inflight[lease_id] = (key, request.meta[PART])
        self.book.begin(lease_id)
        self.stats.inc_value("dispatcher/handed_to_scrapy")
        self._pull()
        return request

    # -- politeness ---------------------------------------------------------------------------

    def _fetch_ended(self, request: Request, key: str, ready_at: float) -> None:
        """The gate saw a fetch on ``key`` end: the key may be handed out again from ``ready_at``."""
        self._release_key(key, request.meta.get(LEASE), ready_at)

    def _left_downloader(self, request: Request, spider: Any = None) -> None:
        """Without a gate (ROBOTS_THROTTLE_ENABLED off), Scrapy's slots keep the delays."""
        key = request.meta.get(KEY)
        if key is not None:
            self._release_key(key, request.meta.get(LEASE), 0.0)

    def _release_key(self, key: str, lease_id: int | None, ready_at: float) -> None:
        """The key's fetch by ``lease_id`` ended (or never reached the downloader)."""
        if lease_id is None or self.busy_by.get(key) != lease_id:
            return
        del self.busy_by[key]
        self.queues.release(key, ready_at)
        self._wake_soon()

    def _arm_wake(self) -> None:
        """Wake the engine when the earliest delayed key becomes ready."""
        when = self.queues.next_ready_time()
        if when is not None:
            self._wake_by(when)

    def _wake_soon(self) -> None:
        self._wake_by(0.0)

    def _wake_by(self, when: float) -> None:
        """Have a wake due at ``when`` (monotonic; 0: now) at the latest. A pending wake due later
        is moved up: a key that became ready, or a lease that came for an idle key, never waits
        for a timer armed for another key's delay."""
        if not self.engine_ready:
            return
        handle = self._wake_handle
        if handle is not None:
            if self._wake_at <= when:
                return
            handle.cancel()
        loop = asyncio.get_event_loop()
        delay = when - time.monotonic()
        self._wake_at = max(0.0, when)
        self._wake_handle = loop.call_later(delay, self._wake) if delay > 0 else loop.call_soon(self._wake)

    def _wake(self) -> None:
        """Re-inject one ready request through the public engine.crawl(), which makes the engine
        ask us for requests now instead of at its next 5-second heartbeat."""
        self._wake_handle = None
        if self.closing or self.spider is None:
            return
        popped = self.queues.pop_ready(time.monotonic())
        if popped is None:
            self._arm_wake()
            return
        key, request = popped
        request.meta[WAKE] = True
        self.crawler.engine.crawl(request)

    # -- leases -----------------------------------------------------------------------------------

    def _lease_final(self, lease_id: int) -> None:
        self.ack_buffer.append(lease_id)
        outcome = self.book.outcomes.pop(lease_id, None)
        if outcome is not None:
            self.ack_outcomes[lease_id] = outcome
        self.stats.inc_value("dispatcher/acked")
        self._lease_ended(lease_id)
        if len(self.ack_buffer) >= self.config.push_batch:
            self._flush()

    def _lease_postponed(self, lease_id: int, retry_in: float, why: str) -> None:
        """Not fetched (robots.txt unreachable for now, or the fence passed): the dispatcher
        serves it again after ``retry_in`` seconds."""
        self.postpone_buffer.append([lease_id, float(retry_in)])
        self.stats.inc_value(f"dispatcher/postponed/{why}")
        self._lease_ended(lease_id)

    def _lease_ended(self, lease_id: int) -> None:
        self.held.discard(lease_id)
        where = self.inflight.pop(lease_id, None)
        if where is not None:
            key, part = where
            # filtered before the downloader (robots.txt...): no fetch ended, the key's time stands
            self._release_key(key, lease_id, self.gate.ready_at(key) if self.gate is not None else 0.0)
            if part in self.revoking:
                self._maybe_handoff()

    def _on_batch(self, msg: dict[str, Any]) -> None:
        if self.codec is None or self.spider is None:
            self.stats.inc_value("dispatcher/unexpected/batch")  # before any welcome
            return
        if not self.registered:
            # sent before the dispatcher took us for gone (we were paused, or it restarted):
            # those leases are others' now
            assert self.link is not None
            stale = [lease_id for lease_id, _ in msg["leases"]]
            self.stats.inc_value("dispatcher/stale_leases", len(stale))
            self.link.send("release", node=self.node, leases=stale)
            return
        errback = self.book.errback(self.spider)
        # Credit bounds what a dispatcher sends; a broken or hostile one still cannot fill our memory.
        room = OVER_CREDIT_FACTOR * self.config.queue_target - len(self.queues) - len(self.inflight)
        unasked = [lease_id for lease_id, _ in msg["leases"][max(0, room):]]
        if unasked:
            assert self.link is not None
            self.stats.inc_value("dispatcher/over_credit", len(unasked))
            logger.error("The dispatcher sent %d leases past our credit: giving them back", len(unasked))
            self.link.send("release", node=self.node, leases=unasked)
        for lease_id, wire in msg["leases"][:max(0, room)]:
            self.requested = max(0, self.requested - 1)
            if lease_id in self.held:  # a second copy of a lease we hold: fetched once
                self.stats.inc_value("dispatcher/duplicate_lease")
                continue
            try:
                check_wire_request(wire, self.partitions)
                request = self.codec.decode(wire)
            except Exception as exc:
                self.stats.inc_value("dispatcher/undecodable")
                logger.error("Undecodable leased request %r: %r; acking it as final", repr(wire)[:500], exc)
                self.ack_buffer.append(lease_id)
                continue
            key, part = wire["k"], wire["p"]
            meta = request.meta
            meta[LEASE] = lease_id
            meta[KEY] = key
            meta[PART] = part
            if request.errback is not None:
                meta[OWN_ERRBACK] = request.errback.__name__
            request.errback = errback
            if self.config.node_header:
                request.headers[self.config.node_header] = self.node
            self.held.add(lease_id)
            self._queue(key, request)
        self.stats.inc_value("dispatcher/leased", len(msg["leases"]) - len(unasked))
        self._wake_soon()
