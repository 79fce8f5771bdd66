"""Per-politeness-key queues and a heap of keys by next-allowed fetch time.

Pure logic, no Scrapy: the scheduler asks for a request whose key is neither busy (one fetch in
flight per key) nor inside its delay, so one slow domain never blocks the others.

Bounded by what is queued, never by the keys ever served: a key's queue, ready time and heap
entry go when its last item is taken; stale heap entries (a key rescheduled, emptied or removed)
are dropped lazily and the heap is rebuilt when they outnumber the live ones (``sizes``).
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
    def __init__(self) -> None:
        self._queues: dict[str, deque[T]] = {}
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
                "busy": len(self._busy), "heap": len(self._heap), "items": self._size}

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
        if front:
            queue.appendleft(item)
        else:
            queue.append(item)
        self._size += 1

    def pop_ready(self, now: float) -> tuple[str, T] | None:
        """The oldest item of the key that has been ready longest; the key becomes busy."""
        heap = self._heap
        while heap:
            ready_at, _, key = heap[0]
            if ready_at > now:
                return None
            heapq.heappop(heap)
            queue = self._queues.get(key)
            if not queue or key in self._busy or ready_at < self._ready_at.get(key, 0.0):
                continue  # stale entry: key emptied, busy, or rescheduled
            item = queue.popleft()
            self._size -= 1
            if not queue:
                del self._queues[key]
                self._ready_at.pop(key, None)
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
            self._ready_at.pop(key, None)
        self._size -= len(removed)
        return removed

    def items(self) -> Iterable[tuple[str, T]]:
        for key, queue in self._queues.items():
            for item in queue:
                yield key, item

    def clear(self) -> list[T]:
        return self.remove(lambda _key: True)


