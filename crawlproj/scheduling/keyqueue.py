"""Per-politeness-key queues and a heap of keys by next-allowed fetch time.

Pure logic, no Scrapy: the scheduler asks for a request whose key is neither busy (one fetch in
flight per key) nor inside its delay, so one slow domain never blocks the others.

Bounded by what is queued, never by the keys ever served: a key's queue, ready time and heap
entry go when its last item is taken; stale heap entries (a key rescheduled, emptied or removed)
are dropped lazily and the heap is rebuilt when they outnumber the live ones (``sizes``).

The revisit share (docs/revisits.md): given ``is_revisit``, a key's revisits wait in a queue of
their own, and while the key has both revisits and new URLs queued at most ``revisit_share`` of
its picks are revisits (a credit per key, so the picks interleave: 0.5 alternates); with only
one kind queued, that kind is taken. Items pushed to the front (a retry, a wake-up) come first
and count for no pick: they continue a pick already made.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")

#: The heap is rebuilt from the live keys when it holds more than 2x their number plus this.
HEAP_SLACK = 1024


class KeyQueues(Generic[T]):
    def __init__(self, is_revisit: Callable[[T], bool] | None = None, revisit_share: float = 1.0) -> None:
        if not 0 <= revisit_share <= 1:
            raise ValueError(f"revisit_share: expected a share between 0 and 1, got {revisit_share!r}")
        # a key is in _queues while it has queued items; revisits, if told apart, wait in _revisits
        self._queues: dict[str, deque[T]] = {}
        self._revisits: dict[str, deque[T]] = {}
        self._credit: dict[str, float] = {}  # keys with queued revisits: revisit picks owed
        self._front: dict[str, int] = {}  # items pushed to the front, at the head of _queues[key]
        self._is_revisit = is_revisit
        self.revisit_share = revisit_share
        self._heap: list[tuple[float, int, str]] = []  # (ready at, tie-break, key); lazily stale
        self._ready_at: dict[str, float] = {}  # earliest next fetch of keys with queued items
        self._busy: set[str] = set()
        self._seq = itertools.count()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __contains__(self, key: str) -> bool:
        """``key`` has queued items."""
        return key in self._queues

    @property
    def keys(self) -> int:
        return len(self._queues)

    def sizes(self) -> dict[str, int]:
        """Entries of each internal map (docs/bounds.md): all bounded by the queued keys."""
        return {"queues": len(self._queues), "ready_at": len(self._ready_at),
                "busy": len(self._busy), "heap": len(self._heap), "items": self._size,
                "revisits": len(self._revisits), "front": len(self._front)}

    def _schedule(self, key: str) -> None:
        if len(self._heap) > 2 * len(self._queues) + HEAP_SLACK:
            self._compact()
        heapq.heappush(self._heap, (self._ready_at.get(key, 0.0), next(self._seq), key))

    def _compact(self) -> None:
        """One live entry per waiting key (queued, not busy), at its ready time."""
        ready_at = self._ready_at
        self._heap = [(ready_at.get(k, 0.0), next(self._seq), k) for k in self._queues if k not in self._busy]
        heapq.heapify(self._heap)

    def push(self, key: str, item: T, front: bool = False) -> None:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            if key not in self._busy:
                self._schedule(key)
        self._size += 1
        if front:
            queue.appendleft(item)
            if self._is_revisit is not None:
                self._front[key] = self._front.get(key, 0) + 1
        elif self._is_revisit is not None and self._is_revisit(item):
            revisits = self._revisits.get(key)
            if revisits is None:
                revisits = self._revisits[key] = deque()
                self._credit[key] = 0.0
            revisits.append(item)
        else:
            queue.append(item)

    def _take(self, key: str, queue: deque[T]) -> T:
        """The key's next item: a front one, else a revisit or a new URL by the share."""
        revisits = self._revisits.get(key)
        front = self._front.get(key)
        if front:
            item = queue.popleft()
            if front == 1:
                del self._front[key]
            else:
                self._front[key] = front - 1
        elif revisits is None:
            item = queue.popleft()
        else:
            credit = self._credit[key]
            if queue:
                credit += self.revisit_share
                take_revisit = credit >= 1 - 1e-9
                self._credit[key] = credit - 1 if take_revisit else credit
            else:
                take_revisit = True
            if take_revisit:
                item = revisits.popleft()
                if not revisits:
                    del self._revisits[key], self._credit[key]
            else:
                item = queue.popleft()
        if not queue and key not in self._revisits:
            del self._queues[key]
            self._ready_at.pop(key, None)
        return item

    def pop_ready(self, now: float) -> tuple[str, T] | None:
        """The next item (the oldest, or by the revisit share) of the key that has been ready
        longest; the key becomes busy."""
        heap = self._heap
        while heap:
            ready_at, _, key = heap[0]
            if ready_at > now:
                return None
            heapq.heappop(heap)
            queue = self._queues.get(key)
            if queue is None or key in self._busy or ready_at < self._ready_at.get(key, 0.0):
                continue  # stale entry: key emptied, busy, or rescheduled
            item = self._take(key, queue)
            self._size -= 1
            self._busy.add(key)
            return key, item
        return None

    def next_ready_time(self) -> float | None:
        """When the earliest waiting key may be fetched (None: nothing waits on a delay)."""
        heap = self._heap
        while heap:
            ready_at, _, key = heap[0]
            if (key in self._queues and key not in self._busy
                    and ready_at >= self._ready_at.get(key, 0.0)):
                return ready_at
            heapq.heappop(heap)
        return None

    def release(self, key: str, ready_at: float) -> None:
        """The key's fetch ended; it may be fetched again from ``ready_at`` on."""
        self._busy.discard(key)
        self.hold(key, ready_at)

    def hold(self, key: str, ready_at: float) -> None:
        """Do not fetch ``key``'s queued items before ``ready_at`` (never moves a time earlier).

        Only keys with queued items keep a time, so the map stays as small as the queues; the
        caller holds a key again when items come for it later (the politeness gate knows when).
        """
        if key not in self._queues:
            return
        if ready_at > self._ready_at.get(key, 0.0):
            self._ready_at[key] = ready_at
        if key not in self._busy:
            self._schedule(key)

    def remove(self, predicate: Callable[[str], bool]) -> list[T]:
        """Take out every queued item of the keys matching ``predicate`` (partition revoke)."""
        removed: list[T] = []
        for key in [k for k in self._queues if predicate(k)]:
            removed.extend(self._queues.pop(key))
            removed.extend(self._revisits.pop(key, ()))
            self._credit.pop(key, None)
            self._front.pop(key, None)
            self._ready_at.pop(key, None)
        self._size -= len(removed)
        return removed

    def items(self) -> Iterable[tuple[str, T]]:
        for key, queue in self._queues.items():
            for item in queue:
                yield key, item
            for item in self._revisits.get(key, ()):
                yield key, item

    def clear(self) -> list[T]:
        return self.remove(lambda _key: True)


