"""Partitions a node owns, and handing them over: assign, revoke, handoff of politeness state.

On revoke the node releases what it has not started, finishes what it has, then hands the
partitions' politeness state to the dispatcher for their next owner; a partition whose requests
do not end within DISPATCHER_HANDOFF_TIMEOUT is handed off anyway (its leases go back).
Part of :class:`crawlproj.scheduling.scheduler.DispatcherScheduler`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from scrapy import Request

from crawlproj.meta import LEASE
from crawlproj.meta import PARTITION as PART
from crawlproj.scheduling.state import NodeState

logger = logging.getLogger("crawlproj.scheduling.scheduler")


class PartitionHandoff(NodeState):
    if TYPE_CHECKING:  # the other parts of DispatcherScheduler
        def _flush(self) -> None: ...

        def _fence_partitions(self, parts: Any) -> None: ...

        def _pull(self) -> None: ...

    def _on_assign(self, msg: dict[str, Any]) -> None:
        parts = set(msg["partitions"])
        self.owned |= parts
        if msg.get("fenced"):
            self._fence_partitions(parts)
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
            self.held.discard(lease_id)
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

    def _export_state(self, parts: set[int]) -> dict[str, Any]:
        if self.gate is None:
            return {}
        return self.gate.export_partitions(parts, self.partitions)

    def _import_state(self, state: dict[str, Any]) -> None:
        if self.gate is not None and state:
            self.gate.import_state(state)
