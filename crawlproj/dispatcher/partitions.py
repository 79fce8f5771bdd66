"""Partition -> node assignment by rendezvous (highest-random-weight) hashing.

Every node has a weight for every partition, ``stable_hash64("<node>\\x00<partition>")``; a
partition belongs to the live node of highest weight. Adding or removing one node of n moves only
the partitions that node wins or held, about P/n of them, and never moves a partition between two
nodes that both stay. Weights come from :func:`crawlproj.wire.urls.stable_hash64`, so every process
computes the same table (never Python's ``hash()``).
"""

from __future__ import annotations

from collections.abc import Iterable

from crawlproj.wire.urls import stable_hash64


def weights(node: str, partitions: int) -> list[int]:
    """The rendezvous weight of ``node`` for each partition 0..partitions-1."""
    return [weight(node, p) for p in range(partitions)]


def weight(node: str, partition: int) -> int:
    """The rendezvous weight of ``node`` for one partition."""
    return stable_hash64(node.encode("utf-8") + b"\x00" + str(partition).encode("ascii"))


def rendezvous_owner(partition: int, nodes: Iterable[str]) -> str | None:
    """Owner of one partition among ``nodes`` (None when there is no node).

    Ties (astronomically unlikely with 64-bit weights) go to the smaller node name, so the
    result never depends on iteration order.
    """
    best: tuple[int, str] | None = None
    for node in nodes:
        w = weight(node, partition)
        if best is None or w > best[0] or (w == best[0] and node < best[1]):
            best = (w, node)
    return best[1] if best else None


class Rendezvous:
    """Caches each node's weight vector and computes the whole table for a set of nodes."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._weights: dict[str, list[int]] = {}

    def forget(self, node: str) -> None:
        self._weights.pop(node, None)

    def _of(self, node: str) -> list[int]:
        w = self._weights.get(node)
        if w is None:
            w = self._weights[node] = weights(node, self.partitions)
        return w

    def table(self, nodes: Iterable[str]) -> list[str | None]:
        """Owner of every partition among ``nodes`` (all None when ``nodes`` is empty)."""
        owners: list[str | None] = [None] * self.partitions
        best = [-1] * self.partitions
        # Sorted so that a tie goes to the smaller name, as in rendezvous_owner().
        for node in sorted(nodes, reverse=True):
            w = self._of(node)
            for p in range(self.partitions):
                if w[p] >= best[p]:
                    best[p] = w[p]
                    owners[p] = node
        return owners
