"""The dispatcher service: one ZeroMQ ROUTER, membership, partition table, frontier, leases.

Run it with ``crawlproj dispatcher ...`` or ``python -m crawlproj.dispatcher ...``. When ready
it prints exactly one line, ``DISPATCHER LISTENING tcp://HOST:PORT``, on stdout.

One thread drives everything from a :class:`zmq.Poller`: each round receives what is waiting
(up to a budget), applies it in arrival order, serves nodes that have credit, runs the timers
(dead nodes, expired leases, Redis seeds, crawl-finished) and commits the store when a commit is
due (``--commit-interval``, or ``frontier.COMMIT_ROWS`` rows). Wire messages are those of
:mod:`crawlproj.wire.protocol`; the behaviour behind each is documented there and in README.md.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
import resource
import signal
import sqlite3
import sys
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Callable

import msgpack
import zmq

from crawlproj.observability.dispatcher import HTTP_PREFIX, DispatcherObserver
from crawlproj.wire.protocol import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    ProtocolError,
    check_wire_request,
    decode_from_node,
    encode,
)
from crawlproj.security.curve import CurveKeyError, CurveServer, read_authorized, read_certificate
from crawlproj.wire.urls import BadURL, partition_of

from .errors import ConfigError, DispatcherError
from .frontier import DEFAULT_COMMIT_INTERVAL, DEFAULT_HOT_SEEN, DEFAULT_READAHEAD, Frontier, Row
from .partitions import Rendezvous
from .seeds import RedisSeeds, read_seeds_file, wire_seed

logger = logging.getLogger("crawlproj.dispatcher")

LISTENING_PREFIX = "DISPATCHER LISTENING "
ENV_PREFIX = "CRAWLPROJ_DISPATCHER_"
DEFAULT_BIND = "tcp://127.0.0.1:5570"
DEFAULT_STORE = "dispatcher-store"
DEFAULT_PARTITIONS = 1024
DEFAULT_HEARTBEAT_INTERVAL = 2.0  # seconds between node heartbeats (told in "welcome")
DEFAULT_HEARTBEAT_TIMEOUT = 10.0  # a node silent this long is dead
DEFAULT_LEASE_TIMEOUT = 600.0  # a lease not acked or released by then goes back
DEFAULT_SEEDS_KEY = "broad:start_urls"
DEFAULT_SEEDS_POLL = 1.0  # seconds between Redis seed polls

MAX_BATCH_LEASES = 1000  # leases per "batch" frame
BATCH_FRAME_SLACK = 64  # bytes kept free under MAX_FRAME_BYTES for the batch's own header
RECV_BUDGET = 2000  # frames handled per round before serving, timers and commit ...
RECV_BUDGET_SECONDS = 0.05  # ... or this much time, whichever comes first
POLL_MAX_SECONDS = 0.1  # longest poll: bounds the reaction time to SIGTERM and timers
DEAD_CHECK_MAX_SECONDS = 0.5  # longest time between two looks for nodes past their time-out
MAX_CREDIT = 1_000_000  # outstanding credit a node may hold
MAX_ROW_ID = 2 ** 63 - 1  # SQLite's largest integer
FINGERPRINT_BYTES = 20  # SHA-1, crawlproj.wire.urls.fingerprint
MAX_PRIORITY = 2 ** 62  # |pr| beyond this does not fit SQLite's integer once negated
SNDHWM = 100_000  # frames queued per peer before a send fails (then leases are given back)
BAD_FRAME_LOG_INTERVAL = 5.0  # seconds between two log lines about bad frames of one reason
STATS_MAX_KEYS = 256  # numbers kept from one node's latest "stats"
FIELD_MAX_CHARS = 256  # longest node-supplied string kept (stats names, host): "state" must stay small
DEAD_NODES_KEPT = 256  # departed nodes still listed in "state"
PARTITION_CACHE_MAX = 100_000  # politeness keys whose partition is remembered
SUMMARY_INTERVAL = 30.0  # seconds between two summary lines in the log
UNKNOWN_NODE = "unknown node: register"

_BATCH_HEAD = (b"\x83" + msgpack.packb("v") + msgpack.packb(PROTOCOL_VERSION) + msgpack.packb("t")
               + msgpack.packb("batch") + msgpack.packb("leases"))
_PAIR = b"\x92"  # msgpack fixarray of 2: [lease id, wire request]


def encode_batch(items: list[tuple[int, bytes]]) -> bytes:
    """A "batch" frame from (lease id, msgpack wire request) pairs, without re-encoding them.

    Decodes to what ``protocol.encode("batch", leases=[[id, request], ...])`` produces (keys in
    another order); the stored requests are already msgpack, so they are spliced in as they are.
    """
    packb = msgpack.packb
    parts = [_BATCH_HEAD, msgpack.Packer().pack_array_header(len(items))]
    for rid, blob in items:
        parts.append(_PAIR)
        parts.append(packb(rid))
        parts.append(blob)
    return b"".join(parts)


@dataclass
class Config:
    bind: str = DEFAULT_BIND
    store: str = DEFAULT_STORE
    partitions: int = DEFAULT_PARTITIONS
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    lease_timeout: float = DEFAULT_LEASE_TIMEOUT
    keep_alive: bool = False
    seeds: list[str] = field(default_factory=list)
    seeds_file: str | None = None
    seeds_redis: str | None = None
    seeds_key: str = DEFAULT_SEEDS_KEY
    seeds_poll_interval: float = DEFAULT_SEEDS_POLL
    key_by: str = "domain"
    readahead: int = DEFAULT_READAHEAD
    hot_seen: int = DEFAULT_HOT_SEEN
    commit_interval: float = DEFAULT_COMMIT_INTERVAL
    restart_hold: float | None = None  # None: heartbeat_timeout when resuming a store
    curve_secret_key: str | None = None  # CURVE: this dispatcher's key pair (crawlproj keys)
    curve_authorized_dir: str | None = None  # CURVE: the allowed clients' public *.key files
    http_port: int | None = None  # HTTP API, metrics and status page (0: a free port; None: off)
    http_host: str = "127.0.0.1"
    series_interval: float = 1.0  # seconds between two points of the cluster's time series
    series_points: int = 3600  # points kept (older ones thinned out, never dropped whole)
    timings_interval: float = 60.0  # seconds between TIMINGS lines in the log
    test_message_delay: float = 0.0  # test-only: seconds slept before handling each message

    def validate(self) -> None:
        if self.partitions < 1:
            raise ConfigError(f"--partitions must be >= 1, got {self.partitions}")
        if self.heartbeat_interval <= 0 or self.heartbeat_timeout <= self.heartbeat_interval:
            raise ConfigError("--heartbeat-timeout must exceed --heartbeat-interval, both > 0 "
                              f"(got {self.heartbeat_interval} and {self.heartbeat_timeout})")
        if self.lease_timeout <= 0:
            raise ConfigError(f"--lease-timeout must be > 0, got {self.lease_timeout}")
        if self.commit_interval <= 0:
            raise ConfigError(f"--commit-interval must be > 0, got {self.commit_interval}")
        if self.key_by not in ("domain", "host"):
            raise ConfigError(f"--key-by must be 'domain' or 'host', got {self.key_by!r}")
        if not self.bind.startswith("tcp://") and not self.bind.startswith("ipc://"):
            raise ConfigError(f"--bind must be a tcp:// or ipc:// endpoint, got {self.bind!r}")
        if bool(self.curve_secret_key) != bool(self.curve_authorized_dir):
            raise ConfigError("--curve-secret-key and --curve-authorized-dir go together "
                              f"(got {self.curve_secret_key!r} and {self.curve_authorized_dir!r})")
        if self.curve_secret_key and self.curve_authorized_dir:
            try:
                read_certificate(self.curve_secret_key, secret=True)
            except CurveKeyError as exc:
                raise ConfigError(f"--curve-secret-key: {exc}") from exc
            try:
                read_authorized(self.curve_authorized_dir)
            except CurveKeyError as exc:
                raise ConfigError(f"--curve-authorized-dir: {exc}") from exc
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ConfigError(f"--http-port must be a port number (0: a free one), got {self.http_port}")
        if self.series_interval <= 0 or self.timings_interval <= 0 or self.series_points < 2:
            raise ConfigError("--series-interval and --timings-interval must be > 0 and "
                              f"--series-points >= 2 (got {self.series_interval}, "
                              f"{self.timings_interval}, {self.series_points})")
        if self.test_message_delay < 0:
            raise ConfigError(f"--test-message-delay must be >= 0, got {self.test_message_delay}")


@dataclass
class Node:
    name: str
    identity: bytes
    pid: Any = None
    host: Any = None
    capacity: Any = None
    alive: bool = True
    leaving: bool = False
    registered_at: float = 0.0  # wall clock
    last_seen: float = 0.0  # monotonic
    last_heartbeat: float = 0.0  # wall clock
    credit: int = 0
    registrations: int = 0
    leases: set[int] = field(default_factory=set)
    owned: set[int] = field(default_factory=set)
    ready: deque[int] = field(default_factory=deque)  # owned partitions with requests, round-robin
    ready_set: set[int] = field(default_factory=set)
    stats: dict[str, Any] = field(default_factory=dict)
    stats_at: float = 0.0
    leased: int = 0
    acked: int = 0
    pushed: int = 0


# A lease: (node name, partition, row, deadline)
Lease = tuple[str, int, Row, float]


class Dispatcher:
    """The service. ``bind()``, then ``run()`` until ``stop()`` (or a signal) ends it."""

    def __init__(self, config: Config, context: zmq.Context[Any] | None = None) -> None:
        config.validate()
        self.config = config
        self.P = config.partitions
        self.started = time.time()
        self.started_mono = time.monotonic()
        self.frontier = Frontier(config.store, config.partitions, readahead=config.readahead,
                                 hot_seen=config.hot_seen,
                                 commit_interval=config.commit_interval)
        self.epoch = self.frontier.epoch
        self._own_context = context is None
        self.ctx: zmq.Context[Any] = context if context is not None else zmq.Context()
        self.sock: zmq.Socket[Any] = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.SNDHWM, SNDHWM)
        self.curve: CurveServer | None = None  # before bind: the ZAP handler must be up first
        if config.curve_secret_key and config.curve_authorized_dir:
            self.curve = CurveServer(self.ctx, config.curve_secret_key, config.curve_authorized_dir)
            self.curve.secure(self.sock)
        self.endpoint = ""
        self.nodes: dict[str, Node] = {}
        self.owner: list[str | None] = [None] * self.P
        self.pending: dict[int, str] = {}  # partition -> node asked to hand it off
        self.parked_state: dict[int, dict[Any, Any]] = {}  # handed-off state awaiting an owner
        self.rdv = Rendezvous(self.P)
        self.leases: OrderedDict[int, Lease] = OrderedDict()  # insertion order = deadline order
        self.dirty: set[str] = set()  # nodes with credit that may have something to serve
        self.counters: Counter[str] = Counter()
        self.bad_frames: Counter[str] = Counter()
        self.messages: Counter[str] = Counter()
        self._bad_logged: dict[str, tuple[float, int]] = {}
        self._pcache: dict[str, int] = {}
        self.finished = False
        self._stop = False
        hold = config.restart_hold
        if hold is None:
            hold = config.heartbeat_timeout if self.frontier.resumed else 0.0
        # After a restart, nodes of the previous run may still serve their partitions until
        # they learn (error "unknown node: register") that this run does not know them; no
        # partition is assigned before every live node had the time to re-register.
        self.hold_until = self.started_mono + hold
        self._holding = hold > 0
        self._next_dead_check = 0.0
        self._next_seed_poll = 0.0
        self._summary_at = self.started_mono
        self._summary_counters: Counter[str] = Counter()
        self.redis_seeds: RedisSeeds | None = None
        self._handlers: dict[str, Callable[[bytes, list[bytes], dict[str, Any]], None]] = {
            "register": self._on_register, "heartbeat": self._on_heartbeat,
            "pull": self._on_pull, "push": self._on_push, "ack": self._on_ack,
            "release": self._on_release, "handoff": self._on_handoff, "stats": self._on_stats,
            "bye": self._on_bye, "status": self._on_status,
        }
        self.observer = DispatcherObserver(self)  # timings, time series, HTTP snapshot

    # -- lifecycle -------------------------------------------------------------------------------

    def bind(self) -> str:
        bind = self.config.bind
        if bind.startswith("tcp://") and bind.rsplit(":", 1)[-1] == "0":
            bind = bind.rsplit(":", 1)[0] + ":*"
        try:
            self.sock.bind(bind)
        except zmq.ZMQError as exc:
            raise ConfigError(f"cannot bind {bind}: {exc}") from exc
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return self.endpoint

    def load_initial_seeds(self) -> None:
        cfg = self.config
        urls = list(cfg.seeds)
        if cfg.seeds_file:
            urls.extend(read_seeds_file(cfg.seeds_file))
        if urls:
            self.add_seeds(urls)
        if cfg.seeds_redis:
            self.redis_seeds = RedisSeeds(cfg.seeds_redis, cfg.seeds_key)
            self._poll_redis()

    def add_seeds(self, urls: list[str]) -> int:
        """Canonicalize, dedup and store seed URLs (committed at once); returns how many new."""
        wire = []
        for url in urls:
            try:
                wire.append(wire_seed(url, self.P, self.config.key_by))
            except BadURL as exc:
                self.counters["seeds_invalid"] += 1
                logger.warning("Ignored seed: %s", exc)
        new, touched = self.frontier.add(wire)
        self.frontier.commit()
        self.counters["seeds"] += len(wire)
        self.counters["seeds_new"] += new
        for p in touched:
            self._wake(p)
        if new:
            self.finished = False
            logger.info("Seeds: %d given, %d new", len(wire), new)
        return new

    def stop(self) -> None:
        self._stop = True

    def close(self) -> None:
        self.observer.close()
        try:
            self.frontier.close()
        finally:
            self.sock.close(0)
            if self.curve is not None:
                self.curve.close()
            if self.redis_seeds is not None:
                self.redis_seeds.close()
            if self._own_context:
                self.ctx.term()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        logger.info("Dispatcher epoch %d serving %s (store %s, %d partitions, frontier %d, "
                    "seen %d)", self.epoch, self.endpoint, self.frontier.path, self.P,
                    self.frontier.size, self.frontier.seen_count)
        while not self._stop:
            now = time.monotonic()
            timeout = self._poll_timeout(now)
            if poller.poll(math.ceil(timeout * 1000)):
                self._drain()
            now = time.monotonic()
            self._timers(now)
            self._serve_dirty()
            self._check_finished()
            self.frontier.maybe_commit(now)
        logger.info("Dispatcher stopping: committing the store")

    def _poll_timeout(self, now: float) -> float:
        timeout = POLL_MAX_SECONDS
        due = self.frontier.commit_due_in(now)
        if due is not None:
            timeout = min(timeout, due)
        if self.leases:
            first = next(iter(self.leases.values()))
            timeout = min(timeout, max(0.0, first[3] - now))
        return max(0.0, timeout)

    def _drain(self) -> None:
        recv = self.sock.recv_multipart
        clock = time.monotonic
        until = clock() + RECV_BUDGET_SECONDS
        for _ in range(RECV_BUDGET):
            try:
                frames = recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(frames)
            if clock() >= until:
                return

    # -- frames ----------------------------------------------------------------------------------

    def _handle(self, frames: list[bytes]) -> None:
        identity = frames[0]
        envelope = frames[:-1]  # [identity] from a DEALER, [identity, b""] from a REQ
        payload = frames[-1]
        if len(frames) < 2:
            self._bad("envelope", identity, None, "frame without payload")
            return
        if len(payload) > MAX_FRAME_BYTES:
            self._bad("oversized", identity, envelope, f"frame of {len(payload)} bytes")
            return
        try:
            msg = decode_from_node(payload)
        except ProtocolError as exc:
            self._bad(_reason(exc), identity, envelope, str(exc))
            return
        mtype = msg["t"]
        self.messages[mtype] += 1
        try:
            self._handlers[mtype](identity, envelope, msg)
        except (DispatcherError, sqlite3.Error, zmq.ZMQError):
            raise  # the store or the socket failed: stop rather than serve on a broken store
        except Exception as exc:
            # A message the checks above let through but a handler could not digest: refuse it
            # and keep serving everyone else (a crash would only repeat when the node resends).
            logger.exception("Could not handle a %s message from %r", mtype, identity[:64])
            self._bad("internal", identity, envelope, f"{mtype}: {type(exc).__name__}: {exc}")

    def _send(self, envelope: list[bytes], frame: bytes) -> bool:
        try:
            self.sock.send_multipart([*envelope, frame], zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.counters["send_full"] += 1
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.counters["send_unreachable"] += 1
        return False

    def _reply(self, envelope: list[bytes], mtype: str, **fields: Any) -> bool:
        return self._send(envelope, encode(mtype, **fields))

    def _error(self, envelope: list[bytes], reason: str) -> None:
        self._reply(envelope, "error", reason=reason)

    def _bad(self, reason: str, identity: bytes, envelope: list[bytes] | None, detail: str,
             reply: bool = True) -> None:
        self.bad_frames[reason] += 1
        now = time.monotonic()
        last, suppressed = self._bad_logged.get(reason, (-BAD_FRAME_LOG_INTERVAL, 0))
        if now - last >= BAD_FRAME_LOG_INTERVAL:
            logger.warning("Dropped a bad frame (%s) from %r: %s%s", reason, identity[:64], detail,
                           f" ({suppressed} more of this kind not logged)" if suppressed else "")
            self._bad_logged[reason] = (now, 0)
        else:
            self._bad_logged[reason] = (last, suppressed + 1)
        if reply and envelope is not None:
            self._error(envelope, f"bad frame ({reason}): {detail}"[:500])

    def _known(self, identity: bytes, envelope: list[bytes]) -> Node | None:
        """The live node behind ``identity``; answers "unknown node: register" otherwise."""
        node = self.nodes.get(identity.decode("utf-8", "replace"))
        if node is None or not node.alive or node.identity != identity:
            self.counters["unknown_node"] += 1
            self._error(envelope, UNKNOWN_NODE)
            return None
        node.last_seen = time.monotonic()
        return node

    # -- membership ------------------------------------------------------------------------------

    def _on_register(self, identity: bytes, envelope: list[bytes], msg: dict[str, Any]) -> None:
        name = msg["node"]
        if not isinstance(name, str) or not name or name.encode("utf-8") != identity:
            self._bad("register", identity, envelope,
                      "register's node must be a non-empty string equal to the socket routing id")
            return
        now = time.monotonic()
        pid, host, capacity = _scalar(msg["pid"]), _scalar(msg["host"]), _scalar(msg["capacity"])
        node = self.nodes.get(name)
        if node is not None and node.alive:
            # The same name again: that node restarted (or reconnected without its state).
            logger.info("Node %s registered again: returning its %d leases", name, len(node.leases))
            self.counters["reregistered"] += 1
            self._return_leases(node, "restart")
            for p in [p for p, src in self.pending.items() if src == name]:
                del self.pending[p]  # its state is gone with the old process
            node.credit = 0
            node.leaving = False
        else:
            if node is None:
                node = Node(name=name, identity=identity)
                self.nodes[name] = node
            node.alive = True
            node.leaving = False
            node.credit = 0
            logger.info("Node %s joined (pid %s on %s, capacity %s)", name, pid, host, capacity)
            self.counters["joined"] += 1
        node.pid, node.host, node.capacity = pid, host, capacity
        node.registered_at = time.time()
        node.last_seen = now
        node.last_heartbeat = node.registered_at
        node.registrations += 1
        node.ready.clear()
        node.ready_set.clear()
        for p in node.owned:
            self._wake(p)
        self._rebalance(welcome=node)
        self._reply(envelope, "welcome", node=name, partitions=self.P,
                    assigned=sorted(node.owned), heartbeat_interval=self.config.heartbeat_interval,
                    lease_timeout=self.config.lease_timeout, epoch=self.epoch)
        if self.finished:
            self._reply(envelope, "finished")

    def _on_heartbeat(self, identity: bytes, envelope: list[bytes], msg: dict[str, Any]) -> None:
        node = self._known(identity, envelope)
        if node is not None:
            node.last_heartbeat = time.time()
            self._reply(envelope, "heartbeat", epoch=self.epoch)

    def _on_bye(self, identity: bytes, envelope: list[bytes], msg: dict[str, Any]) -> None:
        node = self._known(identity, envelope)
        if node is not None:
            logger.info("Node %s left (bye)", node.name)
            self.counters["left"] += 1
            self._drop(node, "bye")

    def _drop(self, node: Node, why: str) -> None:
        """A node is gone (bye or dead): leases back, partitions to the others."""
        node.alive = False
        node.credit = 0
        self.dirty.discard(node.name)
        self._return_leases(node, why)
        for p in node.owned:
            if self.owner[p] == node.name:
                self.owner[p] = None
        if node.owned and why != "bye":
            logger.info("Node %s (%s) owned %d partitions: reassigning them", node.name, why,
                        len(node.owned))
        node.owned.clear()
        node.ready.clear()
        node.ready_set.clear()
        for p in [p for p, src in self.pending.items() if src == node.name]:
            del self.pending[p]  # it will never hand them off: new owners start without state
        self.rdv.forget(node.name)
        self._rebalance()
        dead = [n for n in self.nodes.values() if not n.alive]
        for old in dead[:max(0, len(dead) - DEAD_NODES_KEPT)]:
            del self.nodes[old.name]

    def _check_dead(self, now: float) -> None:
        limit = self.config.heartbeat_timeout
        for node in list(self.nodes.values()):
            if node.alive and now - node.last_seen > limit:
                logger.warning("Node %s missed heartbeats for %.1f s: declared dead, %d leases "
                               "and %d partitions return", node.name, now - node.last_seen,
                               len(node.leases), len(node.owned))
                self.counters["dead"] += 1
                self._drop(node, "dead")

    # -- partitions ------------------------------------------------------------------------------

    def _rebalance(self, welcome: Node | None = None) -> None:
        """Move partitions towards the rendezvous table of the live nodes.

        Unowned partitions go to their node at once (for ``welcome``, in its welcome message:
        the caller sends it right after). Owned ones are revoked first; the assign follows the
        handoff (see _on_handoff), so a partition is never owned by two nodes.
        """
        if self._holding:
            return
        live = [n.name for n in self.nodes.values() if n.alive and not n.leaving]
        table = self.rdv.table(live)
        revokes: dict[str, list[int]] = {}
        assigns: dict[tuple[str, int], tuple[dict[Any, Any], list[int]]] = {}
        for p in range(self.P):
            want = table[p]
            cur = self.owner[p]
            if cur == want or p in self.pending:
                continue
            if cur is None:
                if want is None:
                    continue
                state = self.parked_state.pop(p, {})
                node = self.nodes[want]
                self.owner[p] = want
                node.owned.add(p)
                self._wake(p)
                if node is not welcome:
                    assigns.setdefault((want, id(state)), (state, []))[1].append(p)
            else:
                self.owner[p] = None
                self.nodes[cur].owned.discard(p)
                self.pending[p] = cur
                revokes.setdefault(cur, []).append(p)
        for name, parts in revokes.items():
            self.counters["revoked"] += len(parts)
            logger.info("Revoking %d partitions from %s", len(parts), name)
            self._reply([self.nodes[name].identity], "revoke", partitions=parts)
        for (name, _), (state, parts) in assigns.items():
            self.counters["assigned"] += len(parts)
            self._reply([self.nodes[name].identity], "assign", partitions=parts, state=state)

    def _on_handoff(self, identity: bytes, envelope: list[bytes], msg: dict[str, Any]) -> None:
        node = self._known(identity, envelope)
        if node is None:
            return
        parts, state = msg["partitions"], msg["state"]
        if not isinstance(parts, list) or not isinstance(state, dict) or not all(
                isinstance(p, int) and 0 <= p < self.P for p in parts):
            self._bad("handoff", identity, envelope, "handoff needs a list of partitions and a map")
            return
        moved = []
        volunteered = False
        for p in set(parts):
            if self.pending.get(p) == node.name:
                del self.pending[p]
                moved.append(p)
            elif self.owner[p] == node.name:
                # Handing off what was not revoked: the node is leaving (bye follows).
                self.owner[p] = None
                node.owned.discard(p)
                moved.append(p)
                volunteered = True
        if volunteered:
            node.leaving = True
        moved_set = set(moved)
        stray = [rid for rid in node.leases if self.leases[rid][1] in moved_set]
        if stray:
            logger.warning("Node %s handed off %d partitions with %d leases still open: "
                           "giving those back", node.name, len(moved), len(stray))
            self._give_back(stray, "handoff")
        for p in moved:
            self.parked_state[p] = state
        self.counters["handed_off"] += len(moved)
        self._rebalance()

    def _timers(self, now: float) -> None:
        if self._holding and now >= self.hold_until:
            self._holding = False
            logger.info("Restart hold over: assigning partitions to %d nodes",
                        sum(1 for n in self.nodes.values() if n.alive))
            self._rebalance()
        if now >= self._next_dead_check:
            self._next_dead_check = now + min(self.config.heartbeat_interval / 2,
                                                DEAD_CHECK_MAX_SECONDS)
            self._check_dead(now)
        self._expire(now)
        self.observer.tick(now)
        if now - self._summary_at >= SUMMARY_INTERVAL:
            self._log_summary(now)
        if self.redis_seeds is not None and now >= self._next_seed_poll and (
                self.config.keep_alive or not self.finished):
            self._next_seed_poll = now + self.config.seeds_poll_interval
            self._poll_redis()

    def _log_summary(self, now: float) -> None:
        span = now - self._summary_at
        delta = self.counters - self._summary_counters
        self._summary_at, self._summary_counters = now, Counter(self.counters)

        def rate(name: str) -> float:
            return delta[name] / span

        logger.info("Frontier %d, seen %d, leases %d, nodes alive %d; last %.0f s: pushed %.0f/s "
                    "(new %.0f/s), leased %.0f/s, acked %.0f/s, expired %d; commit max %.3f s",
                    self.frontier.size, self.frontier.seen_count, len(self.leases),
                    sum(1 for n in self.nodes.values() if n.alive), span, rate("pushed"),
                    rate("new"), rate("leased"), rate("acked"), delta["expired"],
                    self.frontier.timings["commit_max_seconds"])

    def _poll_redis(self) -> None:
        assert self.redis_seeds is not None
        import redis

        try:
            while True:
                urls = self.redis_seeds.pop()
                if not urls:
                    return
                self.add_seeds(urls)
        except redis.RedisError as exc:
            self.counters["seeds_redis_errors"] += 1
            logger.error("Reading seeds from Redis key %r failed: %s", self.config.seeds_key, exc)

    def _check_finished(self) -> None:
        if self.config.keep_alive:
            return
        done = (self.frontier.size == 0 and not self.leases and not self.pending
                and not self._holding)
        if done and not self.finished:
            self.finished = True
            logger.info("Crawl finished: frontier empty, no lease open; telling %d nodes",
                        sum(1 for n in self.nodes.values() if n.alive))
            for node in self.nodes.values():
                if node.alive:
                    self._reply([node.identity], "finished")
        elif not done and self.finished and self.frontier.size:
            self.finished = False

    # -- leases ----------------------------------------------------------------------------------

    def _wake(self, p: int) -> None:
        name = self.owner[p]
        if name is None:
            return
        node = self.nodes[name]
        if p not in node.ready_set and self.frontier.available(p) > 0:
            node.ready.append(p)
            node.ready_set.add(p)
            if node.credit > 0:
                self.dirty.add(name)

    def _on_pull(self, identity: bytes, envelope: list[bytes], msg: dict[str, Any]) -> None:
        node = self._known(identity, envelope)
        if node is None:
            return
        credit = msg["credit"]
        if not isinstance(credit, int) or credit < 0:
            self._bad("pull", identity, envelope, f"credit {credit!r} is not a count")
            return
        node.credit = min(MAX_CREDIT, node.credit + credit)
        if node.credit > 0:
            self.dirty.add(node.name)

    def _serve_dirty(self) -> None:
        if not self.dirty:
            return
        dirty, self.dirty = self.dirty, set()
        for name in dirty:
            node = self.nodes.get(name)
            if node is not None and node.alive:
                self._serve(node)

    def _serve(self, node: Node) -> None:
        """Lease up to the node's credit, round-robin over its owned partitions with requests."""
        ready, ready_set, owner = node.ready, node.ready_set, self.owner
        take, available = self.frontier.take, self.frontier.available
        name = node.name
        batch: list[tuple[int, int, Row]] = []
        size = 0
        limit = MAX_FRAME_BYTES - BATCH_FRAME_SLACK
        while node.credit > 0 and ready:
            p = ready.popleft()
            ready_set.discard(p)
            if owner[p] != name:
                continue
            row = take(p)
            if row is None:
                continue
            if available(p) > 0:
                ready.append(p)
                ready_set.add(p)
            blob_size = len(row[2]) + BATCH_FRAME_SLACK
            if batch and (len(batch) >= MAX_BATCH_LEASES or size + blob_size > limit):
                if not self._send_batch(node, batch):
                    return
                batch, size = [], 0
            batch.append((row[1], p, row))
            size += blob_size
            node.credit -= 1
        if batch:
            self._send_batch(node, batch)

    def _send_batch(self, node: Node, batch: list[tuple[int, int, Row]]) -> bool:
        frame = encode_batch([(rid, row[2]) for rid, _, row in batch])
        deadline = time.monotonic() + self.config.lease_timeout
        leases, name = self.leases, node.name
        for rid, p, row in batch:
            leases[rid] = (name, p, row, deadline)
        node.leases.update(rid for rid, _, _ in batch)
        if self._send([node.identity], frame):
            n = len(batch)
            node.leased += n
            self.counters["leased"] += n
            return True
        # The node is gone or not reading: nothing was delivered, nothing is lost.
        logger.warning("Could not deliver a batch of %d to %s: giving the requests back",
                       len(batch), name)
        self._give_back([rid for rid, _, _ in batch], "undeliverable")
        node.credit = 0
        return False

    def _give_back(self, rids: list[int], why: str) -> None:
        leases, give_back = self.leases, self.frontier.give_back
        for rid in rids:
            lease = leases.pop(rid, None)
            if lease is None:
                continue
            name, p, row, _ = lease
            node = self.nodes.get(name)
            if node is not None:
                node.leases.discard(rid)
            give_back(p, row)
            self._wake(p)
        self.counters[f"returned_{why}"] += len(rids)

    def _return_leases(self, node: Node, why: str) -> None:
        if node.leases:
            self._give_back(list(node.leases), why)
            node.leases.clear()

    def _expire(self, now: float) -> None:
        leases = self.leases
        expired = []
        for rid, lease in leases.items():
            if lease[3] > now:
                break
            expired.append(rid)
        if expired:
            logger.warning("%d leases expired without ack: back to the frontier", len(expired))
            self.counters["expired"] += len(expired)
            self._give_back(expired, "expired")

    def _on_ack(self, identity: bytes, envelope: list[bytes], msg: dict[str, Any]) -> None:
        node = self._known(identity, envelope)  # acks of an unknown node still count
        rids = msg["leases"]
        if not isinstance(rids, list):
            self._bad("ack", identity, envelope, "leases must be a list")
            return
        leases, nodes = self.leases, self.nodes
        known: list[tuple[int, int]] = []
        unknown = []
        for rid in rids:
            lease = leases.pop(rid, None) if type(rid) is int else None
            if lease is None:
                unknown.append(rid)
                continue
            known.append((rid, lease[1]))
            holder = nodes.get(lease[0])
            if holder is not None:
                holder.leases.discard(rid)
        self.frontier.ack_leased(known)
        late = 0
        for rid in unknown:
            if type(rid) is int and 0 <= rid <= MAX_ROW_ID and self.frontier.ack_unknown(rid):
                late += 1
        self.counters["acked"] += len(known) + late
        self.counters["acks_unknown"] += len(unknown) - late
        if node is not None:
            node.acked += len(known) + late

    def _on_release(self, identity: bytes, envelope: list[bytes], msg: dict[str, Any]) -> None:
        node = self._known(identity, envelope)
        rids = msg["leases"]
        if node is None:
            return
        if not isinstance(rids, list):
            self._bad("release", identity, envelope, "leases must be a list")
            return
        mine = [rid for rid in rids if type(rid) is int and rid in node.leases]
        self.counters["released"] += len(mine)
        self._give_back(mine, "released")

    # -- push --------------------------------------------------------------------------------------

    def _on_push(self, identity: bytes, envelope: list[bytes], msg: dict[str, Any]) -> None:
        # Links of an unknown node (e.g. pushed before it learnt of a dispatcher restart) are
        # stored all the same: the node sends them before the ack of their page, so keeping
        # them can only spare a re-crawl.
        node = self._known(identity, envelope)
        reqs = msg["requests"]
        if not isinstance(reqs, list):
            self._bad("push", identity, envelope, "requests must be a list")
            return
        valid: list[dict[str, Any]] = []
        forced: list[dict[str, Any]] = []
        bad = 0
        first_error = ""
        pcache = self._pcache
        # Locals: this loop runs for every pushed link (about a microsecond each).
        append, fp_bytes = valid.append, FINGERPRINT_BYTES
        type_, len_, bytes_, str_, int_, dict_ = type, len, bytes, str, int, dict
        for r in reqs:
            # Fast path for the common case (a valid request without priority or dont_filter);
            # the partition cache only holds keys that passed the full check once. Anything
            # else gets the full check, which names the fault.
            try:
                f = r["f"]
                p = r["p"]
                if (type_(f) is bytes_ and len_(f) == fp_bytes and pcache[r["k"]] == p
                        and type_(p) is int_ and type_(r["u"]) is str_ and type_(r) is dict_
                        and "pr" not in r and "df" not in r):
                    append(r)
                    continue
            except (KeyError, TypeError, IndexError):
                pass
            try:
                self._check_request(r)
            except ProtocolError as exc:
                bad += 1
                if not first_error:
                    first_error = str(exc)
                continue
            if r.get("df"):
                forced.append(r)
            else:
                valid.append(r)
        n_valid = len(valid) + len(forced)
        self.counters["pushed"] += n_valid
        if node is not None:
            node.pushed += n_valid
        new, touched = self.frontier.add(valid)
        if forced:
            new_forced, touched_forced = self.frontier.add_forced(forced)
            new += new_forced
            touched += touched_forced
        self.counters["new"] += new
        self.counters["duplicates"] += n_valid - new
        for p in touched:
            self._wake(p)
        if bad:
            self.counters["bad_requests"] += bad
            self._bad("request", identity, envelope,
                      f"{bad} of {len(reqs)} pushed requests invalid, dropped; first: {first_error}")

    def _check_request(self, r: Any) -> None:
        """Full validation of one pushed wire request; raises ProtocolError naming the fault."""
        check_wire_request(r, self.P)
        k = r["k"]
        p = self._pcache.get(k)
        if p is None:
            p = partition_of(k, self.P)
        if r["p"] != p:
            raise ProtocolError(f"wire request partition {r['p']} is not the partition "
                                f"{p} of its key {k!r}")
        pr = r.get("pr", 0)
        if type(pr) is not int or not -MAX_PRIORITY < pr < MAX_PRIORITY:
            raise ProtocolError(f"wire request priority {pr!r} is not an integer")
        if len(self._pcache) >= PARTITION_CACHE_MAX:
            self._pcache.clear()
        self._pcache[k] = p

    # -- stats / status ----------------------------------------------------------------------------

    def _on_stats(self, identity: bytes, envelope: list[bytes], msg: dict[str, Any]) -> None:
        node = self._known(identity, envelope)
        if node is None:
            return
        stats = msg["stats"]
        if not isinstance(stats, dict):
            self._bad("stats", identity, envelope, "stats must be a map")
            return
        # numbers under short names only: a node's stats go into every "state" answer
        stats = {k: v for k, v in itertools.islice(stats.items(), STATS_MAX_KEYS)
                 if type(k) is str and len(k) <= FIELD_MAX_CHARS and type(v) in (int, float)}
        node.stats = stats
        node.stats_at = time.time()
        self.observer.on_stats(node.name, stats)

    def _on_status(self, identity: bytes, envelope: list[bytes], msg: dict[str, Any]) -> None:
        self._reply(envelope, "state", state=self.state())

    def state(self) -> dict[str, Any]:
        now_wall, now = time.time(), time.monotonic()
        fr = self.frontier
        usage = resource.getrusage(resource.RUSAGE_SELF)
        nodes = {}
        for n in self.nodes.values():
            nodes[n.name] = {
                "alive": n.alive, "leaving": n.leaving, "pid": n.pid, "host": n.host,
                "capacity": n.capacity, "partitions": sorted(n.owned), "owned": len(n.owned),
                "leases": len(n.leases), "credit": n.credit, "leased": n.leased, "acked": n.acked,
                "pushed": n.pushed, "registrations": n.registrations,
                "last_heartbeat_ago": round(now_wall - n.last_heartbeat, 3),
                "last_seen_ago": round(now - n.last_seen, 3),
                "stats": n.stats, "stats_ago": round(now_wall - n.stats_at, 3) if n.stats_at else None,
            }
        return {
            "epoch": self.epoch, "endpoint": self.endpoint, "partitions": self.P,
            "uptime": round(now_wall - self.started, 3), "finished": self.finished,
            "keep_alive": self.config.keep_alive, "holding": self._holding,
            "frontier": fr.size, "available": sum(st.avail for st in fr.parts),
            "memory_rows": fr.memory_rows(), "seen": fr.seen_count, "hot_seen": fr.hot_seen_size(),
            "leases": len(self.leases), "pending_handoffs": len(self.pending),
            "unowned_partitions": sum(1 for o in self.owner if o is None),
            "counters": dict(self.counters), "bad_frames": dict(self.bad_frames),
            "messages": dict(self.messages), "nodes": nodes,
            "store": {"path": str(fr.path), "commits": fr.commits, **fr.timings},
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
            "security": self.curve.summary() if self.curve is not None else {"curve": False},
            "observability": self.observer.summary(),
            **_memory_kib(),
        }


def _scalar(value: Any) -> int | float | str | None:
    """A node-supplied field kept in "state": a number, a string of at most FIELD_MAX_CHARS, or None."""
    if type(value) in (int, float):
        return value  # type: ignore[no-any-return]
    if isinstance(value, str):
        return value[:FIELD_MAX_CHARS]
    return None


def _memory_kib() -> dict[str, int]:
    """Current and peak RSS. ru_maxrss would do on its own, but Linux carries it over exec from
    the parent (a benchmark's big parent would show as this process's peak)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return {"rss_kib": int(fields["VmRSS"].split()[0]), "max_rss_kib": int(fields["VmHWM"].split()[0])}
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"rss_kib": peak, "max_rss_kib": peak}


def _reason(exc: ProtocolError) -> str:
    """A short counter name for why a frame was refused."""
    text = str(exc)
    if exc.__cause__ is not None or text.startswith("undecodable"):
        return "undecodable"
    for prefix, reason in (("frame is a", "not_a_map"), ("protocol version", "version"),
                           ("unknown message type", "unknown_type"), ("frame of", "oversized")):
        if text.startswith(prefix):
            return reason
    if " without " in text:
        return "missing_field"
    return "invalid"


# -- command line ------------------------------------------------------------------------------------


def _env(name: str, default: Any) -> Any:
    return os.environ.get(ENV_PREFIX + name.upper(), default)


def _env_bool(name: str) -> bool:
    value = os.environ.get(ENV_PREFIX + name.upper(), "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crawlproj dispatcher",
        description="The ZeroMQ dispatcher of a crawlproj crawl. Every option can also be set "
                    f"by an environment variable {ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}BIND); "
                    "the command line wins.")
    p.add_argument("--bind", default=_env("bind", DEFAULT_BIND),
                   help="ROUTER endpoint; port 0 or '*' picks a free port (default %(default)s)")
    p.add_argument("--store", default=_env("store", DEFAULT_STORE),
                   help="directory of the SQLite frontier store (default %(default)s)")
    p.add_argument("--partitions", type=int, default=int(_env("partitions", DEFAULT_PARTITIONS)),
                   help="virtual partitions P, fixed for the life of a crawl (default %(default)s)")
    p.add_argument("--heartbeat-interval", type=float,
                   default=float(_env("heartbeat_interval", DEFAULT_HEARTBEAT_INTERVAL)))
    p.add_argument("--heartbeat-timeout", type=float,
                   default=float(_env("heartbeat_timeout", DEFAULT_HEARTBEAT_TIMEOUT)))
    p.add_argument("--lease-timeout", type=float,
                   default=float(_env("lease_timeout", DEFAULT_LEASE_TIMEOUT)))
    p.add_argument("--keep-alive", action="store_true", default=_env_bool("keep_alive"),
                   help="never send 'finished'; wait for new seeds when the frontier is empty")
    p.add_argument("--seeds", default=_env("seeds", ""), help="comma-separated seed URLs")
    p.add_argument("--seeds-file", default=_env("seeds_file", None),
                   help="file of seed URLs, one a line ('#' comments)")
    p.add_argument("--seeds-redis", default=_env("seeds_redis", None),
                   help="Redis URL to pop seeds from (a list or set, scrapy-redis convention)")
    p.add_argument("--seeds-key", default=_env("seeds_key", DEFAULT_SEEDS_KEY))
    p.add_argument("--seeds-poll-interval", type=float,
                   default=float(_env("seeds_poll_interval", DEFAULT_SEEDS_POLL)))
    p.add_argument("--key-by", choices=("domain", "host"), default=_env("key_by", "domain"),
                   help="politeness key of seeds; must match the nodes' setting")
    p.add_argument("--readahead", type=int, default=int(_env("readahead", DEFAULT_READAHEAD)),
                   help="requests per partition kept in memory")
    p.add_argument("--hot-seen", type=int, default=int(_env("hot_seen", DEFAULT_HOT_SEEN)),
                   help="recent fingerprints kept in memory before asking SQLite")
    p.add_argument("--commit-interval", type=float,
                   default=float(_env("commit_interval", DEFAULT_COMMIT_INTERVAL)),
                   help="longest time writes stay uncommitted (default %(default)s s); a crash "
                        "loses nothing either way (at-least-once), only re-crawls more")
    p.add_argument("--restart-hold", type=float, default=_env("restart_hold", None),
                   help="seconds to wait for nodes to re-register before assigning partitions "
                        "when resuming a store (default: the heartbeat time-out)")
    p.add_argument("--http-port", type=int, default=_env("http_port", None),
                   help="serve the HTTP API (/api/state, /api/series), Prometheus /metrics and a "
                        "live status page on this port (0: a free one; default: off)")
    p.add_argument("--http-host", default=_env("http_host", "127.0.0.1"))
    p.add_argument("--series-interval", type=float, default=float(_env("series_interval", 1.0)),
                   help="seconds between points of the cluster's time series (default %(default)s)")
    p.add_argument("--series-points", type=int, default=int(_env("series_points", 3600)),
                   help="points kept; past that the series is thinned out (default %(default)s)")
    p.add_argument("--timings-interval", type=float, default=float(_env("timings_interval", 60.0)),
                   help="seconds between TIMINGS lines in the log (default %(default)s)")
    p.add_argument("--test-message-delay", type=float, default=float(_env("test_message_delay", 0.0)),
                   help=argparse.SUPPRESS)  # tests: a dispatcher slowed down per message
    p.add_argument("--curve-secret-key", default=_env("curve_secret_key", None), metavar="FILE",
                   help="CURVE: this dispatcher's key pair (crawlproj keys: dispatcher.key_secret); "
                        "with --curve-authorized-dir, only those clients can talk to it")
    p.add_argument("--curve-authorized-dir", default=_env("curve_authorized_dir", None), metavar="DIR",
                   help="CURVE: directory of the allowed clients' public *.key files (SIGHUP re-reads it)")
    p.add_argument("--log-level", default=_env("log_level", "INFO"))
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    seeds = [s.strip() for s in (args.seeds or "").split(",") if s.strip()]
    return Config(
        bind=args.bind, store=args.store, partitions=args.partitions,
        heartbeat_interval=args.heartbeat_interval, heartbeat_timeout=args.heartbeat_timeout,
        lease_timeout=args.lease_timeout, keep_alive=args.keep_alive, seeds=seeds,
        seeds_file=args.seeds_file, seeds_redis=args.seeds_redis, seeds_key=args.seeds_key,
        seeds_poll_interval=args.seeds_poll_interval, key_by=args.key_by,
        readahead=args.readahead, hot_seen=args.hot_seen, commit_interval=args.commit_interval,
        restart_hold=None if args.restart_hold is None else float(args.restart_hold),
        curve_secret_key=args.curve_secret_key, curve_authorized_dir=args.curve_authorized_dir,
        http_port=None if args.http_port is None else int(args.http_port), http_host=args.http_host,
        series_interval=args.series_interval, series_points=args.series_points,
        timings_interval=args.timings_interval, test_message_delay=args.test_message_delay,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s [%(name)s] %(levelname)s: %(message)s")
    try:
        dispatcher = Dispatcher(config_from_args(args))
    except DispatcherError as exc:
        logger.error("%s", exc)
        print(f"crawlproj dispatcher: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("Received signal %d: shutting down", signum)
        dispatcher.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if dispatcher.curve is not None:
        curve = dispatcher.curve
        signal.signal(signal.SIGHUP, lambda signum, frame: curve.reload())
    try:
        endpoint = dispatcher.bind()
        http_url = ""
        if dispatcher.config.http_port is not None:
            try:
                http_url = dispatcher.observer.start_http(dispatcher.config.http_host,
                                                          dispatcher.config.http_port)
            except OSError as exc:
                raise ConfigError(f"cannot serve HTTP on port {dispatcher.config.http_port}: {exc}") from exc
        dispatcher.load_initial_seeds()
        print(f"{LISTENING_PREFIX}{endpoint}", flush=True)
        if http_url:
            print(f"{HTTP_PREFIX}{http_url}", flush=True)
        dispatcher.run()
    except (DispatcherError, sqlite3.Error) as exc:
        logger.error("%s", exc)
        print(f"crawlproj dispatcher: {exc}", file=sys.stderr)
        return 2
    finally:
        try:
            dispatcher.close()
        except sqlite3.Error as exc:
            logger.error("Closing the store failed: %s (a restart resumes from the last commit)", exc)
    logger.info("Dispatcher stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
