"""The standalone ZeroMQ dispatcher: membership, partition table, durable frontier, leases.

- :mod:`.server`: the service (``crawlproj dispatcher`` / ``python -m crawlproj.dispatcher``).
- :mod:`.frontier`: SQLite frontier + exact seen-set with bounded memory.
- :mod:`.partitions`: rendezvous hashing of partitions onto nodes.
- :mod:`.process`: :class:`DispatcherProcess`, the service as a child process (tests, runner).
- :mod:`.simnode`: :class:`SimNode`, a synchronous simulated node (tests, benchmarks).
"""

from __future__ import annotations

from .errors import ConfigError, DispatcherError, StoreError

__all__ = ["ConfigError", "DispatcherError", "StoreError"]
