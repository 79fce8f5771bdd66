"""The items of the MongoDB pipeline waiting to become durable, and what its worker does next.

Reactor side and free of Twisted: the pipeline asks :meth:`Schedule.next_action` whenever the
worker is idle and :meth:`Schedule.deadline` for when to ask again.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .messages import Doc, Prepared, SpillState

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from .config import MongoConfig
    from .health import Health


@dataclass
class Entry:
    """One item waiting to become durable."""

    doc: Doc
    url: str
    enqueued: float  # time.monotonic()
    done: Deferred[str]
    item: Any = None  # the Scrapy item (its timings)
    batch_wait: float | None = None  # seconds from enqueued until its batch was first sent

    @property
    def doc_id(self) -> str:
        return self.doc.doc_id


@dataclass
class Batch:
    entries: list[Entry]
    prepared: Prepared | None = None  # by the worker, fixed from then on
    invalid_reported: bool = False

    @property
    def docs(self) -> tuple[Doc, ...]:
        return tuple(entry.doc for entry in self.entries)

    @property
    def oldest(self) -> float:
        return self.entries[0].enqueued if self.entries else time.monotonic()


@dataclass(frozen=True)
class Action:
    kind: Literal["write", "replay", "spill", "probe"]
    batches: tuple[Batch, ...] = ()  # "write": one; "spill": the doubt (if any) then the buffer's
    doubt: Batch | None = None  # "spill": the batch in doubt among them


class Schedule:
    def __init__(self, config: MongoConfig, health: Health):
        self.config = config
        self.health = health
        self.buffer: deque[Entry] = deque()
        self.doubt: Batch | None = None  # a batch sent (perhaps applied) but not acknowledged
        self.spill = SpillState()  # the worker's spill files after its last job
        self.spill_blocked_until = 0.0
        self.closing = False

    def next_action(self, now: float) -> Action | None:
        """What the worker does next, in order: write what is in doubt, replay the spill, write a
        due batch (MongoDB healthy); spill what waited too long, probe (MongoDB failing)."""
        health = self.health
        if health.writing:
            if self.doubt is not None:
                return Action("write", (self.doubt,))
            if self.spill.pending:  # older than anything in the buffer: first
                return Action("replay")
            if self.buffer and self._flush_due(now):
                return Action("write", (self._take_batch(self.config.batch_size),))
            return None
        if self._spill_due(now) and self.can_spill(now):
            doubt = self.doubt
            batches = [] if doubt is None else [doubt]
            self.doubt = None
            if self.buffer:
                batches.append(self._take_batch(self.config.buffer_max_items))
            return Action("spill", tuple(batches), doubt)
        if (health.fatal is None and not self.closing and now >= health.retry_at
                and (self.oldest_waiting() is not None or self.spill.pending)):
            return Action("probe")
        return None

    def deadline(self) -> float | None:
        """When :meth:`next_action` may have something new to do (None: only on new items)."""
        health = self.health
        deadlines = []
        oldest = self.oldest_waiting()
        if health.writing and self.buffer:
            deadlines.append(self.buffer[0].enqueued + self.config.flush_interval)
        if not health.healthy and health.fatal is None and not self.closing and (
                oldest is not None or self.spill.pending):
            deadlines.append(health.retry_at)
        if oldest is not None and not health.writing:
            if self.spill.bytes < self.config.spill_max_bytes:
                deadlines.append(max(oldest + self.config.spill_after, self.spill_blocked_until))
        return min(deadlines) if deadlines else None

    def drained(self) -> bool:
        """Nothing waits that the worker could still write (close_spider may end)."""
        return not self.buffer and self.doubt is None and (not self.spill.pending or not self.health.writing)

    def must_pause(self, now: float) -> bool:
        """The buffer is full and nothing can take its items now: pause the engine."""
        can_spill_now = not self.health.writing and self.can_spill(now)
        return not self.closing and self.waiting() >= self.config.buffer_max_items and not can_spill_now

    def may_unpause(self) -> bool:
        return self.waiting() <= self.config.buffer_max_items // 2 or self.closing

    def waiting(self) -> int:
        return len(self.buffer) + (len(self.doubt.entries) if self.doubt else 0)

    def oldest_waiting(self) -> float | None:
        if self.doubt is not None:
            return self.doubt.oldest
        return self.buffer[0].enqueued if self.buffer else None

    def can_spill(self, now: float) -> bool:
        return now >= self.spill_blocked_until and self.spill.bytes < self.config.spill_max_bytes

    def _take_batch(self, size: int) -> Batch:
        count = min(size, len(self.buffer))
        return Batch([self.buffer.popleft() for _ in range(count)])

    def _flush_due(self, now: float) -> bool:
        return (len(self.buffer) >= self.config.batch_size or self.closing
                or now - self.buffer[0].enqueued >= self.config.flush_interval)

    def _spill_due(self, now: float) -> bool:
        oldest = self.oldest_waiting()
        if oldest is None:
            return False
        return (self.health.fatal is not None or self.closing or self.waiting() >= self.config.buffer_max_items
                or now - oldest >= self.config.spill_after)
