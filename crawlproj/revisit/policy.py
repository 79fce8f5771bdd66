"""Revisit policies: the next fetch time of a URL from its row and a fetch's outcome.

Pure functions of plain data, no I/O: the dispatcher's schedule table
(crawlproj.dispatcher.revisits) calls :meth:`Policy.first` on the ack of a URL's first fetch and
:meth:`Policy.update` on every later one; the node builds the :class:`Outcome` it acks with
:func:`outcome_of`. Times are epoch seconds.

- ``none``: no schedule (one pass).
- ``fixed``: ``next = t + interval``.
- ``adaptive`` (Nutch's AdaptiveFetchSchedule, StormCrawler's AdaptiveScheduler): changed,
  ``I' = (1 - dec) * I + dec * I_min``; unchanged or 304, ``I' = I * (1 + inc)``; unknown,
  ``I' = I``; with ``sync_rate > 0`` Nutch's sync to the page's rhythm (``delta = t - m``,
  ``I' = max(I', delta)``, ``next = t - delta * sync_rate + I'``); ``I'`` clamped to
  ``[min_interval, max_interval]``.
- 404 / 410: the interval doubles per consecutive answer (capped), the URL retires after
  ``gone_after`` of them; 5xx and no answer: retried after ``retry_base * 2^fails`` (at most the
  interval), the interval unchanged. Any 2xx / 304 resets the count.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from crawlproj.meta import REVISIT_OUTCOME, SITEMAP_LASTMOD
from crawlproj.middlewares.revisit import CHANGED, content_hash

if TYPE_CHECKING:
    from scrapy.http import Response

POLICIES = ("none", "fixed", "adaptive")
GONE = frozenset({404, 410})


@dataclass(frozen=True)
class Outcome:
    """What an ack tells the schedule of one fetch (``ack.outcomes``, docs/protocol.md)."""

    status: int  # 0: no answer
    changed: bool | None = None  # None: cannot tell (no stored hash, no 304)
    etag: str | None = None
    last_modified: str | None = None
    content_hash: bytes | None = None  # SHA-1 of the body, 20 bytes; None on 304
    lastmod: str | None = None  # the sitemap's <lastmod> of the URL

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"s": self.status}
        for key, value in (("c", None if self.changed is None else int(self.changed)), ("et", self.etag),
                           ("lm", self.last_modified), ("h", self.content_hash), ("lmod", self.lastmod)):
            if value is not None:
                wire[key] = value
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Outcome:
        changed = wire.get("c")
        return cls(int(wire["s"]), None if changed is None else bool(changed), wire.get("et"), wire.get("lm"),
                   wire.get("h"), wire.get("lmod"))


def outcome_of(response: Response) -> Outcome:
    """The outcome of a final answer (the revisit middleware's verdict in its meta)."""
    verdict = response.meta.get(REVISIT_OUTCOME)
    changed = None if verdict is None else verdict == CHANGED

    def header(name: bytes) -> str | None:
        value = response.headers.get(name)
        return value.decode("latin-1") if value is not None else None

    body_hash = None if response.status == 304 else bytes.fromhex(content_hash(response.body))
    return Outcome(response.status, changed, header(b"ETag"), header(b"Last-Modified"), body_hash,
                   response.meta.get(SITEMAP_LASTMOD))


@dataclass(frozen=True)
class ScheduleRow:
    """What the schedule keeps of one URL (besides its request)."""

    next_fetch: float
    interval: float
    last_fetch: float
    last_change: float | None = None
    fails: int = 0
    etag: str | None = None
    last_modified: str | None = None
    content_hash: bytes | None = None


def lastmod_time(value: str | None) -> float | None:
    """Epoch seconds of a sitemap <lastmod> (W3C datetime) or an HTTP date; None if unreadable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


@dataclass(frozen=True)
class Policy:
    kind: str = "none"
    interval: float = 86400.0  # fixed: the interval; adaptive: the first one
    min_interval: float = 3600.0
    max_interval: float = 30 * 86400.0
    inc_rate: float = 0.5
    dec_rate: float = 0.5
    sync_rate: float = 0.0
    gone_after: int = 3  # REVISIT_RETIRE_AFTER
    retry_base: float = 60.0  # REVISIT_RETRY_BASE, seconds

    def __post_init__(self) -> None:
        if self.kind not in POLICIES:
            raise ValueError(f"revisit policy: expected one of {POLICIES}, got {self.kind!r}")
        if not 0 < self.min_interval <= self.interval <= self.max_interval:
            raise ValueError(f"revisit policy: expected 0 < min_interval <= interval <= max_interval, got "
                             f"{self.min_interval}, {self.interval}, {self.max_interval}")
        if not (0 < self.inc_rate and 0 < self.dec_rate <= 1 and 0 <= self.sync_rate <= 1):
            raise ValueError("revisit policy: expected inc_rate > 0, 0 < dec_rate <= 1, 0 <= sync_rate <= 1")
        if not (self.retry_base > 0 and self.gone_after >= 1):
            raise ValueError(f"revisit policy: expected retry_base > 0 and gone_after >= 1, got "
                             f"{self.retry_base}, {self.gone_after}")

    def clamp(self, interval: float) -> float:
        return min(self.max_interval, max(self.min_interval, interval))

    def first(self, outcome: Outcome, now: float) -> ScheduleRow | None:
        """The row of a URL after its first fetch; None: the policy keeps no schedule."""
        if self.kind == "none":
            return None
        interval = self.interval
        changed_at = lastmod_time(outcome.lastmod)
        if self.kind == "adaptive" and changed_at is not None and changed_at < now:
            interval = self.clamp(now - changed_at)  # a page unchanged for long is likely to stay so
        row = ScheduleRow(now + interval, interval, now, changed_at if changed_at is not None else now)
        return self._answered(row, outcome, now) if outcome.status else self._failed(row, outcome, now)

    def update(self, row: ScheduleRow, outcome: Outcome, now: float) -> ScheduleRow | None:
        """The row after another fetch; None: the URL retires (gone)."""
        if outcome.status == 0 or outcome.status >= 500 or outcome.status in GONE:
            return self._failed(row, outcome, now)
        interval, last_change, ref = row.interval, row.last_change, now
        if self.kind == "adaptive":
            if outcome.changed:
                interval = (1 - self.dec_rate) * interval + self.dec_rate * self.min_interval
                last_change = now
            elif outcome.changed is False:
                interval = interval * (1 + self.inc_rate)
            if self.sync_rate and last_change is not None:
                delta = now - last_change
                interval = max(interval, delta)
                ref = now - delta * self.sync_rate
            interval = self.clamp(interval)
        elif outcome.changed:
            last_change = now
        return self._answered(replace(row, interval=interval, last_change=last_change, next_fetch=ref + interval),
                              outcome, now)

    def _answered(self, row: ScheduleRow, outcome: Outcome, now: float) -> ScheduleRow:
        return replace(row, last_fetch=now, fails=0, etag=outcome.etag or row.etag,
                       last_modified=outcome.last_modified or row.last_modified,
                       content_hash=outcome.content_hash or row.content_hash)

    def _failed(self, row: ScheduleRow, outcome: Outcome, now: float) -> ScheduleRow | None:
        fails = row.fails + 1
        if outcome.status in GONE:
            if fails >= self.gone_after:
                return None
            delay = min(self.max_interval, row.interval * 2 ** fails)
        else:
            delay = min(row.interval, self.retry_base * 2 ** (fails - 1))
        return replace(row, fails=fails, last_fetch=now, next_fetch=now + delay)
