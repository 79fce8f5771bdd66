"""A node's session with the dispatcher: register, heartbeats and the fence, credit, renewals, replay.

Pushes go before acks, so a page's links are stored before its lease ends; the last
DISPATCHER_REPLAY_SECONDS of pushes and acks are sent again to a restarted dispatcher. Every
lease still held (queued or in flight) is renewed every ``welcome.renew_interval``. The fence
(docs/protocol.md, "Fenced ownership"): a fetch may start only before ``clock + fence``, clock
being this node's monotonic reading echoed in the latest answer to its heartbeat or register;
when it has passed, the node stops serving, gives back its queue and registers again. Part of
:class:`crawlproj.scheduling.scheduler.DispatcherScheduler`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from scrapy import Request

from crawlproj.extensions.drain import drain_stats
from crawlproj.wire.protocol import UNKNOWN_NODE, push_fields
from crawlproj.wire.request import WireCodec
from crawlproj.scheduling.state import NodeState

if TYPE_CHECKING:
    from scrapy.spiders import Spider

    from crawlproj.linkfilter import RecentSet
    from crawlproj.politeness.gate import PolitenessGate
    from crawlproj.observability.timings import Timings

logger = logging.getLogger("crawlproj.scheduling.scheduler")

NO_ANSWER_WARN_INTERVAL = 30.0  # seconds between warnings while the dispatcher does not answer
RENEW_BATCH = 10_000  # lease ids per "renew" message
#: Seconds added to a node's longest fetch in what it tells the dispatcher: from the last fence
#: check to the request on the wire (the gate's handoff lead, the reactor's latency).
FENCE_SLACK = 1.0


class DispatcherSession(NodeState):
    spider: Spider | None
    codec: WireCodec | None
    recent: RecentSet
    timings: Timings
    push_buffer: list[dict[str, Any]]
    replay_log: deque[tuple[float, str, list[Any]]]
    ack_buffer: list[int]
    ack_outcomes: dict[int, dict[str, Any]]
    epoch: Any
    registered: bool
    finished: bool
    closing: bool
    requested: int
    lease_timeout: float
    renew_interval: float
    fence: float
    fence_until: float
    fenced_at: dict[int, float]
    held: set[int]
    postpone_buffer: list[list[Any]]
    _early: list[Request]
    inflight: dict[int, tuple[str, int]]
    _welcomed: asyncio.Event
    _ping_sent: float
    _warned_heartbeat: bool
    _unanswered: tuple[float, float] | None = None  # (since, last warning) while not registered
    gate: PolitenessGate | None

    if TYPE_CHECKING:  # the other parts of DispatcherScheduler
        def _discover(self, request: Request) -> bool: ...

        def _unqueue(self, requests: list[Request]) -> list[int]: ...

        def _force_late_handoffs(self) -> None: ...

    def _register(self) -> None:
        """Register, keeping the leases whose end this process will report: fetches in flight, and
        acks and postpones still buffered (a dispatcher that still knows this process keeps them
        leased to it; they are sent after its welcome, as always)."""
        assert self.link is not None
        keep = [*self.inflight, *self.ack_buffer, *(pair[0] for pair in self.postpone_buffer)]
        self.link.send("register", node=self.node, pid=os.getpid(), host=socket.gethostname(),
                       capacity=self.config.queue_target, fetch_timeout=self._fetch_timeout(),
                       clock=time.monotonic(), keep=keep)

    def _fetch_timeout(self) -> float:
        """The longest a fetch this node starts may last (the dispatcher waits that long past a
        dead node's fence before its partitions go to others)."""
        robots = self.gate.config.robots_fetch_timeout if self.gate is not None else 0.0
        return max(self.config.download_timeout, robots) + FENCE_SLACK

    # -- the fence ---------------------------------------------------------------------------------

    def _fence_from(self, clock: float) -> None:
        """The dispatcher answered a message sent at monotonic ``clock``: it will not declare us
        dead before clock + its heartbeat time-out, and we fetch until clock + fence."""
        until = clock + self.fence
        if until > self.fence_until:
            self.fence_until = until
            if self.gate is not None:
                self.gate.fence_until = until

    def _fence_holds(self, now: float) -> bool:
        """May a fetch start at monotonic ``now``? When the fence has passed: stop serving."""
        if now < self.fence_until:
            return True
        if self.registered and not self.closing:
            self._fence_lapsed(now)
        return False

    def _fence_lapsed(self, now: float) -> None:
        assert self.link is not None
        released = self._stop_serving()
        if released:
            self.link.send("release", node=self.node, leases=released)
        self.stats.inc_value("dispatcher/fence_lapsed")
        logger.warning("No heartbeat answered for %.1f s (fence %.1f s): this node may no longer own "
                       "its keys; gave back %d queued leases, registering again",
                       now - self.fence_until + self.fence, self.fence, len(released))
        self._register()

    def _stop_serving(self) -> list[int]:
        """Forget our partitions and queued leases (the dispatcher gives them to others)."""
        self.registered = False
        self.requested = 0
        self.owned.clear()
        self.revoking.clear()
        return self._unqueue(self.queues.clear())

    def _fence_partitions(self, parts: Any) -> None:
        """Partitions whose last owner died: every key of theirs waits its delay from now."""
        now = time.monotonic()
        for p in parts:
            self.fenced_at[p] = now

    # -- leases ------------------------------------------------------------------------------------

    def _renew(self) -> None:
        """Renew every lease this node holds, queued or in flight."""
        if self.link is None or not self.registered or not self.held:
            return
        held = list(self.held)
        for i in range(0, len(held), RENEW_BATCH):
            self.link.send("renew", node=self.node, leases=held[i:i + RENEW_BATCH])
        self.stats.inc_value("dispatcher/renewed", len(held))

    async def _renew_every(self) -> None:
        while True:
            await asyncio.sleep(self.renew_interval or self.config.heartbeat_interval)  # a timer
            try:
                self._renew()
            except Exception:
                logger.exception("Error renewing leases")

    def _flush(self) -> None:
        """Pushes before acks: a response's discovered links are stored before its lease ends."""
        if self.link is None or not self.registered:
            return
        while self.push_buffer:
            batch, self.push_buffer = self.push_buffer[: self.config.push_batch], self.push_buffer[self.config.push_batch:]
            self.link.send("push", node=self.node, **push_fields(batch))
            self._sent("push", batch)
            self.stats.inc_value("dispatcher/pushed", len(batch))
        if self.ack_buffer:
            acks, self.ack_buffer = self.ack_buffer, []
            fields = self._ack_outcomes(acks)
            self.link.send("ack", node=self.node, leases=acks, **fields)
            self._sent("ack", [acks, fields])
        while self.postpone_buffer:
            pairs = self.postpone_buffer[: self.config.push_batch]
            self.postpone_buffer = self.postpone_buffer[self.config.push_batch:]
            self.link.send("postpone", node=self.node, leases=pairs)

    def _ack_outcomes(self, acks: list[int]) -> dict[str, Any]:
        """The ack's optional ``outcomes`` (revisits, docs/protocol.md): {} when there are none."""
        if not self.ack_outcomes:
            return {}
        pop = self.ack_outcomes.pop
        pairs = [[rid, outcome] for rid in acks if (outcome := pop(rid, None)) is not None]
        return {"outcomes": pairs} if pairs else {}

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
                self.link.send("push", node=self.node, **push_fields(payload))
                pushes += len(payload)
            else:
                leases, fields = payload
                self.link.send("ack", node=self.node, leases=leases, **fields)
                acks += len(leases)
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
            self._warn_unanswered(loop.time())
            self._register()
            return
        self._unanswered = None
        if not self._fence_holds(time.monotonic()):
            return
        self.link.send("heartbeat", node=self.node, clock=time.monotonic())
        self._ping_sent = time.perf_counter()
        self._force_late_handoffs()
        self._pull()

    def _warn_unanswered(self, now: float) -> None:
        """Every NO_ANSWER_WARN_INTERVAL while the dispatcher does not answer: what is tried, how long."""
        since, warned = self._unanswered or (now, now)
        if now - warned >= NO_ANSWER_WARN_INTERVAL:
            warned = now
            logger.warning("No answer from the dispatcher at %s for %.0f s (DISPATCHER_ENDPOINT; registering "
                           "every %.1f s); still trying", self.config.endpoint, now - since,
                           self.config.heartbeat_interval)
        self._unanswered = (since, warned)

    def _send_stats(self) -> None:
        if self.link is None or not self.registered:
            return
        wanted = ("response_received_count", "item_scraped_count", "downloader/request_count",
                  "dispatcher/acked", "dispatcher/pushed", "dispatcher/discovered")
        stats = {k: self.stats.get_value(k, 0) for k in wanted}
        stats.update(queued=len(self.queues), inflight=len(self.inflight), keys=self.queues.keys,
                     owned=len(self.owned))
        stats.update(self.timings.report())  # timing/<op>/* of the last interval, node/cpu, keys/*
        work = [key for key, _ in self.queues.items()] + [key for key, _ in self.inflight.values()]
        stats.update(drain_stats(work, self.gate))  # drain/*: the keys with work left, their delays
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
        self._take_timing(float(msg["heartbeat_interval"]), float(msg["lease_timeout"]),
                          float(msg["renew_interval"]), float(msg["fence"]))
        self.owned = set(msg["assigned"])
        self._fence_partitions(msg.get("fenced", ()))
        if "clock" in msg:
            self._fence_from(msg["clock"])
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

    def _take_timing(self, heartbeat_interval: float, lease_timeout: float,
                     renew_interval: float, fence: float) -> None:
        """The dispatcher's heartbeat interval, lease time-out, renew interval and fence, from
        its welcome."""
        self.lease_timeout = lease_timeout
        self.renew_interval = renew_interval
        self.fence = fence
        if self._warned_heartbeat:
            return
        if self.config.heartbeat_interval >= fence:
            self._warned_heartbeat = True
            logger.error("DISPATCHER_HEARTBEAT_INTERVAL: %.1f s is not shorter than the dispatcher's "
                         "fence (%.1f s): this node will keep stopping to register again",
                         self.config.heartbeat_interval, fence)
        elif self.config.heartbeat_interval > heartbeat_interval:
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
        elif self.registered and "clock" in msg:
            self._fence_from(msg["clock"])

    def _on_finished(self, msg: dict[str, Any]) -> None:
        if not self.finished:
            logger.info("The dispatcher reports the crawl finished")
        self.finished = True
        engine = self.crawler.engine
        if self.spider is not None and engine is not None and engine.spider_is_idle():
            # close now rather than at the engine's next idle check (up to 5 s away)
            asyncio.ensure_future(engine.close_spider_async(reason="finished"))

    def _on_error(self, msg: dict[str, Any]) -> None:
        if msg["code"] != UNKNOWN_NODE:
            logger.warning("Dispatcher refused a message: %s", msg["reason"])
        elif self.registered:  # else a register is on its way already
            # It restarted or declared us dead: our partitions and leases are others' now.
            dropped = self._stop_serving()
            logger.warning("The dispatcher does not know this node (%s): dropped %d queued "
                           "leases, registering again", msg["reason"], len(dropped))
            self._register()
