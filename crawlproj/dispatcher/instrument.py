"""What the dispatcher and its frontier report to: timed operations, busy time, node stats.

The service and the frontier call these hooks at fixed places; they are given an instrument
when built and default to :data:`NO_INSTRUMENT`, which records nothing.
:class:`crawlproj.observability.dispatcher.DispatcherObserver` is the one that records (timings,
the time series, the HTTP snapshot). Operation names are those of
``crawlproj.observability.timings.DISPATCHER_OPERATIONS``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

_NULL: AbstractContextManager[None] = nullcontext()

State = Callable[[], dict[str, Any]]


class Instrument:
    """The hooks, as no-ops. Subclasses override what they record; all run on the loop's thread."""

    def attach(self, state: State) -> None:
        """Called once by the dispatcher with its public :meth:`state` snapshot."""

    def timed(self, op: str) -> AbstractContextManager[Any]:
        """``with instrument.timed("frontier_commit"): ...`` times one operation."""
        return _NULL

    def busy(self) -> AbstractContextManager[Any]:
        """``with instrument.busy(): ...`` marks work of the loop (its share of the wall clock)."""
        return _NULL

    def node_stats(self, node: str, stats: dict[str, int | float]) -> None:
        """A node's latest "stats" (numbers under short names only)."""

    def tick(self, now: float) -> None:
        """The loop's timers ran (monotonic ``now``)."""

    def summary(self) -> dict[str, Any]:
        """What goes under "observability" in the dispatcher's state."""
        return {}

    def close(self) -> None:
        """The dispatcher is closing."""


NO_INSTRUMENT = Instrument()
