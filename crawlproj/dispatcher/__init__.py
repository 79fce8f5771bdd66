"""The standalone ZeroMQ dispatcher: membership, partition table, durable frontier, leases.

- :mod:`.cli`: ``crawlproj dispatcher`` / ``python -m crawlproj.dispatcher`` (options, start-up).
- :mod:`.config`: :class:`~.config.Config`, its defaults and checks.
- :mod:`.service`: :class:`~.service.Dispatcher`, the ZeroMQ loop and message dispatch, made of
  :mod:`.membership` (nodes, heartbeats, dead nodes), :mod:`.assignment` (partition table,
  handoff), :mod:`.leases` (serving, open leases, expiry), :mod:`.push` (validating pushed links)
  and :mod:`.status` (the "state" map), over the shared state of :mod:`.core`.
- :mod:`.instrument`: the timing hooks the service and frontier call (no-op by default).
- :mod:`.frontier`: SQLite frontier + exact seen-set with bounded memory.
- :mod:`.partitions`: rendezvous hashing of partitions onto nodes.
- :mod:`.seeds`: seed sources (command line, file, Redis).
- :mod:`.errors`: the package's exceptions.

Process runners (crawlproj.tools.dispatcher_process) and simulated nodes (crawlproj_testing.simnode)
live outside this package.
"""

from __future__ import annotations

from .errors import ConfigError, DispatcherError, StoreError

__all__ = ["ConfigError", "DispatcherError", "StoreError"]
