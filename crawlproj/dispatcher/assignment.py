"""Assignment: the partition table (rendezvous over the live nodes) and the handoff of partitions.

A partition moves in two steps so that no two nodes ever own it at once: the dispatcher
revokes it from its owner, the owner hands off its politeness state, and only then is the
partition assigned (with that state) to its new owner. While the dispatcher holds after a
restart (``restart_hold``), nothing is assigned: nodes of the previous run get the time to
re-register. A dead node's partitions wait until its last fetch has surely ended
(``fenced_until``, set by :mod:`.membership`) and are assigned "fenced": the new owner holds
every key of theirs for its delay from then on.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .core import Core, Node

logger = logging.getLogger("crawlproj.dispatcher")

BALANCE_MIN_GAP = 200  # requests of backlog between two nodes below which nothing moves
BALANCE_RATIO = 1.5  # ... nor while the larger backlog is under this many times the smaller
BALANCE_HOLD = 30.0  # seconds a partition moved for balance stays where it went


class Assignment(Core):
    def _rebalance(self, welcome: Node | None = None) -> set[int]:
        """Move partitions towards the rendezvous table of the live nodes.

        Unowned partitions go to their node at once (for ``welcome``, in its welcome message:
        the caller sends it right after, with the returned partitions as its "fenced" ones).
        Owned ones are revoked first; the assign follows the handoff (see _on_handoff), so a
        partition is never owned by two nodes.
        """
        welcome_fenced: set[int] = set()
        if self._holding:
            return welcome_fenced
        live = [n.name for n in self.nodes.values() if n.alive and not n.leaving]
        table = self.rdv.table(live)
        if self.balanced:
            if self.balanced_for != frozenset(live):  # nodes came or went: rendezvous again
                self.balanced.clear()
            for p, name in self.balanced.items():
                table[p] = name
        revokes: dict[str, list[int]] = {}
        assigns: dict[tuple[str, int, bool], tuple[dict[Any, Any], list[int]]] = {}
        now = time.monotonic()
        fenced_until, fenced_parts = self.fenced_until, self.fenced_parts
        for p in range(self.P):
            want = table[p]
            cur = self.owner[p]
            if cur == want or p in self.pending:
                continue
            if cur is None:
                if want is None or fenced_until.get(p, 0.0) > now:
                    continue
                state = self.parked_state.pop(p, {})
                node = self.nodes[want]
                self.owner[p] = want
                node.owned.add(p)
                self._wake(p)
                fenced = p in fenced_parts
                fenced_parts.discard(p)
                if node is welcome:
                    if fenced:
                        welcome_fenced.add(p)
                else:
                    assigns.setdefault((want, id(state), fenced), (state, []))[1].append(p)
            else:
                self.owner[p] = None
                self.nodes[cur].owned.discard(p)
                self.pending[p] = cur
                revokes.setdefault(cur, []).append(p)
        for name, parts in revokes.items():
            self.counters["revoked"] += len(parts)
            logger.info("Revoking %d partitions from %s", len(parts), name)
            self._reply([self.nodes[name].identity], "revoke", partitions=parts)
        for (name, _, fenced), (state, parts) in assigns.items():
            self.counters["assigned"] += len(parts)
            self._reply([self.nodes[name].identity], "assign", partitions=parts, state=state,
                        **({"fenced": True} if fenced else {}))
        return welcome_fenced

    def _balance(self, now: float) -> None:
        """Move one partition from the node with the largest backlog to the one with the
        smallest, when that lowers the larger of the two.

        A crawl ends when its slowest key is done, and a node busy with many keys' pages starts
        each key's next fetch late: with few keys (or few large ones) the hash can leave one node
        with most of the work and the other idle. The backlog of a partition is its unacked
        requests; the one moved is the largest smaller than the two nodes' difference, so every
        move lowers the sum of squared backlogs (moves cannot cycle), and a moved partition stays
        BALANCE_HOLD seconds. Nothing moves while a handoff is pending or under BALANCE_MIN_GAP.
        """
        if self._holding or self.pending:
            return
        live = [n for n in self.nodes.values() if n.alive and not n.leaving]
        if len(live) < 2:
            return
        parts = self.frontier.parts
        load = {n.name: sum(parts[p].count for p in n.owned) for n in live}
        hi = max(live, key=lambda n: load[n.name])
        lo = min(live, key=lambda n: load[n.name])
        gap = load[hi.name] - load[lo.name]
        if gap < BALANCE_MIN_GAP or load[hi.name] < BALANCE_RATIO * load[lo.name]:
            return
        held = self.balanced_at
        best, best_count = None, 0
        for p in hi.owned:
            c = parts[p].count
            if best_count < c < gap and now - held.get(p, -BALANCE_HOLD) >= BALANCE_HOLD:
                best, best_count = p, c
        if best is None:
            return
        self.balanced_for = frozenset(n.name for n in live)
        self.balanced[best] = lo.name
        held[best] = now
        self.counters["balance_moves"] += 1
        logger.info("Balance: moving partition %d (%d requests) from %s (%d) to %s (%d)",
                    best, best_count, hi.name, load[hi.name], lo.name, load[lo.name])
        self._rebalance()

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
