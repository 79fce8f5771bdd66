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
