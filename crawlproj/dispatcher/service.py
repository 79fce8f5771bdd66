"""The dispatcher service: one ZeroMQ ROUTER, one thread, one :class:`zmq.Poller` loop.

Each round receives what is waiting (up to a budget), applies it in arrival order, serves nodes
that have credit, runs the timers (dead nodes, expired leases, Redis seeds, crawl-finished) and
commits the store when a commit is due (``commit_interval``, or ``frontier.COMMIT_ROWS`` rows).
Wire messages are those of :mod:`crawlproj.wire.protocol`; each type has one handler, in the
part of the service it concerns (:mod:`.membership`, :mod:`.assignment`, :mod:`.leases`,
:mod:`.push`, :mod:`.status`). Started by :mod:`.cli`.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import zmq

from crawlproj import diskfull
from crawlproj.security.curve import CurveKeyError, CurveServer, read_authorized, read_certificate
from crawlproj.wire.protocol import MAX_FRAME_BYTES, OVERSIZED, ProtocolError, decode_from_node
from crawlproj.wire.urls import BadURL

from .assignment import Assignment
from .config import Config, option
from .errors import ConfigError, DispatcherError
from .frontier import Frontier
from .instrument import NO_INSTRUMENT, Instrument
from .leases import Leasing
from .membership import Membership
from .push import PushIntake
from .revisits import RevisitSchedule
from .seeds import RedisSeeds, read_seeds_file, wire_seed
from .status import StatusReport

logger = logging.getLogger("crawlproj.dispatcher")

RECV_BUDGET = 2000  # frames handled per round before serving, timers and commit ...
RECV_BUDGET_SECONDS = 0.05  # ... or this much time, whichever comes first
POLL_MAX_SECONDS = 0.1  # longest poll: bounds the reaction time to SIGTERM and timers
DEAD_CHECK_MAX_SECONDS = 0.5  # longest time between two looks for nodes past their time-out
SNDHWM = 100_000  # frames queued per peer before a send fails (then leases are given back)
SUMMARY_INTERVAL = 30.0  # seconds between two summary lines in the log
STORE_RETRY_SECONDS = 2.0  # while the store cannot be written: seconds between two attempts
STORE_LOG_SECONDS = 60.0  # ... and between two log lines saying it still cannot

Handler = Callable[[bytes, list[bytes], dict[str, Any]], None]


class Dispatcher(Membership, Assignment, Leasing, PushIntake, StatusReport):
    """The service. ``bind()``, then ``run()`` until ``stop()`` (or a signal) ends it.

    ``instrument`` receives the timings and the loop's busy time (a no-op by default).
    """

    def __init__(self, config: Config, context: zmq.Context[Any] | None = None,
                 instrument: Instrument = NO_INSTRUMENT) -> None:
        config.validate()
        _check_curve_files(config)
        self.config = config
        self.P = config.partitions
        self.instrument = instrument
        self.started = time.time()
        self.started_mono = time.monotonic()
        self.frontier = self._open_store()
        self.revisits = RevisitSchedule(self.frontier, config.revisit_share)
        self.epoch = self.frontier.epoch
        self._own_context = context is None
        self.ctx: zmq.Context[Any] = context if context is not None else zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.SNDHWM, SNDHWM)
        self.curve = None  # before bind: the ZAP handler must be up first
        if config.curve_secret_key and config.curve_authorized_dir:
            self.curve = CurveServer(self.ctx, config.curve_secret_key, config.curve_authorized_dir)
            self.curve.secure(self.sock)
        self.endpoint = ""
        self._init_state()
        self.finished = False
        self._stop = False
        hold = config.restart_hold
        if hold is None:
            hold = config.heartbeat_timeout if self.frontier.resumed else 0.0
        # After a restart, nodes of the previous run may still serve their partitions until
        # they learn (error unknown_node) that this run does not know them; no partition is
        # assigned before every live node had the time to re-register.
        self.hold_until = self.started_mono + hold
        self._holding = hold > 0 or config.min_nodes > 1
        self._next_dead_check = 0.0
        self._next_balance = 0.0
        self._next_seed_poll = 0.0
        self._summary_at = self.started_mono
        self._summary_counters: Counter[str] = Counter()
        self.redis_seeds: RedisSeeds | None = None
        self._handlers: dict[str, Handler] = {
            "register": self._on_register, "heartbeat": self._on_heartbeat,
            "pull": self._on_pull, "push": self._on_push, "ack": self._on_ack,
            "release": self._on_release, "renew": self._on_renew,
            "postpone": self._on_postpone, "handoff": self._on_handoff, "stats": self._on_stats,
            "bye": self._on_bye, "status": self._on_status,
        }
        instrument.attach(self.state)

    # -- lifecycle -------------------------------------------------------------------------------

    def _open_store(self) -> Frontier:
        config = self.config
        return Frontier(config.store, config.partitions, readahead=config.readahead,
                        hot_seen=config.hot_seen, filter_mib=config.seen_filter_mib,
                        commit_interval=config.commit_interval,
                        instrument=self.instrument)

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
        self.instrument.close()
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

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Serve until stop() (a signal) or, when given, until ``until()`` is true."""
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        busy = self.instrument.busy
        logger.info("Dispatcher epoch %d serving %s (store %s, %d partitions, frontier %d, "
                    "seen %d)", self.epoch, self.endpoint, self.frontier.path, self.P,
                    self.frontier.size, self.frontier.seen_count)
        while not self._stop and not (until is not None and until()):
            now = time.monotonic()
            timeout = self._poll_timeout(now)
            try:
                if poller.poll(math.ceil(timeout * 1000)):
                    with busy():
                        self._drain()
                with busy():  # the loop's work between two polls: its share of the wall clock
                    now = time.monotonic()
                    self._timers(now)
                    self._serve_dirty()
                    self._check_finished()
                    self.frontier.maybe_commit(now)
            except sqlite3.Error as exc:
                if not diskfull.unwritable(exc):
                    raise
                self._store_unwritable(exc, poller)
        logger.info("Dispatcher stopping: committing the store")

    def _store_unwritable(self, exc: sqlite3.Error, poller: zmq.Poller) -> None:
        """The store cannot be written (a full disk): drop the open transaction, wait until it
        can be written, then go on as a restarted dispatcher (a new epoch).

        Nothing acked is lost: a request leaves the store only when its ack is committed, and
        a page's pushes are committed no later than its ack; what the dropped transaction held
        is resent by the nodes (their replay of the last pushes and acks) or served again.
        """
        logger.error("Dispatcher store: cannot write %s. Dropped the open transaction (at most "
                     "%.1f s of pushes and acks: resent by the nodes or served again; nothing acked "
                     "is lost). Not serving until the store can be written; retrying every %.0f s",
                     diskfull.describe(self.frontier.path, exc), self.config.commit_interval,
                     STORE_RETRY_SECONDS)
        self.frontier.abandon()
        attempts, dropped = 0, 0
        logged = time.monotonic()
        while not self._stop:
            until = time.monotonic() + STORE_RETRY_SECONDS
            while not self._stop and (left := until - time.monotonic()) > 0:
                if poller.poll(math.ceil(min(left, POLL_MAX_SECONDS) * 1000)):
                    dropped += self._discard()  # unanswered, as by a dispatcher not yet up
            attempts += 1
            try:
                frontier = self._open_store()
            except DispatcherError as err:
                cause = err.__cause__ or err
                if not diskfull.unwritable(cause):
                    raise
                if time.monotonic() - logged >= STORE_LOG_SECONDS:
                    logged = time.monotonic()
                    logger.error("Dispatcher store: still cannot write %s (%d attempts, %d messages "
                                 "left unanswered)", diskfull.describe(self.frontier.path, cause),
                                 attempts, dropped)
                continue
            break
        else:
            return
        self.frontier = frontier
        self.revisits = RevisitSchedule(frontier, self.config.revisit_share)
        self.epoch = frontier.epoch
        self._init_state()
        self.counters["store_unwritable"] += 1
        self.finished = False
        self.hold_until = time.monotonic() + self.config.heartbeat_timeout
        self._holding = True
        logger.warning("Dispatcher store %s can be written again after %d attempts: serving as "
                       "epoch %d (frontier %d, seen %d); nodes register again and resend their last "
                       "pushes and acks", frontier.path, attempts, self.epoch, frontier.size,
                       frontier.seen_count)

    def _discard(self) -> int:
        n = 0
        while True:
            try:
                self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return n
            n += 1

    def _poll_timeout(self, now: float) -> float:
        timeout = POLL_MAX_SECONDS
        due = self.frontier.commit_due_in(now)
        if due is not None:
            timeout = min(timeout, due)
        if self.leases:
            first = next(iter(self.leases.values()))
            timeout = min(timeout, max(0.0, first[3] - now))
        due = self.next_postponed()
        if due is not None:
            timeout = min(timeout, max(0.0, due - now))
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
            self._bad(OVERSIZED, identity, envelope, f"frame of {len(payload)} bytes")
            return
        try:
            msg = decode_from_node(payload)
        except ProtocolError as exc:
            self._bad(exc.code, identity, envelope, str(exc))
            return
        mtype = msg["t"]
        self.messages[mtype] += 1
        try:
            with self.instrument.timed("dispatcher_message"):
                self.handle_message(mtype, identity, envelope, msg)
        except (DispatcherError, sqlite3.Error, zmq.ZMQError):
            raise  # the store or the socket failed: stop rather than serve on a broken store
        except Exception as exc:
            # A message the checks above let through but a handler could not digest: refuse it
            # and keep serving everyone else (a crash would only repeat when the node resends).
            logger.exception("Could not handle a %s message from %r", mtype, identity[:64])
            self._bad("internal", identity, envelope, f"{mtype}: {type(exc).__name__}: {exc}")

    def handle_message(self, mtype: str, identity: bytes, envelope: list[bytes],
                       msg: dict[str, Any]) -> None:
        """Apply one decoded message of type ``mtype`` (timed as ``dispatcher_message``)."""
        self._handlers[mtype](identity, envelope, msg)

    # -- timers ----------------------------------------------------------------------------------

    def _timers(self, now: float) -> None:
        min_nodes = self.config.min_nodes
        if self._holding and now >= self.hold_until and (min_nodes <= 1 or self._alive() >= min_nodes):
            self._holding = False
            logger.info("Hold over: assigning partitions to %d nodes", self._alive())
            self._rebalance()
        if now >= self._next_dead_check:
            self._next_dead_check = now + min(self.config.heartbeat_interval / 2,
                                                DEAD_CHECK_MAX_SECONDS)
            self._check_dead(now)
        if self.config.balance_interval and now >= self._next_balance:
            self._next_balance = now + self.config.balance_interval
            self._balance(now)
        self._expire(now)
        self._release_postponed(now)
        self._unfence(now)
        for p in self.revisits.tick():
            self._wake(p)
        self.instrument.tick(now)
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
                    self._alive(), span, rate("pushed"), rate("new"), rate("leased"),
                    rate("acked"), delta["expired"], self.frontier.timings["commit_max_seconds"])

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
                and not self.postponed and not self._holding and not self.revisits.rows)
        if done and not self.finished:
            self.finished = True
            logger.info("Crawl finished: frontier empty, no lease open; telling %d nodes",
                        self._alive())
            for node in self.nodes.values():
                if node.alive:
                    self._reply([node.identity], "finished")
        elif not done and self.finished and self.frontier.size:
            self.finished = False


def _check_curve_files(config: Config) -> None:
    """ConfigError naming the option when a CURVE key file or directory cannot be read."""
    if not (config.curve_secret_key and config.curve_authorized_dir):
        return
    try:
        read_certificate(config.curve_secret_key, secret=True)
    except CurveKeyError as exc:
        raise ConfigError(f"{option('curve_secret_key')}: {exc}") from exc
    try:
        read_authorized(config.curve_authorized_dir)
    except CurveKeyError as exc:
        raise ConfigError(f"{option('curve_authorized_dir')}: {exc}") from exc
