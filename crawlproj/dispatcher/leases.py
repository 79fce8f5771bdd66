"""Leases: serving nodes their credit's worth of requests, and getting those requests back.

A lease is a frontier row sent to a node in a "batch"; it stays open until the node acks it
(the row is deleted), releases it, or misses ``lease_timeout`` (both give it back to the front
of its partition). A node is served round-robin over its owned partitions that have requests,
never beyond the credit it asked for, in frames under MAX_FRAME_BYTES.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from crawlproj.wire.protocol import BATCH_FRAME_SLACK, MAX_FRAME_BYTES, encode_batch

from .core import Core, Node
from .frontier import Row

logger = logging.getLogger("crawlproj.dispatcher")

MAX_BATCH_LEASES = 1000  # leases per "batch" frame
MAX_CREDIT = 1_000_000  # outstanding credit a node may hold
MAX_ROW_ID = 2 ** 63 - 1  # SQLite's largest integer


class Leasing(Core):
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
        with self.instrument.timed("dispatcher_serve"):
            self._serve_node(node)

    def _serve_node(self, node: Node) -> None:
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
