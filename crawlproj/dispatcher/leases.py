"""Leases: serving nodes their credit's worth of requests, and getting those requests back.

A lease is a frontier row sent to a node in a "batch"; it stays open until the node acks it
(the row is deleted), releases it, or goes away, or the lease is not renewed ("renew") for
``lease_timeout`` (those give it back to the front of its partition). A postponed lease (its
robots.txt unreachable for now) waits here, outside the frontier, until its retry time; the
row stays in the store, so after a restart it is simply served again. A node is served
round-robin over its owned partitions that have requests, never beyond the credit it asked
for, in frames under MAX_FRAME_BYTES.
"""

from __future__ import annotations

import heapq
import logging
import time
from typing import Any

import msgpack

from crawlproj.wire.protocol import BATCH_FRAME_SLACK, MAX_FRAME_BYTES, encode_batch

from .core import Core, Node
from .frontier import Row

logger = logging.getLogger("crawlproj.dispatcher")

MAX_BATCH_LEASES = 1000  # leases per "batch" frame
MAX_CREDIT = 1_000_000  # outstanding credit a node may hold
MAX_ROW_ID = 2 ** 63 - 1  # SQLite's largest integer
MAX_POSTPONE_SECONDS = 7 * 86400.0  # a node's retry time beyond this is cut to it
POSTPONED_KEYS_SHOWN = 20  # keys listed in "state" under postponed_keys (the most waiting)


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
                    self.frontier.give_back(p, row)  # taken, in no batch: back with the others
                    self._wake(p)
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

    def _return_leases(self, node: Node, why: str, keep: frozenset[int] | set[int] = frozenset()) -> None:
        """Every lease of ``node`` back to the frontier, but those in ``keep``."""
        if len(node.leases) > len(keep):
            self._give_back([rid for rid in node.leases if rid not in keep], why)
            node.leases.intersection_update(keep)

    def _on_renew(self, identity: bytes, envelope: list[bytes], msg: dict[str, Any]) -> None:
        node = self._known(identity, envelope)
        rids = msg["leases"]
        if node is None:
            return
        if not isinstance(rids, list):
            self._bad("renew", identity, envelope, "leases must be a list")
            return
        deadline = time.monotonic() + self.config.lease_timeout
        leases, mine = self.leases, node.leases
        renewed = 0
        for rid in rids:
            if type(rid) is int and rid in mine:
                name, p, row, _ = leases[rid]
                leases[rid] = (name, p, row, deadline)
                leases.move_to_end(rid)  # insertion order stays deadline order
                renewed += 1
        self.counters["renewed"] += renewed
        self.counters["renewed_unknown"] += len(rids) - renewed

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
        rows: list[tuple[int, int, bytes]] = []  # for the revisit schedule
        for rid in rids:
            lease = leases.pop(rid, None) if type(rid) is int else None
            if lease is None:
                unknown.append(rid)
                continue
            known.append((rid, lease[1]))
            rows.append((rid, lease[1], lease[2][2]))
            holder = nodes.get(lease[0])
            if holder is not None:
                holder.leases.discard(rid)
        late = 0
        postponed = self.postponed
        for rid in [rid for rid in unknown if rid in postponed] if postponed else ():
            unknown.remove(rid)
            entry = postponed.pop(rid)  # a copy fetched elsewhere (before a fence): done
            known.append((rid, entry[0]))
            rows.append((rid, entry[0], entry[1][2]))
            self._unpostpone(entry[2])
        outcomes = self.revisits.outcomes_of(msg)
        self.revisits.acked(rows, outcomes)
        self.frontier.ack_leased(known)
        for rid in unknown:
            if type(rid) is int and 0 <= rid <= MAX_ROW_ID:
                self.revisits.acked_unknown(rid, outcomes.get(rid))
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

    # -- postponed leases: robots.txt could not decide yet -----------------------------------------

    def _on_postpone(self, identity: bytes, envelope: list[bytes], msg: dict[str, Any]) -> None:
        """[[lease id, seconds], ...]: give those back, but serve them only after that long."""
        node = self._known(identity, envelope)
        pairs = msg["leases"]
        if node is None:
            return  # its leases went back when it was declared gone
        if not isinstance(pairs, list) or not all(
                isinstance(pair, list) and len(pair) == 2 and type(pair[1]) in (int, float)
                and pair[1] == pair[1] for pair in pairs):
            self._bad("postpone", identity, envelope, "leases must be [[lease id, seconds], ...]")
            return
        now = time.monotonic()
        leases, postponed = self.leases, self.postponed
        n = 0
        for rid, seconds in pairs:
            if type(rid) is not int or rid not in node.leases:
                continue
            _, p, row, _ = leases.pop(rid)
            node.leases.discard(rid)
            due = now + min(max(0.0, float(seconds)), MAX_POSTPONE_SECONDS)
            key = _key_of(row[2])
            postponed[rid] = (p, row, key, due)
            self.postponed_keys[key] += 1
            heapq.heappush(self.postponed_heap, (due, rid))
            n += 1
        self.counters["postponed"] += n

    def _release_postponed(self, now: float) -> None:
        """Postponed leases whose time came go back to the front of their partition."""
        heap, postponed = self.postponed_heap, self.postponed
        back = 0
        while heap and heap[0][0] <= now:
            due, rid = heapq.heappop(heap)
            entry = postponed.get(rid)
            if entry is None or entry[3] != due:
                continue  # acked meanwhile
            del postponed[rid]
            self._unpostpone(entry[2])
            self.frontier.give_back(entry[0], entry[1])
            self._wake(entry[0])
            back += 1
        if back:  # no key for nothing: the counters are the state a peer sees
            self.counters["returned_postponed"] += back

    def _unpostpone(self, key: str) -> None:
        left = self.postponed_keys[key] - 1
        if left > 0:
            self.postponed_keys[key] = left
        else:
            del self.postponed_keys[key]

    def next_postponed(self) -> float | None:
        """Monotonic time of the next postponed lease due (None: none waits)."""
        heap = self.postponed_heap
        while heap and heap[0][1] not in self.postponed:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def postponed_state(self) -> dict[str, Any]:
        """The postponed part of "state": how many wait, and the keys with the most waiting."""
        return {"postponed": len(self.postponed),
                "postponed_keys": dict(self.postponed_keys.most_common(POSTPONED_KEYS_SHOWN))}


def _key_of(blob: bytes) -> str:
    """The politeness key of a stored wire request (``k``), for the postponed counts."""
    try:
        key = msgpack.unpackb(blob, raw=False).get("k")
    except Exception:  # stored by this dispatcher, checked on the way in: should not happen
        return "?"
    return key if isinstance(key, str) else "?"
