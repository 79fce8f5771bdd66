"""The durable frontier and the exact seen-set, in one SQLite file (WAL).

(Over 400 lines on purpose: the in-memory read-ahead and the SQLite tables share one invariant,
"every unleased row with a key <= bound is in memory", which every method below keeps.)

Tables: ``seen`` (every fingerprint ever accepted, the exact dedup set), ``frontier`` (every
request not yet acked: row id, partition, negated priority, msgpack wire request) and ``meta``
(partition count, run epoch, seen count). A request stays in ``frontier`` until it is acked, so
leases can live in memory: after a crash every unacked row is simply served again.

RAM stays bounded whatever the frontier size: per partition only a read-ahead of at most
``readahead`` rows (the next ones in priority-then-FIFO order) and the rows given back by
released or expired leases are held in memory; the rest is read from the index when needed.
A bounded two-generation "hot" set of recent fingerprints answers most duplicate checks
without SQLite; a miss there is settled by the ``seen`` table, so dedup stays exact.

New fingerprints are not inserted into the ``seen`` index one by one: random 20-byte keys would
dirty a different index page per row, and every commit (at most ``commit_interval`` apart) would
rewrite thousands of pages (measured: commits grew to two thirds of the push path at one million
URLs). They are appended to ``seen_log``, one row per push holding its new fingerprints end to
end (sequential and cheap; a store written when each row held one fingerprint reads the same),
and kept in an exact in-memory set; when the log holds ``merge_rows`` fingerprints it is merged
into ``seen`` in key order, one sorted pass over the index for many rows.

Row ids are ``epoch << ID_EPOCH_SHIFT | sequence``: a run never reuses an id handed out by an
earlier run, even one whose last transaction was lost in a crash, so a late ack can never delete
another request's row.

Writes are batched: the caller commits with :meth:`Frontier.maybe_commit` (``commit_interval``
or ``COMMIT_ROWS``, whichever comes first). Adds, acks and commits are timed through the
injected :class:`~.instrument.Instrument` (``frontier_add``, ``frontier_ack``, ``frontier_commit``).
Everything arrives over one socket and is applied in arrival order inside one transaction
stream, so a node's push of a page's links (sent before that page's ack) is never lost while
the ack survives.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from bisect import insort
from collections import deque
from pathlib import Path
from typing import Any

import msgpack

from crawlproj import diskfull
from crawlproj.wire.protocol import FINGERPRINT_BYTES

from .errors import StoreError
from .instrument import NO_INSTRUMENT, Instrument

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STORE_FILENAME = "frontier.sqlite"
#: Row ids are epoch << ID_EPOCH_SHIFT | sequence: 2**40 rows per run, 2**23 runs.
ID_EPOCH_SHIFT = 40
DEFAULT_READAHEAD = 64  # rows per partition held in memory
DEFAULT_HOT_SEEN = 1_000_000  # fingerprints in the in-memory hot set (~100 MB at most)
DEFAULT_MERGE_ROWS = 200_000  # seen_log rows merged into the seen index at once (~20 MB in RAM)
DEFAULT_CACHE_KIB = 64 * 1024  # SQLite page cache
SQL_IN_CHUNK = 500  # fingerprints per "SELECT ... IN (...)"
DEFAULT_COMMIT_INTERVAL = 0.1  # seconds an open transaction may stay uncommitted
WAL_AUTOCHECKPOINT_PAGES = 10_000  # ~40 MB of WAL between automatic checkpoints
COMMIT_ROWS = 50_000  # rows written before a commit is due anyway
SQLITE_BUSY_TIMEOUT = 30.0
SLOW_COMMIT_SECONDS = 1.0  # a commit this slow is logged as a warning

# seen_log rows cut into their fingerprints (offsets 0, 20, ... of every row), sorted, into seen.
_MERGE_SQL = (
    "WITH RECURSIVE o(i) AS (SELECT 0 UNION ALL SELECT i + ? FROM o "
    "WHERE i + ? < (SELECT max(length(f)) FROM seen_log)) "
    "INSERT OR IGNORE INTO seen (f) SELECT substr(l.f, o.i + 1, ?) FROM seen_log AS l "
    "JOIN o ON o.i <= length(l.f) - ? ORDER BY 1")

# (npr, id, blob): npr is the negated priority, so ascending (npr, id) is "priority, then FIFO".
Row = tuple[int, int, bytes]


class _Partition:
    __slots__ = ("buf", "returned", "bound", "db_more", "count", "avail")

    def __init__(self) -> None:
        self.buf: deque[Row] = deque()  # next rows in (npr, id) order, all with key <= bound
        self.returned: deque[Row] = deque()  # released/expired leases: served first
        self.bound: tuple[int, int] | None = None  # unleased rows with key <= bound are in memory
        self.db_more = False  # rows with key > bound may exist in the table
        self.count = 0  # unacked rows (leased or not)
        self.avail = 0  # unacked rows not leased: what can be served


class Frontier:
    """Frontier + seen-set of one crawl. Not thread-safe: the dispatcher's loop owns it."""

    def __init__(self, store_dir: str | os.PathLike[str], partitions: int,
                 readahead: int = DEFAULT_READAHEAD, hot_seen: int = DEFAULT_HOT_SEEN,
                 cache_kib: int = DEFAULT_CACHE_KIB,
                 commit_interval: float = DEFAULT_COMMIT_INTERVAL,
                 merge_rows: int = DEFAULT_MERGE_ROWS,
                 instrument: Instrument = NO_INSTRUMENT) -> None:
        if partitions < 1:
            raise StoreError(f"partitions must be >= 1, got {partitions}")
        self.dir = Path(store_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.dir / STORE_FILENAME, isolation_level=None,
                                        timeout=SQLITE_BUSY_TIMEOUT, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store in {self.dir}: {exc}") from exc
        self.path = self.dir / STORE_FILENAME
        self.instrument = instrument
        self.readahead = max(1, readahead)
        self.commit_interval = commit_interval
        self.merge_rows = max(1, merge_rows)
        self._log: set[bytes] = set()  # exactly the fingerprints in seen_log
        self.merges = 0
        self._hot_half = max(1, hot_seen // 2)
        self._young: set[bytes] = set()
        self._old: set[bytes] = set()
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._in_txn = False
        self._txn_started = 0.0
        self._txn_rows = 0
        self._returned_ids: set[int] = set()
        self._leased: set[int] = set()
        self.timings: dict[str, float] = {"commit_seconds": 0.0, "commit_max_seconds": 0.0}
        self.commits = 0
        try:
            self._open(partitions, cache_kib)
        except sqlite3.Error as exc:
            self.conn.close()
            detail = diskfull.describe(self.path, exc) if diskfull.unwritable(exc) else f"{self.path}: {exc}"
            raise StoreError(f"cannot initialise the store {detail}") from exc

    # -- setup ---------------------------------------------------------------------------------

    def _open(self, partitions: int, cache_kib: int) -> None:
        c = self.conn
        c.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process kill (what -9 does); only power loss may lose
        # the last transactions, and those are re-derived (at-least-once).
        c.execute("PRAGMA synchronous=NORMAL")
        c.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
        c.execute("PRAGMA temp_store=MEMORY")
        # Random fingerprints dirty pages all over the seen index; checkpointing less often
        # copies each such page back once for many commits instead of once per commit.
        c.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        c.execute("BEGIN IMMEDIATE")
        c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)")
        c.execute("CREATE TABLE IF NOT EXISTS seen (f BLOB PRIMARY KEY) WITHOUT ROWID")
        c.execute("CREATE TABLE IF NOT EXISTS seen_log (f BLOB NOT NULL)")
        c.execute("CREATE TABLE IF NOT EXISTS frontier (id INTEGER PRIMARY KEY, p INTEGER NOT NULL,"
                  " npr INTEGER NOT NULL, req BLOB NOT NULL)")
        c.execute("CREATE INDEX IF NOT EXISTS frontier_order ON frontier (p, npr, id)")
        meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
        if not meta:
            meta = {"schema": SCHEMA_VERSION, "partitions": partitions, "epoch": 0, "seen": 0}
            c.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
        if meta.get("schema") != SCHEMA_VERSION:
            c.execute("ROLLBACK")
            raise StoreError(f"store {self.path} has schema {meta.get('schema')!r}, "
                             f"this dispatcher reads {SCHEMA_VERSION}")
        if meta["partitions"] != partitions:
            c.execute("ROLLBACK")
            raise StoreError(
                f"store {self.path} belongs to a crawl with {meta['partitions']} partitions; "
                f"--partitions {partitions} differs (P is fixed for the life of a crawl: use "
                f"--partitions {meta['partitions']} or a new --store)")
        self.partitions = partitions
        self.epoch = int(meta["epoch"]) + 1
        self.resumed = self.epoch > 1
        c.execute("UPDATE meta SET value=? WHERE key='epoch'", (self.epoch,))
        c.execute("COMMIT")
        self.seen_count = int(meta["seen"])
        self._log = {blob[i:i + FINGERPRINT_BYTES] for (blob,) in c.execute("SELECT f FROM seen_log")
                     for i in range(0, len(blob), FINGERPRINT_BYTES)}
        self._next_id = self.epoch << ID_EPOCH_SHIFT
        self.parts = [_Partition() for _ in range(partitions)]
        self.size = 0
        for p, n in c.execute("SELECT p, count(*) FROM frontier GROUP BY p"):
            st = self.parts[p]
            st.count = st.avail = n
            st.db_more = True
            self.size += n
        in_q = ",".join("?" * SQL_IN_CHUNK)
        self._in_sql = f"SELECT f FROM seen WHERE f IN ({in_q})"

    # -- dedup + insert ------------------------------------------------------------------------

    def _remember(self, fp: bytes) -> None:
        young = self._young
        young.add(fp)
        if len(young) >= self._hot_half:
            self._old = young
            self._young = set()

    def _begin(self) -> None:
        if not self._in_txn:
            self.conn.execute("BEGIN")
            self._in_txn = True
            self._txn_started = time.monotonic()

    def add(self, requests: list[dict[str, Any]]) -> tuple[int, list[int]]:
        """Store the requests not seen before; returns (how many were new, partitions touched).

        ``requests`` are validated wire requests (``f`` 20 bytes, ``p`` in range, ``pr`` int).
        """
        with self.instrument.timed("frontier_add"):
            return self._add(requests)

    def _add(self, requests: list[dict[str, Any]]) -> tuple[int, list[int]]:
        # Set algebra in C instead of a Python loop: most pushed links are duplicates.
        by_fp = {r["f"]: r for r in requests}
        unknown = by_fp.keys() - self._young
        unknown -= self._old
        unknown -= self._log
        if not unknown:
            return 0, []
        self._begin()
        execute = self.conn.execute
        keys = list(unknown)
        for start in range(0, len(keys), SQL_IN_CHUNK):
            chunk = keys[start:start + SQL_IN_CHUNK]
            if len(chunk) == SQL_IN_CHUNK:
                cur = execute(self._in_sql, chunk)
            else:
                cur = execute(f"SELECT f FROM seen WHERE f IN ({','.join('?' * len(chunk))})", chunk)
            for (f,) in cur:
                unknown.discard(f)
                self._remember(f)
        if not unknown:
            return 0, []
        # In push order, so that a partition stays first-in first-out.
        fresh = [r for f, r in by_fp.items() if f in unknown]
        self._log_new([r["f"] for r in fresh])
        return self._store(fresh)

    def _known(self, f: bytes) -> bool:
        if f in self._young or f in self._old or f in self._log:
            return True
        return self.conn.execute("SELECT 1 FROM seen WHERE f=?", (f,)).fetchone() is not None

    def _log_new(self, fps: list[bytes]) -> None:
        """Record fingerprints not seen before (inside the open transaction)."""
        self.conn.execute("INSERT INTO seen_log (f) VALUES (?)", (b"".join(fps),))
        self._log.update(fps)
        young = self._young
        young.update(fps)
        if len(young) >= self._hot_half:  # the hot set's generations, a push at a time
            self._old = young
            self._young = set()
        self.seen_count += len(fps)
        self._txn_rows += len(fps)

    def add_forced(self, requests: list[dict[str, Any]]) -> tuple[int, list[int]]:
        """Store requests even if seen before (Scrapy's ``dont_filter``); same return as add()."""
        with self.instrument.timed("frontier_add"):
            if not requests:
                return 0, []
            self._begin()
            fresh = list({r["f"]: None for r in requests if not self._known(r["f"])})
            if fresh:
                self._log_new(fresh)
            return self._store(requests)

    def _store(self, requests: list[dict[str, Any]]) -> tuple[int, list[int]]:
        pack = self._pack
        rows: list[tuple[int, int, int, bytes]] = []
        nid = self._next_id
        for r in requests:
            rows.append((nid, r["p"], -r.get("pr", 0), pack(r)))
            nid += 1
        self._next_id = nid
        self.conn.executemany("INSERT INTO frontier (id, p, npr, req) VALUES (?, ?, ?, ?)", rows)
        n = len(rows)
        self.size += n
        self._txn_rows += n
        touched: list[int] = []
        parts = self.parts
        limit = self.readahead
        for nid, p, npr, blob in rows:
            st = parts[p]
            st.count += 1
            st.avail += 1
            if st.avail == 1:
                touched.append(p)
            key = (npr, nid)
            bound = st.bound
            if bound is not None and key <= bound:
                insort(st.buf, (npr, nid, blob))
                if len(st.buf) > limit:
                    st.buf.pop()  # stays in the table, after the new bound
                    st.bound = st.buf[-1][:2]
                    st.db_more = True
            elif not st.db_more and len(st.buf) < limit:
                st.buf.append((npr, nid, blob))
                st.bound = key
            else:
                st.db_more = True
        return n, touched

    # -- revisits (crawlproj.dispatcher.revisits) -------------------------------------------------

    def begin(self) -> None:
        """Open the write transaction if none is: the revisit schedule writes in the same stream."""
        self._begin()

    def add_revisits(self, requests: list[dict[str, Any]]) -> tuple[int, list[int]]:
        """Store requests due again, without asking the seen-set (their URLs are in it)."""
        with self.instrument.timed("frontier_add"):
            if not requests:
                return 0, []
            self._begin()
            return self._store(requests)

    # -- serving -------------------------------------------------------------------------------

    def available(self, p: int) -> int:
        return self.parts[p].avail

    def take(self, p: int) -> Row | None:
        """The next request of partition ``p`` to lease (given-back ones first), or None."""
        st = self.parts[p]
        if st.avail <= 0:
            return None
        if st.returned:
            row = st.returned.popleft()
            self._returned_ids.discard(row[1])
        else:
            if not st.buf:
                self._refill(p, st)
                if not st.buf:
                    logger.error("partition %d counts %d available rows but has none; resyncing",
                                 p, st.avail)
                    st.avail = 0
                    return None
            row = st.buf.popleft()
        st.avail -= 1
        self._leased.add(row[1])
        return row

    def _refill(self, p: int, st: _Partition) -> None:
        started = time.monotonic()
        while not st.buf and st.db_more:
            if st.bound is None:
                cur = self.conn.execute("SELECT npr, id, req FROM frontier WHERE p=? "
                                        "ORDER BY npr, id LIMIT ?", (p, self.readahead))
            else:
                cur = self.conn.execute("SELECT npr, id, req FROM frontier WHERE p=? "
                                        "AND (npr, id) > (?, ?) ORDER BY npr, id LIMIT ?",
                                        (p, st.bound[0], st.bound[1], self.readahead))
            rows = cur.fetchall()
            if len(rows) < self.readahead:
                st.db_more = False
            for npr, rid, blob in rows:
                st.bound = (npr, rid)
                # The bound moves back when a high-priority insert overflows the read-ahead,
                # so rows already leased or given back can come round again: skip them.
                if rid in self._leased or rid in self._returned_ids:
                    continue
                st.buf.append((npr, rid, blob))
        self.timings["refill_seconds"] = self.timings.get("refill_seconds", 0.0) + (
            time.monotonic() - started)

    def give_back(self, p: int, row: Row) -> None:
        """A released or expired lease: the request goes to the front of its partition."""
        st = self.parts[p]
        self._leased.discard(row[1])
        st.returned.append(row)
        self._returned_ids.add(row[1])
        st.avail += 1

    # -- acks ----------------------------------------------------------------------------------

    def ack_leased(self, acked: list[tuple[int, int]]) -> None:
        """Delete acked rows whose lease is known: (row id, partition) pairs."""
        with self.instrument.timed("frontier_ack"):
            if not acked:
                return
            self._begin()
            self.conn.executemany("DELETE FROM frontier WHERE id=?", [(rid,) for rid, _ in acked])
            parts = self.parts
            leased = self._leased
            for rid, p in acked:
                parts[p].count -= 1
                leased.discard(rid)
            self.size -= len(acked)
            self._txn_rows += len(acked)

    def ack_unknown(self, rid: int) -> bool:
        """Delete a row acked without a known lease (e.g. leased before a restart)."""
        self._begin()
        row = self.conn.execute("DELETE FROM frontier WHERE id=? RETURNING p", (rid,)).fetchone()
        self._txn_rows += 1
        if row is None:
            return False
        st = self.parts[row[0]]
        st.count -= 1
        st.avail -= 1
        self.size -= 1
        for q in (st.buf, st.returned):
            for item in q:
                if item[1] == rid:
                    q.remove(item)
                    self._returned_ids.discard(rid)
                    return True
        return True

    # -- transactions --------------------------------------------------------------------------

    def maybe_commit(self, now: float | None = None) -> bool:
        if not self._in_txn:
            return False
        if now is None:
            now = time.monotonic()
        if self._txn_rows >= COMMIT_ROWS or now - self._txn_started >= self.commit_interval:
            self.commit()
            return True
        return False

    def commit_due_in(self, now: float) -> float | None:
        """Seconds until the open transaction must be committed (None: nothing open)."""
        if not self._in_txn:
            return None
        return max(0.0, self._txn_started + self.commit_interval - now)

    def commit(self) -> None:
        if not self._in_txn:
            return
        with self.instrument.timed("frontier_commit"):
            self._commit()

    def _commit(self) -> None:
        if len(self._log) >= self.merge_rows:
            self._merge_log()
        started = time.monotonic()
        self.conn.execute("UPDATE meta SET value=? WHERE key='seen'", (self.seen_count,))
        self.conn.execute("COMMIT")
        self._in_txn = False
        rows, self._txn_rows = self._txn_rows, 0
        took = time.monotonic() - started
        if took >= SLOW_COMMIT_SECONDS:
            logger.warning("Slow commit of the frontier store: %.3f s for %d rows", took, rows)
        self.commits += 1
        self.timings["commit_seconds"] += took
        self.timings["commit_max_seconds"] = max(self.timings["commit_max_seconds"], took)

    def _merge_log(self) -> None:
        """Move seen_log into the seen index in key order (inside the open transaction)."""
        started = time.monotonic()
        self.conn.execute(_MERGE_SQL, (FINGERPRINT_BYTES,) * 4)
        self.conn.execute("DELETE FROM seen_log")
        n = len(self._log)
        self._log = set()
        took = time.monotonic() - started
        self.merges += 1
        self.timings["merge_seconds"] = self.timings.get("merge_seconds", 0.0) + took
        self.timings["merge_max_seconds"] = max(self.timings.get("merge_max_seconds", 0.0), took)
        logger.info("Merged %d new fingerprints into the seen index in %.3f s", n, took)

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self.conn.close()

    def abandon(self) -> None:
        """Roll the open transaction back and close (the store could not be written)."""
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite rolled it back itself
        self._in_txn = False
        try:
            self.conn.close()
        except sqlite3.Error as exc:
            logger.warning("Closing the store %s after a failed write: %s", self.path, exc)

    # -- introspection ---------------------------------------------------------------------------

    def memory_rows(self) -> int:
        """Rows held in memory (read-ahead + given back): bounded by P * readahead + leases."""
        return sum(len(st.buf) + len(st.returned) for st in self.parts)

    def hot_seen_size(self) -> int:
        return len(self._young) + len(self._old) + len(self._log)

    def available_total(self) -> int:
        """Rows that can be served now (unacked, not leased), over every partition."""
        return sum(st.avail for st in self.parts)

    def snapshot(self) -> dict[str, Any]:
        """The frontier's part of the dispatcher's "state" (sizes, store path, commit timings)."""
        return {
            "frontier": self.size, "available": self.available_total(),
            "memory_rows": self.memory_rows(), "seen": self.seen_count,
            "hot_seen": self.hot_seen_size(),
            "store": {"path": str(self.path), "commits": self.commits, **self.timings},
        }
