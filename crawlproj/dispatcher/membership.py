"""Membership: nodes join (register), prove they live (heartbeat), leave (bye) or die (silence).

A node's record is :class:`~.core.Node`. A register under the name of a live node means that
node restarted: its open leases go back at once. A node silent for ``heartbeat_timeout`` is
declared dead; its leases go back and its partitions go to the others, once its last fetch has
surely ended (the fence: docs/protocol.md). At most DEAD_NODES_KEPT departed nodes stay listed
in "state".
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .core import Core, Node

logger = logging.getLogger("crawlproj.dispatcher")

DEAD_NODES_KEPT = 256  # departed nodes still listed in "state"
#: A node that does not say how long its fetches take (register's fetch_timeout; crawlproj's
#: nodes always do) is not waited for when it dies: it does not keep a fence either.
UNKNOWN_FETCH_TIMEOUT = 0.0
MAX_FETCH_TIMEOUT = 3600.0  # a longer fetch_timeout is cut to this
FIELD_MAX_CHARS = 256  # longest node-supplied string kept (stats names, host): "state" must stay small


def scalar(value: Any) -> int | float | str | None:
    """A node-supplied field kept in "state": a number, a string of at most FIELD_MAX_CHARS, or None."""
    if type(value) in (int, float):
        return value  # type: ignore[no-any-return]
    if isinstance(value, str):
        return value[:FIELD_MAX_CHARS]
    return None


def kept_leases(keep: Any, held: set[int]) -> set[int]:
    """The lease ids of ``register``'s ``keep`` that the node holds (anything else is ignored)."""
    if not isinstance(keep, list):
        return set()
    return {rid for rid in keep if type(rid) is int and rid in held}


class Membership(Core):
    def _on_register(self, identity: bytes, envelope: list[bytes], msg: dict[str, Any]) -> None:
        name = msg["node"]
        if not isinstance(name, str) or not name or name.encode("utf-8") != identity:
            self._bad("register", identity, envelope,
                      "register's node must be a non-empty string equal to the socket routing id")
            return
        now = time.monotonic()
        pid, host, capacity = scalar(msg["pid"]), scalar(msg["host"]), scalar(msg["capacity"])
        node = self.nodes.get(name)
        if node is not None and node.alive:
            # The same name again: that node restarted (or reconnected without its state).
            # the same live process after its fence lapsed keeps what it still has in flight
            keep = kept_leases(msg.get("keep"), node.leases)
            logger.info("Node %s registered again: returning %d of its leases, %d still in flight "
                        "there", name, len(node.leases) - len(keep), len(keep))
            self.counters["reregistered"] += 1
            self._return_leases(node, "restart", keep=keep)
            for p in [p for p, src in self.pending.items() if src == name]:
                del self.pending[p]  # its state is gone with the old process...
                # ... which may still be finishing a fetch there (its fence lapsed, it lives)
                self.fenced_parts.add(p)
                self.fenced_until[p] = max(now + node.fetch_timeout, self.fenced_until.get(p, 0.0))
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
        fetch_timeout = msg.get("fetch_timeout")
        node.fetch_timeout = (min(float(fetch_timeout), MAX_FETCH_TIMEOUT)
                              if type(fetch_timeout) in (int, float) and fetch_timeout >= 0
                              else UNKNOWN_FETCH_TIMEOUT)
        node.registered_at = time.time()
        node.last_seen = now
        node.last_heartbeat = node.registered_at
        node.registrations += 1
        node.ready.clear()
        node.ready_set.clear()
        for p in node.owned:
            self._wake(p)
        fenced = self._rebalance(welcome=node)
        config = self.config
        self._reply(envelope, "welcome", node=name, partitions=self.P,
                    assigned=sorted(node.owned), heartbeat_interval=config.heartbeat_interval,
                    lease_timeout=config.lease_timeout, renew_interval=config.renew_interval,
                    fence=config.fence_seconds, epoch=self.epoch, fenced=sorted(fenced),
                    **_echo(msg))
        if self.finished:
            self._reply(envelope, "finished")

    def _on_heartbeat(self, identity: bytes, envelope: list[bytes], msg: dict[str, Any]) -> None:
        node = self._known(identity, envelope)
        if node is not None:
            node.last_heartbeat = time.time()
            self._reply(envelope, "heartbeat", epoch=self.epoch, **_echo(msg))

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
        # A node gone without a handoff may still have a fetch running: its fence lapsed at
        # last_seen + fence at the latest, its last fetch ends fetch_timeout after that.
        until = node.last_seen + self.config.fence_seconds + node.fetch_timeout
        fence = why != "bye" and until > time.monotonic()
        for p in node.owned:
            if self.owner[p] == node.name:
                self.owner[p] = None
                if why != "bye":
                    self.fenced_parts.add(p)
                    if fence:
                        self.fenced_until[p] = max(until, self.fenced_until.get(p, 0.0))
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

    def _unfence(self, now: float) -> None:
        """Dead nodes' partitions whose fence has passed may be assigned now."""
        if not self.fenced_until or min(self.fenced_until.values()) > now:
            return
        for p in [p for p, until in self.fenced_until.items() if until <= now]:
            del self.fenced_until[p]
        self._rebalance()

    def _check_dead(self, now: float) -> None:
        limit = self.config.heartbeat_timeout
        for node in list(self.nodes.values()):
            if node.alive and now - node.last_seen > limit:
                logger.warning("Node %s missed heartbeats for %.1f s: declared dead, %d leases "
                               "and %d partitions return", node.name, now - node.last_seen,
                               len(node.leases), len(node.owned))
                self.counters["dead"] += 1
                self._drop(node, "dead")


def _echo(msg: dict[str, Any]) -> dict[str, Any]:
    """The node's ``clock`` reading of a register or heartbeat, to send back (its fence)."""
    t = msg.get("clock")
    return {"clock": t} if type(t) in (int, float) and t == t and abs(t) < float("inf") else {}
