"""DispatcherScheduler: a Scrapy scheduler that leases its requests from the ZeroMQ dispatcher.

    SCHEDULER = "crawlproj.scheduling.scheduler.DispatcherScheduler"

The node registers under a stable name, owns the partitions the dispatcher assigns it, pulls
leased requests with credit, keeps them in per-politeness-key queues and hands Scrapy only a
request whose key is neither busy nor inside its delay. Discovered requests are filtered through
a bounded recently-sent set and pushed in batches; a leased request is acked when its fate is
final (crawlproj.scheduling.leases). On revoke it releases what it has not started, finishes
what it has, and hands the partitions' politeness state over.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scrapy import Request, signals
from scrapy.core.scheduler import BaseScheduler
from scrapy.utils.defer import deferred_from_coro
from scrapy.utils.reactor import is_asyncio_reactor_installed
from twisted.internet.defer import Deferred

from crawlproj.linkfilter import recent_links
from crawlproj.meta import CANONICAL, KEY, LEASE, OWN_ERRBACK, PARENT, WAKE
from crawlproj.meta import PARTITION as PART
from crawlproj.nodeid import node_name
from crawlproj.observability.extension import timings_of
from crawlproj.politeness.config import key_kind
from crawlproj.politeness.gate import PolitenessGate, fetch_ended
from crawlproj.wire.protocol import UNKNOWN_NODE, check_wire_request
from crawlproj.scheduling.keyqueue import KeyQueues
from crawlproj.scheduling.leases import LeaseBook, LeaseTrackerMiddleware, lease_final
from crawlproj.scheduling.link import DispatcherLink
from crawlproj.wire.request import Unserializable, WireCodec
from crawlproj.security.curve import ClientKeys, CurveKeyError, read_certificate
from crawlproj.setting_checks import HEADER_NAME, float_at_least, int_at_least, positive_float
from crawlproj.wire.urls import BadURL, canonicalize

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings
    from scrapy.spiders import Spider

logger = logging.getLogger(__name__)

OVER_CREDIT_FACTOR = 8  # leases held past this x DISPATCHER_QUEUE_TARGET (more than ever asked for) go back


@dataclass(frozen=True)
class NodeConfig:
    """DISPATCHER_* settings of a node, read and checked once (ValueError names the setting)."""

    endpoint: str
    node_name: str
    queue_target: int
    push_batch: int
    flush_interval: float
    heartbeat_interval: float
    timeout: float
    stats_interval: float
    replay_seconds: float
    handoff_timeout: float
    download_timeout: float
    node_header: str
    key_by: str
    curve: ClientKeys | None

    @classmethod
    def from_settings(cls, s: BaseSettings, spider: Any = None) -> NodeConfig:
        endpoint = s.get("DISPATCHER_ENDPOINT")
        if not isinstance(endpoint, str) or "://" not in endpoint:
            raise ValueError(f"DISPATCHER_ENDPOINT: expected a ZeroMQ endpoint like "
                             f"tcp://host:port, got {endpoint!r}")
        node_header = str(s.get("DISPATCHER_NODE_HEADER") or "")
        if node_header and not HEADER_NAME.match(node_header):
            raise ValueError(f"DISPATCHER_NODE_HEADER: expected an HTTP header name (or ''), got {node_header!r}")
        return cls(
            endpoint=endpoint,
            node_name=node_name(s, spider),
            queue_target=int_at_least(s, "DISPATCHER_QUEUE_TARGET", 1, "a positive integer"),
            push_batch=int_at_least(s, "DISPATCHER_PUSH_BATCH", 1, "a positive integer"),
            flush_interval=positive_float(s, "DISPATCHER_FLUSH_INTERVAL"),
            heartbeat_interval=positive_float(s, "DISPATCHER_HEARTBEAT_INTERVAL"),
            timeout=positive_float(s, "DISPATCHER_TIMEOUT"),
            stats_interval=positive_float(s, "DISPATCHER_STATS_INTERVAL"),
            replay_seconds=positive_float(s, "DISPATCHER_REPLAY_SECONDS"),
            handoff_timeout=positive_float(s, "DISPATCHER_HANDOFF_TIMEOUT"),
            download_timeout=float_at_least(s, "DOWNLOAD_TIMEOUT", 0.0, "seconds >= 0"),
            node_header=node_header,
            key_by=key_kind(s),
            curve=cls._curve_keys(s),
        )

    @staticmethod
    def _curve_keys(s: BaseSettings) -> ClientKeys | None:
        """DISPATCHER_CURVE_SECRET_KEY_FILE + DISPATCHER_CURVE_SERVER_KEY_FILE, read now."""
        secret_name, server_name = "DISPATCHER_CURVE_SECRET_KEY_FILE", "DISPATCHER_CURVE_SERVER_KEY_FILE"
        secret_file, server_file = str(s.get(secret_name) or ""), str(s.get(server_name) or "")
        if not secret_file and not server_file:
            return None
        if not secret_file or not server_file:
            raise ValueError(f"{secret_name} and {server_name}: expected both (CURVE) or neither, "
                             f"got {secret_file!r} and {server_file!r}")
        try:
            public, secret = read_certificate(secret_file, secret=True)
        except CurveKeyError as exc:
            raise ValueError(f"{secret_name}: expected this node's CURVE key pair file (crawlproj keys: "
                             f"clients/<name>.key_secret), got {secret_file!r}: {exc}") from None
        try:
            server, _ = read_certificate(server_file, secret=False)
        except CurveKeyError as exc:
            raise ValueError(f"{server_name}: expected the dispatcher's public key file (crawlproj keys: "
                             f"dispatcher.key), got {server_file!r}: {exc}") from None
        assert secret is not None
        return ClientKeys(public, secret, server)


class DispatcherScheduler(BaseScheduler):
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
        self.queues: KeyQueues[Request] = KeyQueues()
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
        self.epoch: Any = None
        self.registered = False
        self.finished = False
        self.closing = False
        self.codec: WireCodec | None = None
        self.link: DispatcherLink | None = None
        self.spider: Spider | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake_handle: asyncio.TimerHandle | None = None
        self._welcomed = asyncio.Event()
        # when a key may be fetched: the node's one politeness gate (None: Scrapy's slots decide)
        self.gate = gate
        self.engine_ready = False  # engine.crawl() may be used to wake the engine only once open
        self.timings = timings_of(crawler)
        self.timings.open_reader("report")  # read by _send_stats
        self._ping_sent = 0.0  # perf_counter of the last heartbeat: its answer times the round trip
        self.lease_timeout = 0.0  # the dispatcher's, from its welcome: a lease held longer goes back
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
                       loop.create_task(self._every(self.config.stats_interval, self._send_stats))]
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
        if len(self.queues) or self.inflight or self.push_buffer or self.ack_buffer:
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
        if not request.meta.get("redirect_urls"):
            self.stats.inc_value("dispatcher/retried")
            key = request.meta[KEY]
            self.queues.push(key, request, front=True)
            if self.gate is not None:
                self.queues.hold(key, self.gate.ready_at(key))
            self._wake_soon()
            return True
        own_errback = request.meta.pop(OWN_ERRBACK, None)
        for name in (LEASE, KEY, PART):
            request.meta.pop(name, None)
        request.errback = getattr(self.spider, own_errback) if own_errback else None
        self._discover(request)
        self.stats.inc_value("dispatcher/redirected")
        self.inflight.pop(lease_id, None)
        self.book.end(lease_id)
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

    def next_request(self) -> Request | None:
        now = time.monotonic()
        popped = self.queues.pop_ready(now)
        if popped is None:
            self._arm_wake()
            self._pull()
            return None
        key, request = popped
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
        if when is None or self._wake_handle is not None or not self.engine_ready:
            return
        loop = asyncio.get_event_loop()
        self._wake_handle = loop.call_later(max(0.0, when - time.monotonic()), self._wake)

    def _wake_soon(self) -> None:
        if self._wake_handle is None and self.engine_ready:
            self._wake_handle = asyncio.get_event_loop().call_soon(self._wake)

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
        where = self.inflight.pop(lease_id, None)
        self.ack_buffer.append(lease_id)
        self.stats.inc_value("dispatcher/acked")
        if where is not None:
            key, part = where
            # filtered before the downloader (robots.txt...): no fetch ended, the key's time stands
            self._release_key(key, lease_id, self.gate.ready_at(key) if self.gate is not None else 0.0)
            if part in self.revoking:
                self._maybe_handoff()
        if len(self.ack_buffer) >= self.config.push_batch:
            self._flush()

    # -- talking to the dispatcher ------------------------------------------------------------------

    def _register(self) -> None:
        assert self.link is not None
        self.link.send("register", node=self.node, pid=os.getpid(), host=socket.gethostname(),
                       capacity=self.config.queue_target)

    def _flush(self) -> None:
        """Pushes before acks: a response's discovered links are stored before its lease ends."""
        if self.link is None or not self.registered:
            return
        while self.push_buffer:
            batch, self.push_buffer = self.push_buffer[: self.config.push_batch], self.push_buffer[self.config.push_batch:]
            self.link.send("push", node=self.node, requests=batch)
            self._sent("push", batch)
            self.stats.inc_value("dispatcher/pushed", len(batch))
        if self.ack_buffer:
            acks, self.ack_buffer = self.ack_buffer, []
            self.link.send("ack", node=self.node, leases=acks)
            self._sent("ack", acks)

    def _sent(self, kind: str, payload: list[Any]) -> None:
        """Remember recent pushes and acks: a dispatcher killed before its commit loses the last
        ones it received (or had in its socket buffers), and a restarted one gets them again."""
        now = time.monotonic()
        log = self.replay_log
        log.append((now, kind, payload))
        horizon = now - self.config.replay_seconds
        while log and log[0][0] < horizon:
            log.popleft()

    def _replay(self) -> None:
        assert self.link is not None
        pushes = acks = 0
        for _, kind, payload in self.replay_log:
            if kind == "push":
                self.link.send("push", node=self.node, requests=payload)
                pushes += len(payload)
            else:
                self.link.send("ack", node=self.node, leases=payload)
                acks += len(payload)
        self.stats.inc_value("dispatcher/replayed", pushes + acks)
        logger.warning("Sent the last %.0f s again to the restarted dispatcher: %d pushed requests, "
                       "%d acks", self.config.replay_seconds, pushes, acks)

    def _pull(self) -> None:
        if self.link is None or not self.registered or self.finished or self.closing:
            return
        have = len(self.queues) + len(self.inflight) + self.requested
        want = self.config.queue_target - have
        if want >= max(1, self.config.queue_target // 4):
            self.requested += want
            self.link.send("pull", node=self.node, credit=want)

    def _heartbeat(self) -> None:
        assert self.link is not None
        loop = asyncio.get_event_loop()
        if self.registered and loop.time() - self.link.last_heard > self.config.timeout:
            logger.warning("No word from the dispatcher for %.0f s: registering again", self.config.timeout)
            self.registered = False
        if not self.registered:
            self._register()
            return
        self.link.send("heartbeat", node=self.node)
        self._ping_sent = time.perf_counter()
        self._force_late_handoffs()
        self._pull()

    def _send_stats(self) -> None:
        if self.link is None or not self.registered:
            return
        wanted = ("response_received_count", "item_scraped_count", "downloader/request_count",
                  "dispatcher/acked", "dispatcher/pushed", "dispatcher/discovered")
        stats = {k: self.stats.get_value(k, 0) for k in wanted}
        stats.update(queued=len(self.queues), inflight=len(self.inflight), keys=self.queues.keys,
                     owned=len(self.owned))
        stats.update(self.timings.report())  # timing/<op>/* of the last interval, node/cpu, keys/*
        self.link.send("stats", node=self.node, stats=stats)

    def _on_message(self, msg: dict[str, Any]) -> None:
        handler = getattr(self, f"_on_{msg['t']}", None)
        if handler is None:
            self.stats.inc_value(f"dispatcher/unexpected/{msg['t']}")
            return
        handler(msg)

    def _on_welcome(self, msg: dict[str, Any]) -> None:
        partitions = int(msg["partitions"])
        if self.codec is None:
            assert self.spider is not None
            self.codec = WireCodec(self.spider, partitions, self.config.key_by, self.stats)
        elif partitions != self.partitions:
            logger.error("The dispatcher now uses %d partitions instead of %d", partitions, self.partitions)
            self.codec.partitions = partitions
        self.partitions = partitions
        restarted = self.epoch is not None and msg["epoch"] != self.epoch
        if restarted:
            # The dispatcher restarted: it forgot every lease and credit. What we queued but did
            # not start will be leased again (to us or another node); drop our copies. Pages
            # whose acks it lost will be crawled again: their links must be pushed again too.
            self.recent.clear()
            dropped = self._unqueue(self.queues.clear())
            self.stats.inc_value("dispatcher/dropped_on_restart", len(dropped))
            logger.warning("Dispatcher restarted (epoch %s): dropped %d queued leases", msg["epoch"], len(dropped))
        self.epoch = msg["epoch"]
        self._take_timing(float(msg["heartbeat_interval"]), float(msg["lease_timeout"]))
        self.owned = set(msg["assigned"])
        self.registered = True
        self.requested = 0
        self._welcomed.set()
        if restarted:
            self._replay()
        early, self._early = self._early, []
        for request in early:
            self._discover(request)
        logger.info("Node %s registered: %d of %d partitions", self.node, len(self.owned), partitions)
        self._flush()
        self._pull()

    def _take_timing(self, heartbeat_interval: float, lease_timeout: float) -> None:
        """The dispatcher's heartbeat interval and lease time-out, from its welcome."""
        self.lease_timeout = lease_timeout
        if self.config.heartbeat_interval > heartbeat_interval and not self._warned_heartbeat:
            self._warned_heartbeat = True
            logger.warning("DISPATCHER_HEARTBEAT_INTERVAL: %.1f s is longer than the dispatcher's "
                           "heartbeat interval (%.1f s); it may take this node for dead",
                           self.config.heartbeat_interval, heartbeat_interval)

    def _on_heartbeat(self, msg: dict[str, Any]) -> None:
        if self._ping_sent:
            self.timings.record("dispatcher_rtt", (time.perf_counter() - self._ping_sent) * 1000.0)
            self._ping_sent = 0.0
        if self.epoch is not None and msg["epoch"] != self.epoch:
            self.registered = False
            self._register()

    def _on_batch(self, msg: dict[str, Any]) -> None:
        if self.codec is None or self.spider is None:
            self.stats.inc_value("dispatcher/unexpected/batch")  # before any welcome
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
            fresh = key not in self.queues
            self.queues.push(key, request)
            if fresh and self.gate is not None:
                # a key fetched lately, before a restart or by the node that handed it over, waits
                self.queues.hold(key, self.gate.ready_at(key))
        self.stats.inc_value("dispatcher/leased", len(msg["leases"]) - len(unasked))
        self._wake_soon()

    def _on_assign(self, msg: dict[str, Any]) -> None:
        parts = set(msg["partitions"])
        self.owned |= parts
        self._import_state(msg.get("state") or {})
        logger.info("Assigned %d partitions (now %d)", len(parts), len(self.owned))
        self._pull()

    def _on_revoke(self, msg: dict[str, Any]) -> None:
        parts = set(msg["partitions"])
        self.owned -= parts
        now = time.monotonic()
        for p in parts:
            self.revoking.setdefault(p, now)
        released = self._unqueue(self._take_partitions(parts))
        if released:
            assert self.link is not None
            self.link.send("release", node=self.node, leases=released)
        logger.info("Revoked %d partitions: released %d queued leases", len(parts), len(released))
        self._maybe_handoff()

    def _take_partitions(self, parts: set[int]) -> list[Request]:
        keys = {key for key, req in self.queues.items() if req.meta[PART] in parts}
        return self.queues.remove(keys.__contains__)

    def _unqueue(self, requests: list[Request]) -> list[int]:
        """Lease ids of queued requests given up (released or dropped). A retry waiting in a queue
        is also counted in flight under its lease: forget it there too, or a handoff would wait
        for it forever."""
        leases = [r.meta[LEASE] for r in requests]
        self._give_up(leases)
        return leases

    def _give_up(self, leases: list[int]) -> None:
        """Leases this node no longer works on: out of the in-flight set, no ack will follow."""
        for lease_id in leases:
            self.inflight.pop(lease_id, None)
            self.book.forget(lease_id)

    def _maybe_handoff(self) -> None:
        busy = {part for _, part in self.inflight.values()}
        done = {p for p in self.revoking if p not in busy}
        if not done or self.link is None:
            return
        self._hand_off(done)

    def _hand_off(self, parts: set[int]) -> None:
        assert self.link is not None
        self._flush()  # acks of the finished requests go before the handoff
        for p in parts:
            self.revoking.pop(p, None)
        self.link.send("handoff", node=self.node, partitions=sorted(parts), state=self._export_state(parts))

    def _force_late_handoffs(self) -> None:
        """Hand off revoked partitions whose requests have not ended DISPATCHER_HANDOFF_TIMEOUT
        after the revoke (a callback that never returns...), so the new owner is not kept
        waiting for ever. Their leases go back to the dispatcher (a page may be fetched twice;
        nothing is lost), and a key still in the downloader is exported as busy until
        DOWNLOAD_TIMEOUT from now, so its new owner still keeps the delay after it."""
        deadline = time.monotonic() - self.config.handoff_timeout
        late = {p for p, revoked in self.revoking.items() if revoked <= deadline}
        if not late:
            return
        assert self.link is not None
        # queued retries of those partitions are given back too: this node fetches them no more
        released = self._unqueue(self._take_partitions(late))
        if released:
            self.link.send("release", node=self.node, leases=released)
        stuck = [lease_id for lease_id, (_, part) in self.inflight.items() if part in late]
        if self.gate is not None:
            ends_by = time.monotonic() + self.config.download_timeout
            for lease_id in stuck:
                key = self.inflight[lease_id][0]
                if self.busy_by.get(key) == lease_id:
                    self.gate.hold(key, ends_by)  # maybe still downloading: busy until then
        self._give_up(stuck)  # no ack and no retry from here: the dispatcher serves them again
        self.stats.inc_value("dispatcher/handoff_forced", len(late))
        logger.warning("Handing off %d revoked partitions %.0f s after the revoke with %d requests "
                       "not finished (DISPATCHER_HANDOFF_TIMEOUT): the dispatcher serves them again",
                       len(late), self.config.handoff_timeout, len(stuck))
        self._hand_off(late)

    def _on_finished(self, msg: dict[str, Any]) -> None:
        if not self.finished:
            logger.info("The dispatcher reports the crawl finished")
        self.finished = True
        engine = self.crawler.engine
        if self.spider is not None and engine is not None and engine.spider_is_idle():
            # close now rather than at the engine's next idle check (up to 5 s away)
            asyncio.ensure_future(engine.close_spider_async(reason="finished"))

    def _on_error(self, msg: dict[str, Any]) -> None:
        logger.warning("Dispatcher refused a message: %s", msg["reason"])
        if msg["code"] == UNKNOWN_NODE:
            self.registered = False
            self._register()

    # -- politeness state handoff ----------------------------------------------------------------

    def _export_state(self, parts: set[int]) -> dict[str, Any]:
        if self.gate is None:
            return {}
        return self.gate.export_partitions(parts, self.partitions)

    def _import_state(self, state: dict[str, Any]) -> None:
        if self.gate is not None and state:
            self.gate.import_state(state)
