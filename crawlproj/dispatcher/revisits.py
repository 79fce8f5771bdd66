"""The per-URL revisit schedule: a ``schedule`` table in the frontier's SQLite file.

One row per URL fetched under a revisit policy other than ``none`` (docs/revisits.md): its
next fetch time, interval, last fetch, last change, consecutive failures, validators, content
hash and the wire request to hand out again. An ack whose outcome (``ack.outcomes``,
:class:`crawlproj.revisit.policy.Outcome` plus the node's policy) names a policy inserts or
updates the row with :class:`~crawlproj.revisit.policy.Policy`; a URL that is gone retires
(its row is deleted, ``seen`` keeps it). An ack without outcome changes nothing here unless its
row was a revisit handed out (then it comes round again after the same interval).

Serving: every ``TICK_SECONDS`` the rows whose time has come are moved, per partition and
oldest first, into the frontier as ordinary requests (``q = 1`` marks them queued, in the
same transaction), so they are leased, renewed, expired and acked like any request, by the
partition's owner, through its politeness gate. A partition queues revisits only up to its share
(``revisit_share``) of the rows waiting in it when new URLs wait too, and all of them when none
wait; each key's fetches are shared on the node (``REVISIT_SHARE``: rows carry ``meta.revisit``,
crawlproj.scheduling.keyqueue). RAM holds one float per partition (its
earliest due time) and counters; the rows stay in SQLite (index ``schedule_due`` on
``(p, q, next)``) and are written in the frontier's transaction stream, so a kill -9 keeps
every row as of the last commit, like the frontier itself.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections import Counter
from typing import Any

import msgpack

from crawlproj.meta import REVISIT, REVISIT_CONTENT_HASH, REVISIT_ETAG, REVISIT_LAST_MODIFIED
from crawlproj.revisit.policy import Outcome, Policy, ScheduleRow

from .frontier import Frontier

logger = logging.getLogger("crawlproj.dispatcher")

TICK_SECONDS = 0.25  # how often due rows are looked for
PROMOTE_MAX = 256  # revisits of one partition queued in the frontier at most
DEFAULT_SHARE = 0.5
NEVER = math.inf
REVISIT_META = (REVISIT, REVISIT_ETAG, REVISIT_LAST_MODIFIED, REVISIT_CONTENT_HASH)

_COLUMNS = "next, ivl, last_fetch, last_change, fails, etag, last_modified, hash, q"


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(round(seconds * 1000))


def _s(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000.0


def policy_of(wire: Any) -> Policy:
    """The policy an outcome names: ``rp = [kind, interval, min, max(, retry base, retire after)]``
    (the last two absent from nodes before them: Policy's defaults); ValueError if bad."""
    if not (isinstance(wire, list) and len(wire) in (4, 6) and isinstance(wire[0], str)
            and all(type(v) in (int, float) for v in wire[1:]) and (len(wire) == 4 or type(wire[5]) is int)):
        raise ValueError(f"outcome policy {wire!r} is not [kind, interval, min, max, retry base, retire after]")
    if len(wire) == 4:
        return Policy(wire[0], float(wire[1]), float(wire[2]), float(wire[3]))
    return Policy(wire[0], float(wire[1]), float(wire[2]), float(wire[3]), retry_base=float(wire[4]),
                  gone_after=wire[5])


def outcome_from_wire(wire: Any) -> tuple[Outcome, Policy]:
    """An ack outcome map (docs/protocol.md) as (Outcome, Policy); ValueError naming the fault."""
    if not isinstance(wire, dict) or type(wire.get("s")) is not int:
        raise ValueError(f"outcome {wire!r:.200} is not a map with an integer status 's'")
    for key, kind in (("et", str), ("lm", str), ("h", bytes), ("lmod", str)):
        if key in wire and not isinstance(wire[key], kind):
            raise ValueError(f"outcome field {key!r} is not a {kind.__name__}")
    if wire.get("c") not in (None, 0, 1):
        raise ValueError(f"outcome field 'c' is {wire.get('c')!r}, expected 0 or 1")
    return Outcome.from_wire(wire), policy_of(wire.get("rp"))


class RevisitSchedule:
    """The schedule of one crawl, sharing the frontier's connection and transactions."""

    def __init__(self, frontier: Frontier, share: float = DEFAULT_SHARE) -> None:
        self.frontier = frontier
        self.share = share
        self.conn: sqlite3.Connection = frontier.conn
        c = self.conn
        c.execute("CREATE TABLE IF NOT EXISTS schedule (f BLOB PRIMARY KEY, p INTEGER NOT NULL,"
                  " next INTEGER NOT NULL, ivl REAL NOT NULL, last_fetch INTEGER, last_change INTEGER,"
                  " fails INTEGER NOT NULL DEFAULT 0, etag TEXT, last_modified TEXT, hash BLOB,"
                  " q INTEGER NOT NULL DEFAULT 0, req BLOB NOT NULL) WITHOUT ROWID")
        c.execute("CREATE INDEX IF NOT EXISTS schedule_due ON schedule (p, q, next)")
        self.counters: Counter[str] = Counter()
        self.earliest = [NEVER] * frontier.partitions  # seconds; min next of unqueued rows
        self.queued = [0] * frontier.partitions
        self.rows = 0
        for p, n, q, first in c.execute("SELECT p, count(*), q, min(next) FROM schedule GROUP BY p, q"):
            self.rows += n
            if q:
                self.queued[p] = n
            else:
                self.earliest[p] = first / 1000.0
        self._next_tick = 0.0
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._policies: dict[tuple[Any, ...], Policy] = {}

    # -- acks ------------------------------------------------------------------------------------

    def outcomes_of(self, msg: dict[str, Any]) -> dict[int, Any]:
        """``ack.outcomes`` as {lease id: outcome map} (absent or malformed: {})."""
        pairs = msg.get("outcomes")
        if not isinstance(pairs, list):
            if pairs is not None:
                self.counters["revisit_bad_outcomes"] += 1
            return {}
        out = {}
        for pair in pairs:
            if isinstance(pair, list) and len(pair) == 2 and type(pair[0]) is int:
                out[pair[0]] = pair[1]
            else:
                self.counters["revisit_bad_outcomes"] += 1
        return out

    def acked(self, rows: list[tuple[int, int, bytes]], outcomes: dict[int, Any]) -> None:
        """Acked (row id, partition, wire request) triples: schedule, reschedule or retire."""
        if not outcomes and not self.rows:
            return  # policy none everywhere: today's path, nothing to do
        now = time.time()
        for rid, p, blob in rows:
            self._acked_one(p, blob, outcomes.get(rid), now)

    def acked_unknown(self, rid: int, outcome: Any) -> None:
        """An ack without a known lease (leased before a restart): its row, if still stored."""
        if outcome is None and not self.rows:
            return
        row = self.frontier.stored(rid)
        if row is not None:
            self._acked_one(row[0], row[1], outcome, time.time())

    def _acked_one(self, p: int, blob: bytes, wire: Any, now: float) -> None:
        req = msgpack.unpackb(blob, raw=False)
        f = req["f"]
        self.frontier.begin()
        old = self.conn.execute(f"SELECT {_COLUMNS} FROM schedule WHERE f=?", (f,)).fetchone()
        if wire is None:
            if old is not None and old[8]:  # a revisit acked without outcome: same interval again
                self._write(f, p, ScheduleRow(now + old[1], old[1], now, _s(old[3]), old[4], old[5], old[6],
                                              old[7]), req, old)
                self.counters["revisit_rescheduled"] += 1
            return
        try:
            outcome, policy = self._outcome(wire)
        except ValueError as exc:
            self.counters["revisit_bad_outcomes"] += 1
            logger.warning("Ignored an ack outcome: %s", exc)
            return
        if policy.kind == "none":
            new = None
        elif old is None:
            new = policy.first(outcome, now)
        else:
            new = policy.update(ScheduleRow(_s(old[0]), old[1], _s(old[2]), _s(old[3]), old[4], old[5], old[6],
                                            old[7]), outcome, now)
        if new is None:
            if old is not None:
                self._delete(f, p, old)
                self.counters["revisit_retired"] += 1
            return
        self._write(f, p, new, req, old)
        self.counters["revisit_scheduled" if old is None else "revisit_rescheduled"] += 1

    def _outcome(self, wire: Any) -> tuple[Outcome, Policy]:
        outcome, policy = outcome_from_wire(wire)
        key = tuple(wire["rp"])
        cached = self._policies.get(key)
        if cached is None:
            if len(self._policies) > 1000:
                self._policies.clear()
            cached = self._policies[key] = policy
        return outcome, cached

    def _write(self, f: bytes, p: int, row: ScheduleRow, req: dict[str, Any], old: Any) -> None:
        for key in REVISIT_META:
            req.get("meta", {}).pop(key, None)
        req.pop("df", None)
        if not req.get("meta"):
            req.pop("meta", None)
        self.conn.execute(
            "INSERT OR REPLACE INTO schedule (f, p, next, ivl, last_fetch, last_change, fails, etag,"
            " last_modified, hash, q, req) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
            (f, p, _ms(row.next_fetch), row.interval, _ms(row.last_fetch), _ms(row.last_change), row.fails,
             row.etag, row.last_modified, row.content_hash, self._pack(req)))
        if old is None:
            self.rows += 1
        elif old[8]:
            self.queued[p] -= 1
        self.earliest[p] = min(self.earliest[p], row.next_fetch)

    def _delete(self, f: bytes, p: int, old: Any) -> None:
        self.conn.execute("DELETE FROM schedule WHERE f=?", (f,))
        self.rows -= 1
        if old[8]:
            self.queued[p] -= 1

    # -- serving ---------------------------------------------------------------------------------

    def allowance(self, p: int) -> int:
        """Revisits partition ``p`` may still queue: its share of the rows waiting in it."""
        queued = self.queued[p]
        new = max(0, self.frontier.parts[p].count - queued)
        if new == 0 or self.share >= 1:
            cap = PROMOTE_MAX
        else:
            cap = min(PROMOTE_MAX, math.ceil(self.share / (1 - self.share) * new))
        return max(0, cap - queued)

    def tick(self, now: float | None = None) -> list[int]:
        """Queue the rows whose time has come; returns the partitions that got some."""
        mono = time.monotonic()
        if mono < self._next_tick or not self.rows:
            return []
        self._next_tick = mono + TICK_SECONDS
        if now is None:
            now = time.time()
        touched = []
        for p, first in enumerate(self.earliest):
            if first <= now and self._promote(p, now):
                touched.append(p)
        return touched

    def _promote(self, p: int, now: float) -> bool:
        room = self.allowance(p)
        if room <= 0:
            self.counters["revisit_deferred"] += 1
            return False
        c = self.conn
        due = c.execute("SELECT f, etag, last_modified, hash, req FROM schedule WHERE p=? AND q=0 AND next<=?"
                        " ORDER BY next LIMIT ?", (p, _ms(now), room)).fetchall()
        requests = []
        for f, etag, last_modified, body_hash, blob in due:
            req = msgpack.unpackb(blob, raw=False)
            meta = req.setdefault("meta", {})
            for key, value in ((REVISIT, 1), (REVISIT_ETAG, etag), (REVISIT_LAST_MODIFIED, last_modified),
                               (REVISIT_CONTENT_HASH, body_hash.hex() if body_hash else None)):
                if value is not None:
                    meta[key] = value
            requests.append(req)
        if requests:
            self.frontier.begin()
            c.executemany("UPDATE schedule SET q=1 WHERE f=?", [(row[0],) for row in due])
            self.frontier.add_revisits(requests)
            self.queued[p] += len(requests)
            self.counters["revisit_queued"] += len(requests)
        nxt = c.execute("SELECT min(next) FROM schedule WHERE p=? AND q=0", (p,)).fetchone()[0]
        self.earliest[p] = NEVER if nxt is None else nxt / 1000.0
        return bool(requests)

    # -- introspection ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The schedule's part of the dispatcher's "state"."""
        return {"rows": self.rows, "queued": sum(self.queued), "share": self.share,
                **{k.removeprefix("revisit_"): v for k, v in self.counters.items()}}

    def table(self) -> dict[bytes, tuple[Any, ...]]:
        """Every row as {fingerprint: (p, next ms, interval, fails, queued)} (tests, tools)."""
        return {f: rest for f, *rest in self.conn.execute("SELECT f, p, next, ivl, fails, q FROM schedule")}
