"""The durable frontier and the exact seen-set, in one SQLite file (WAL).

(Over 400 lines on purpose: the in-memory read-ahead, the blocks not written yet and the
SQLite rows share one invariant, "every unleased, unacked request with a key <= bound is in
memory", which every method below keeps.)

The file and its tables are :mod:`.store`'s: every request not yet acked, in rows of up to
:data:`~.rows.ROW_MAX` requests of one partition and priority (:mod:`.rows`), the log of partial
acks, and the exact seen-set (:mod:`.seen`). A request stays stored until it is acked, so leases
can live in memory: after a crash every unacked request is simply served again.

A request's key is (negated priority, id): ascending keys are "priority, then FIFO". Ids are
``epoch << ID_EPOCH_SHIFT | sequence``: a run never reuses an id handed out by an earlier run,
even one whose last transaction was lost in a crash, so a late ack can never ack another
request. A new request gets its id at once, in a block of ROW_MAX ids its partition and
priority reserve (so it can be leased at once); the commit writes each block as one row, so a
push of a thousand new URLs costs tens of rows, not a thousand.

RAM stays bounded whatever the frontier size: per partition a read-ahead of about ``readahead``
requests (whole rows; the next ones in key order), the requests given back by released or
expired leases, and the blocks not written yet (at most ``COMMIT_ROWS`` requests in all: a commit
is due then); the rest is read from the index when needed. The seen-set's bounds are in :mod:`.seen`.

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
from itertools import repeat
from pathlib import Path
from typing import Any

from crawlproj import diskfull

from . import store
from .errors import StoreError
from .instrument import NO_INSTRUMENT, Instrument
from .rows import ROW_MAX, Packed, RowState, decode_acks, encode_acks, packed, split
from .seen import DEFAULT_FILTER_MIB, DEFAULT_HOT_SEEN, DEFAULT_MERGE_ROWS, SQL_IN_CHUNK, SeenSet
from .store import DEFAULT_CACHE_KIB, STORE_FILENAME

logger = logging.getLogger(__name__)

#: Ids are epoch << ID_EPOCH_SHIFT | sequence: 2**40 requests per run, 2**23 runs.
ID_EPOCH_SHIFT = 40
DEFAULT_READAHEAD = 64  # requests per partition held in memory (whole rows: up to ROW_MAX more)
DEFAULT_COMMIT_INTERVAL = 0.1  # seconds an open transaction may stay uncommitted
COMMIT_ROWS = 50_000  # requests written before a commit is due anyway
ACK_LOG_MIN = 100_000  # acks logged before the ack log is rewritten from memory
SLOW_COMMIT_SECONDS = 1.0  # a commit this slow is logged as a warning

# (npr, id, blob, row id): npr is the negated priority; blob one msgpack wire request.
Row = tuple[int, int, bytes, int]


class _Partition:
    __slots__ = ("buf", "returned", "bound", "db_more", "count", "avail", "blocks", "tail")

    def __init__(self) -> None:
        self.buf: deque[Row] = deque()  # next requests in key order, all with key <= bound
        self.returned: deque[Row] = deque()  # released/expired leases: served first
        self.bound: tuple[int, int] | None = None  # unleased, unacked keys <= bound are in memory
        self.db_more = False  # requests with key > bound may exist (stored, or in open blocks)
        self.count = 0  # unacked requests (leased or not, written or not)
        self.avail = 0  # unacked requests not leased: what can be served
        # Requests added since the last commit, not written yet: blocks of ROW_MAX reserved ids,
        # (npr, first id, msgpack requests) in the order opened; tail: npr -> the block filling.
        self.blocks: list[tuple[int, int, list[bytes]]] = []
        self.tail: dict[int, tuple[int, int, list[bytes]]] = {}


class Frontier:
    """Frontier + seen-set of one crawl. Not thread-safe: the dispatcher's loop owns it."""

    def __init__(self, store_dir: str | os.PathLike[str], partitions: int,
                 readahead: int = DEFAULT_READAHEAD, hot_seen: int = DEFAULT_HOT_SEEN,
                 cache_kib: int = DEFAULT_CACHE_KIB,
                 commit_interval: float = DEFAULT_COMMIT_INTERVAL,
                 merge_rows: int = DEFAULT_MERGE_ROWS, filter_mib: int = DEFAULT_FILTER_MIB,
                 instrument: Instrument = NO_INSTRUMENT) -> None:
        if partitions < 1:
            raise StoreError(f"partitions must be >= 1, got {partitions}")
        self.dir = Path(store_dir)
        self.conn = store.connect(self.dir)
        self.path = self.dir / STORE_FILENAME
        self.instrument = instrument
        self.readahead = max(1, readahead)
        self.commit_interval = commit_interval
        self._in_txn = False
        self._txn_started = 0.0
        self._txn_rows = 0
        self._returned_ids: set[int] = set()
        self._leased: dict[int, int] = {}  # leased request id -> its row's id
        self._rows: dict[int, RowState] = {}  # rows with requests in memory or acked
        self._unwritten: set[int] = set()  # partitions with pending requests
        self._acks_logged = 0
        self._ack_log_limit = ACK_LOG_MIN
        self.timings: dict[str, float] = {"commit_seconds": 0.0, "commit_max_seconds": 0.0}
        self.commits = 0
        try:
            self._open_store(partitions, cache_kib, hot_seen, merge_rows, filter_mib)
        except StoreError:
            self.conn.close()
            raise
        except sqlite3.Error as exc:
            self.conn.close()
            detail = diskfull.describe(self.path, exc) if diskfull.unwritable(exc) else f"{self.path}: {exc}"
            raise StoreError(f"cannot initialise the store {detail}") from exc

    # -- setup ---------------------------------------------------------------------------------

    def _open_store(self, partitions: int, cache_kib: int, hot_seen: int, merge_rows: int,
                    filter_mib: int) -> None:
        c = self.conn
        meta = store.prepare(c, self.path, partitions, cache_kib)
        self.partitions = partitions
        self.epoch = int(meta["epoch"]) + 1
        self.resumed = self.epoch > 1
        c.execute("UPDATE meta SET value=? WHERE key='epoch'", (self.epoch,))
        self.parts = [_Partition() for _ in range(partitions)]
        self.size = 0
        for p, n in c.execute("SELECT p, sum(n) FROM frontier_rows GROUP BY p"):
            st = self.parts[p]
            st.count = st.avail = n
            st.db_more = True
            self.size += n
        self._load_acks()
        c.execute("COMMIT")
        self.seen = SeenSet(c, int(meta["seen"]), hot_seen=hot_seen, merge_rows=merge_rows,
                            filter_mib=filter_mib)
        self._next_id = self.epoch << ID_EPOCH_SHIFT

    def _load_acks(self) -> None:
        """Partial acks back into memory, the log rewritten with only what is still live."""
        c = self.conn
        masks: dict[int, int] = {}
        for (blob,) in c.execute("SELECT x FROM acked"):
            for rid, off in decode_acks(blob):
                masks[rid] = masks.get(rid, 0) | (1 << off)
        rids = list(masks)
        for start in range(0, len(rids), SQL_IN_CHUNK):
            chunk = rids[start:start + SQL_IN_CHUNK]
            for rid, p, n in c.execute(f"SELECT id, p, n FROM frontier_rows WHERE id IN "
                                       f"({','.join('?' * len(chunk))})", chunk):
                state = self._rows[rid] = RowState(p, n)
                state.acked = masks[rid]
                done = state.acked.bit_count()
                state.left -= done
                st = self.parts[p]
                st.count -= done
                st.avail -= done
                self.size -= done
        c.execute("DELETE FROM acked")
        self._acks_logged = 0
        self._log_live_acks()

    def _log_live_acks(self) -> None:
        pairs = [v for rid, state in self._rows.items() if state.acked
                 for off in range(state.n) if state.acked >> off & 1 for v in (rid, off)]
        if pairs:
            self.conn.execute("INSERT INTO acked (x) VALUES (?)", (encode_acks(pairs),))
        self._acks_logged = len(pairs) // 2
        self._ack_log_limit = max(ACK_LOG_MIN, 4 * self._acks_logged)

    # -- seen-set (crawlproj.dispatcher.seen) -----------------------------------------------------

    @property
    def seen_count(self) -> int:
        return self.seen.count

    @property
    def merges(self) -> int:
        return self.seen.merges

    # -- dedup + insert ------------------------------------------------------------------------

    def _begin(self) -> None:
        if not self._in_txn:
            self.conn.execute("BEGIN")
            self._in_txn = True
            self._txn_started = time.monotonic()

    def add(self, requests: list[dict[str, Any]]) -> tuple[int, list[int]]:
        """Store the wire requests (maps: seeds, tests) not seen before; as :meth:`add_packed`."""
        return self.add_packed(packed(requests))

    def add_packed(self, requests: Packed) -> tuple[int, list[int]]:
        """Store the requests not seen before; returns (how many were new, partitions touched).

        ``requests`` are checked already (fingerprints of 20 bytes, partitions in range).
        """
        with self.instrument.timed("frontier_add"):
            return self._add(requests)

    def _add(self, requests: Packed) -> tuple[int, list[int]]:
        fps = requests.fps
        by_fp = dict(zip(fps, range(len(fps))))  # the last of equal fingerprints, in first order
        unknown = self.seen.unknown(by_fp.keys())
        if not unknown:
            return 0, []
        self._begin()
        # In push order, so that a partition stays first-in first-out.
        if len(unknown) == len(fps):
            self.seen.record(fps)
        else:
            keep = [i for f, i in by_fp.items() if f in unknown]
            self.seen.record([fps[i] for i in keep])
            requests = requests.take(keep)
        return self._store(requests)

    def add_forced(self, requests: Packed) -> tuple[int, list[int]]:
        """Store requests even if seen before (Scrapy's ``dont_filter``); as :meth:`add_packed`."""
        with self.instrument.timed("frontier_add"):
            if not requests.fps:
                return 0, []
            self._begin()
            known = self.seen.known
            fresh = list({f: None for f in requests.fps if not known(f)})
            if fresh:
                self.seen.record(fresh)
            return self._store(requests)

    def _store(self, requests: Packed) -> tuple[int, list[int]]:
        """Give requests their ids in their partition's open blocks (written at the commit)."""
        parts, place, open_block = self.parts, self._place, self._open_block
        ps, nprs = requests.parts, requests.nprs
        touched: list[int] = []
        for blob, p, npr in zip(requests.blobs, ps, nprs or repeat(0)):
            st = parts[p]
            block = st.tail.get(npr)
            if block is None or len(reqs := block[2]) >= ROW_MAX:
                block = open_block(p, st, npr)
                reqs = block[2]
            # In memory now if it fits the read-ahead, or if its priority puts it before the bound.
            if not st.db_more or (st.bound is not None and npr < st.bound[0]):
                place(st, (npr, block[1] + len(reqs), blob, block[1]))
            reqs.append(blob)
            if not st.avail:
                touched.append(p)
            st.avail += 1
            st.count += 1
        n = len(ps)
        self.size += n
        self._txn_rows += n
        return n, touched

    def _open_block(self, p: int, st: _Partition, npr: int) -> tuple[int, int, list[bytes]]:
        block: tuple[int, int, list[bytes]] = (npr, self._next_id, [])
        self._next_id += ROW_MAX  # ids are reserved: a row's ids are consecutive, rows apart
        st.blocks.append(block)
        st.tail[npr] = block
        state = self._rows[block[1]] = RowState(p, 0)
        state.open = True
        self._unwritten.add(p)
        return block

    def _place(self, st: _Partition, entry: Row) -> None:
        """A new request into the read-ahead if the bound says so (else it waits beyond it)."""
        bound, buf = st.bound, st.buf
        if bound is None or entry[:2] > bound:
            if st.db_more or len(buf) >= self.readahead:
                st.db_more = True
                return
            buf.append(entry)
            st.bound = entry[:2]
            self._rows[entry[3]].loaded = True
            return
        self._rows[entry[3]].loaded = True
        insort(buf, entry)  # a higher priority than the bound's
        if len(buf) > self.readahead:
            buf.pop()  # waits beyond the new bound
            st.bound = buf[-1][:2]
            st.db_more = True

    def _write_all(self) -> None:
        """Write every open block as a row (one not acked yet, that is)."""
        parts, opened, join = self.parts, self._rows, b"".join
        rows = []
        for p in sorted(self._unwritten):
            st = parts[p]
            for npr, rid, reqs in st.blocks:
                state = opened[rid]
                state.open = False
                state.n = n = len(reqs)
                state.left = n - state.acked.bit_count()
                if state.left:
                    rows.append((rid, p, npr, n, join(reqs)))
                if not state.left or not (state.acked or state.loaded):
                    del opened[rid]  # done, or nothing of it in memory: read again when needed
            st.blocks = []
            st.tail = {}
        self._unwritten.clear()
        if rows:
            self.conn.executemany("INSERT INTO frontier_rows (id, p, npr, n, reqs) VALUES (?, ?, ?, ?, ?)",
                                  rows)

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
            return self._store(packed(requests))

    def stored(self, rid: int) -> tuple[int, bytes] | None:
        """(partition, wire request) of the unacked stored request ``rid``, or None."""
        found = self._find(rid)
        if found is None:
            return None
        row, p, n, blob = found
        return p, split(blob, n)[rid - row]

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
            if not st.buf and st.db_more:
                self._refill(p, st)
            if not st.buf:
                logger.error("partition %d counts %d available requests but has none; resyncing",
                             p, st.avail)
                st.avail = 0
                return None
            row = st.buf.popleft()
        st.avail -= 1
        self._leased[row[1]] = row[3]
        return row

    def _refill(self, p: int, st: _Partition) -> None:
        """The next requests beyond the bound, from the stored rows and the open blocks."""
        started = time.monotonic()
        leased, returned, opened = self._leased, self._returned_ids, self._rows
        limit = max(self.readahead, ROW_MAX) + 1  # rows are ROW_MAX ids apart: one may hold the bound
        while not st.buf and st.db_more:
            bound = st.bound
            if bound is None:
                cur = self.conn.execute("SELECT id, npr, n, reqs FROM frontier_rows WHERE p=? "
                                        "ORDER BY npr, id LIMIT ?", (p, limit))
            else:  # from the row that may hold the bound on
                cur = self.conn.execute("SELECT id, npr, n, reqs FROM frontier_rows WHERE p=? "
                                        "AND (npr, id) > (?, ?) ORDER BY npr, id LIMIT ?",
                                        (p, bound[0], bound[1] - ROW_MAX, limit))
            entries: list[Row] = []
            got, last = 0, bound
            for rid, npr, n, blob in cur:
                got += 1
                state = opened.get(rid)
                if state is None:
                    state = opened[rid] = RowState(p, n)
                state.loaded = True
                acked = state.acked
                for i, part in enumerate(split(blob, n)):
                    key = (npr, rid + i)
                    if bound is not None and key <= bound:
                        continue
                    last = key
                    # The bound moves back when a high-priority insert overflows the read-ahead,
                    # so requests already leased or given back can come round again: skip them.
                    if not (acked >> i & 1 or rid + i in leased or rid + i in returned):
                        entries.append((npr, rid + i, part, rid))
                if len(entries) >= self.readahead:
                    break
            else:
                if got < limit:
                    last = None  # every stored request beyond the bound is read
            # The open blocks' requests beyond the bound, up to what the stored rows covered.
            for npr, rid, reqs in st.blocks:
                state = opened[rid]
                acked = state.acked
                for i, r in enumerate(reqs):
                    key = (npr, rid + i)
                    if (bound is not None and key <= bound) or (last is not None and key > last):
                        continue
                    if not (acked >> i & 1 or rid + i in leased or rid + i in returned):
                        entries.append((npr, rid + i, r, rid))
                        state.loaded = True
            entries.sort()
            st.buf.extend(entries)
            if last is None:  # everything beyond the old bound is in memory now
                st.db_more = False
                if entries:
                    st.bound = entries[-1][:2]
            else:
                st.bound = last
        self.timings["refill_seconds"] = self.timings.get("refill_seconds", 0.0) + (
            time.monotonic() - started)

    def give_back(self, p: int, row: Row) -> None:
        """A released or expired lease: the request goes to the front of its partition."""
        rid = row[1]
        self._leased.pop(rid, None)
        state = self._rows.get(row[3])
        if state is None:  # not expected (a leased request's row keeps its state): ask the store
            found = self._find(rid)
            if found is None:
                return  # acked meanwhile
            state = self._rows[row[3]] = RowState(found[1], found[2])
            state.loaded = True
        if state.acked >> (rid - row[3]) & 1:
            return  # acked meanwhile (a late ack of an earlier lease of it)
        st = self.parts[p]
        st.returned.append(row)
        self._returned_ids.add(rid)
        st.avail += 1

    # -- acks ----------------------------------------------------------------------------------

    def ack_leased(self, acked: list[tuple[int, int]]) -> None:
        """Ack requests whose lease is known: (request id, partition) pairs."""
        with self.instrument.timed("frontier_ack"):
            if not acked:
                return
            self._begin()
            leased, opened = self._leased, self._rows
            logged: list[tuple[int, int]] = []
            for rid, _ in acked:
                row = leased.pop(rid, None)
                state = opened.get(row) if row is not None else None
                if state is None:  # not leased here (or its row's state is gone): find it stored
                    if row is not None:
                        leased[rid] = row  # still leased: _ack_unknown ends the lease
                    row = self._ack_unknown(rid)
                    if row is not None:
                        logged.append((row, rid))
                elif self._mark(row, state, rid):
                    logged.append((row, rid))
            self._log_acks(logged)
            self._txn_rows += len(acked)

    def ack_unknown(self, rid: int) -> bool:
        """Ack a request without a known lease (e.g. leased before a restart)."""
        self._begin()
        self._txn_rows += 1
        found = self._find(rid)
        if found is None:
            return False
        row = self._ack_unknown(rid, found)
        if row is not None:
            self._log_acks([(row, rid)])
        return True

    def _ack_unknown(self, rid: int, found: tuple[int, int, int, bytes] | None = None) -> int | None:
        """Ack ``rid`` found in the store; its row if that lives on (the ack must be logged)."""
        if found is None:
            found = self._find(rid)
            if found is None:
                return None
        row, p, n, _ = found
        state = self._rows.get(row)
        if state is None:
            state = self._rows[row] = RowState(p, n)
        st = self.parts[p]
        if self._leased.pop(rid, None) is None:  # else leased again: that lease ends with it
            st.avail -= 1
            if rid in self._returned_ids:
                self._returned_ids.discard(rid)
                st.returned = deque(item for item in st.returned if item[1] != rid)
            else:
                st.buf = deque(item for item in st.buf if item[1] != rid)
        return row if self._mark(row, state, rid) else None

    def _mark(self, row: int, state: RowState, rid: int) -> bool:
        """Ack ``rid`` of ``row``; True if the row lives on (the ack must be logged)."""
        bit = 1 << (rid - row)
        if state.acked & bit:
            return False
        state.acked |= bit
        state.left -= 1
        self.parts[state.p].count -= 1
        self.size -= 1
        if state.left or state.open:  # an open block's is settled when it is written
            return True
        del self._rows[row]
        self.conn.execute("DELETE FROM frontier_rows WHERE id=?", (row,))
        return False

    def _log_acks(self, acks: list[tuple[int, int]]) -> None:
        """Log acks of rows that live on (a row deleted meanwhile needs none)."""
        opened = self._rows
        pairs = [v for row, rid in acks if row in opened for v in (row, rid - row)]
        if pairs:
            self.conn.execute("INSERT INTO acked (x) VALUES (?)", (encode_acks(pairs),))
            self._acks_logged += len(pairs) // 2

    def _find(self, rid: int) -> tuple[int, int, int, bytes] | None:
        """(row id, partition, n, requests) of the stored row holding unacked ``rid``, or None."""
        found = self.conn.execute("SELECT id, p, n, reqs FROM frontier_rows WHERE id <= ? AND id > ? "
                                  "ORDER BY id DESC LIMIT 1", (rid, rid - ROW_MAX)).fetchone()
        if found is None or rid >= found[0] + found[2]:
            return None
        state = self._rows.get(found[0])
        if state is not None and state.acked >> (rid - found[0]) & 1:
            return None
        return found

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
        started = time.monotonic()
        self._write_all()
        if self.seen.merge_due():
            self.seen.merge()
        if self._acks_logged > self._ack_log_limit:
            self.conn.execute("DELETE FROM acked")
            self._log_live_acks()
        self.conn.execute("UPDATE meta SET value=? WHERE key='seen'", (self.seen.count,))
        self.conn.execute("COMMIT")
        self._in_txn = False
        rows, self._txn_rows = self._txn_rows, 0
        took = time.monotonic() - started
        if took >= SLOW_COMMIT_SECONDS:
            logger.warning("Slow commit of the frontier store: %.3f s for %d rows", took, rows)
        self.commits += 1
        self.timings["commit_seconds"] += took
        self.timings["commit_max_seconds"] = max(self.timings["commit_max_seconds"], took)

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
        """Requests held in memory: read-ahead + given back + not yet written (all bounded)."""
        return sum(len(st.buf) + len(st.returned) for st in self.parts) + self.pending_rows()

    def pending_rows(self) -> int:
        """Requests not written yet (at most COMMIT_ROWS: a commit writes them)."""
        return sum(len(reqs) for p in self._unwritten for _, _, reqs in self.parts[p].blocks)

    def hot_seen_size(self) -> int:
        return self.seen.hot_size()

    def available_total(self) -> int:
        """Requests that can be served now (unacked, not leased), over every partition."""
        return sum(st.avail for st in self.parts)

    def snapshot(self) -> dict[str, Any]:
        """The frontier's part of the dispatcher's "state" (sizes, store path, commit timings)."""
        return {
            "frontier": self.size, "available": self.available_total(),
            "memory_rows": self.memory_rows(), "seen": self.seen.count,
            "hot_seen": self.hot_seen_size(),
            "store": {"path": str(self.path), "commits": self.commits, "open_rows": len(self._rows),
                      **self.timings, **self.seen.timings},
        }
