"""The exact seen-set of the frontier: every fingerprint ever accepted, in the frontier's SQLite file.

Three layers answer "seen before?", cheapest first; together they are exact:

- a bounded two-generation hot set of recent fingerprints: the log's, once merged, and those
  the buckets settled (most duplicates stop here);
- ``seen_log``: fingerprints not yet in the buckets, one row per push holding its new
  fingerprints end to end (sequential and cheap; a store written when each row held one
  fingerprint reads the same), kept in an exact in-memory set;
- ``seen_buckets``: every older fingerprint, by bucket (its first 12 bits, BUCKETS of them),
  each bucket a few rows of fingerprints end to end. When the log holds ``merge_rows``
  fingerprints it is cut by bucket (numpy) into one row per bucket, a few thousand sequential
  rows for many fingerprints: an index entry per fingerprint (measured ~4 us each on the
  project's machine, the whole budget of a new URL) is never written. A merge's rows are of
  level 0; a bucket's rows are then merged by level, FANOUT at a time, as a counter in base
  FANOUT carries (rows of levels below L become one row of level L when the bucket's count, the
  merges so far plus its class, the bucket's number mod CLASSES, is a multiple of FANOUT**L). A
  fingerprint is rewritten about log_FANOUT(merges) times in all, not once per FANOUT merges,
  and a bucket holds at most FANOUT rows per level; the class staggers the work (every merge
  compacts one class in FANOUT to level 1, one in FANOUT**2 to level 2...). The count is kept in
  ``meta``. A row's rowid is (class, merge, slot), so a class's rows lie together in the order
  written, and the rows a compaction replaces, those written since the class's last compaction
  to that level or above, are its class's tail: a few pages change, not most of the table
  (rows of a store written before this layout lie below every class and move when compacted).
  The work is even across merges up to level 2 (64 = 8**2 classes); from level 3 on, one class,
  1/64 of the set, compacts at a time (at 200k fingerprints a merge: ~32 MB every 8 merges past
  ~100M). More classes would spread that, but every merge appends to every class's tail.
  A lookup reads its bucket's rows and searches them (bytes.find, 20-byte aligned).
- A Bloom filter of the buckets' fingerprints in RAM (fixed size, ``filter_mib``): a fingerprint
  the filter does not hold is surely not in the buckets, so a new URL costs no lookup; one it
  may hold is looked up. Its false positives cost lookups, never a URL: dedup is exact whatever
  its fill. It is built from the buckets when the store opens (one scan) and extended at every
  merge.

Fingerprints are SHA-1 digests, uniform already: the filter's word and its k = 4 bits within it
are the fingerprint's five 32-bit words (masked), computed with numpy for a whole push at once.
A store whose fingerprints are in the ``seen`` index of earlier versions has them moved into
buckets when opened. Writes happen inside the frontier's open transaction (the caller's).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable, Set

import numpy as np

from crawlproj.wire.protocol import FINGERPRINT_BYTES

logger = logging.getLogger(__name__)

DEFAULT_HOT_SEEN = 1_000_000  # fingerprints in the in-memory hot set (~100 MB at most)
DEFAULT_MERGE_ROWS = 200_000  # seen_log fingerprints moved into the buckets at once (~20 MB)
DEFAULT_FILTER_MIB = 32  # Bloom filter of the buckets: ~2% false positives up to ~28M URLs
FILTER_FPS_PER_MIB = 875_000  # fingerprints a MiB of filter holds at ~2% false positives
FILTER_MIB_MAX = 4096  # 2**29 words of 64 bits: addressed by a 32-bit word
BUCKET_BITS = 12
BUCKETS = 1 << BUCKET_BITS
FANOUT = 8  # a bucket's rows of one level are merged into one of the next this many at a time
# Compaction classes (the module docstring). With rows scattered instead, a merge of 200k new
# fingerprints (4 MB) wrote 38 MB of WAL at 8M fingerprints, growing with the table.
CLASSES = 64
_MERGE_SHIFT = BUCKET_BITS + 1  # slot: a merge's level-0 row of bucket b is b, its compacted one BUCKETS + b
_CLASS_SHIFT = 44  # merges below 2**31; class regions start at 1 << 44 (earlier rowids lie below)
MERGES_KEY = "seen_merges"  # meta: merges so far (the compaction counter)
SQL_IN_CHUNK = 500  # values per "... IN (...)"
SCAN_CHUNK = 1000  # bucket rows read at a time while building the filter
_WORDS = FINGERPRINT_BYTES // 4  # k: 32-bit words per fingerprint, one filter bit each


def bucket_of(f: bytes) -> int:
    return (f[0] << 4) | (f[1] >> 4)


def holds(blob: bytes, f: bytes) -> bool:
    """Whether fingerprints end to end in ``blob`` include ``f`` (aligned matches only)."""
    i = blob.find(f)
    while i >= 0:
        if i % FINGERPRINT_BYTES == 0:
            return True
        i = blob.find(f, i + 1)
    return False


class SeenFilter:
    """A Bloom filter over fingerprints (no false negatives), blocked by 64-bit word: a
    fingerprint's k = 4 bits all lie in one word, so adding or testing it touches one word."""

    def __init__(self, mib: int) -> None:
        if not 1 <= mib <= FILTER_MIB_MAX:
            raise ValueError(f"seen filter size {mib} MiB outside 1..{FILTER_MIB_MAX}")
        nwords = mib << 17
        self.mib = mib
        self.words = np.zeros(nwords, dtype=np.uint64)
        self.mask = np.uint32(nwords - 1)
        self.added = 0

    def _positions(self, joined: bytes) -> tuple[np.ndarray, np.ndarray]:
        words = np.frombuffer(joined, dtype=np.uint32).reshape(-1, _WORDS)
        shifts = (words[:, 1:] & np.uint32(63)).astype(np.uint64)
        one = np.uint64(1)  # k = 4 columns spelt out: 3x faster than a reduce over axis 1
        bits = (one << shifts[:, 0]) | (one << shifts[:, 1]) | (one << shifts[:, 2]) | (one << shifts[:, 3])
        return words[:, 0] & self.mask, bits

    def add(self, joined: bytes) -> None:
        """Add fingerprints given end to end."""
        index, bits = self._positions(joined)
        words = self.words
        # One fancy-indexed OR (of repeated words only one OR lands), then the few bits lost
        # that way set again one by one: measured ~8x faster than np.bitwise_or.at for all.
        words[index] |= bits
        lost = (words[index] & bits) != bits
        if lost.any():
            np.bitwise_or.at(words, index[lost], bits[lost])
        self.added += len(joined) // FINGERPRINT_BYTES

    def may_hold(self, joined: bytes) -> np.ndarray:
        """For fingerprints given end to end: False where surely absent."""
        index, bits = self._positions(joined)
        return (self.words[index] & bits) == bits


class SeenSet:
    """The exact seen-set of one store; shares the frontier's connection and transactions."""

    def __init__(self, conn: sqlite3.Connection, count: int, hot_seen: int = DEFAULT_HOT_SEEN,
                 merge_rows: int = DEFAULT_MERGE_ROWS, filter_mib: int = DEFAULT_FILTER_MIB) -> None:
        self.conn = conn
        self.count = count  # fingerprints ever accepted (the caller persists it)
        self.merge_rows = max(1, merge_rows)
        self.merges = 0  # in this process
        found = conn.execute("SELECT value FROM meta WHERE key=?", (MERGES_KEY,)).fetchone()
        self._counter = int(found[0]) if found else 0  # merges in this store, ever
        self.timings: dict[str, float] = {}
        self._hot_half = max(1, hot_seen // 2)
        self._young: set[bytes] = set()
        self._old: set[bytes] = set()
        self.filter = SeenFilter(filter_mib)
        # seen_log's rows (merged by joining them: a set of small bytes joins 60x slower) and
        # their fingerprints, exactly.
        self._log_rows = [blob for (blob,) in conn.execute("SELECT f FROM seen_log")]
        self._log = {blob[i:i + FINGERPRINT_BYTES] for blob in self._log_rows
                     for i in range(0, len(blob), FINGERPRINT_BYTES)}
        self._build_filter()
        self._warned_full = False
        self._check_fill()

    @staticmethod
    def create(conn: sqlite3.Connection) -> None:
        """Create the tables, and move an earlier version's ``seen`` index into buckets (inside
        the caller's transaction)."""
        conn.execute("CREATE TABLE IF NOT EXISTS seen_log (f BLOB NOT NULL)")
        conn.execute("CREATE TABLE IF NOT EXISTS seen_buckets (b INTEGER NOT NULL, fps BLOB NOT NULL,"
                     " lvl INTEGER NOT NULL DEFAULT 0)")
        if "lvl" not in {row[1] for row in conn.execute("PRAGMA table_info(seen_buckets)")}:
            conn.execute("ALTER TABLE seen_buckets ADD COLUMN lvl INTEGER NOT NULL DEFAULT 0")
        conn.execute("DROP INDEX IF EXISTS seen_buckets_b")  # (b): earlier versions
        # (b, lvl): a compaction reads only the rows it merges, not a bucket's large old ones.
        conn.execute("CREATE INDEX IF NOT EXISTS seen_buckets_lvl ON seen_buckets (b, lvl)")
        old = conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='seen'").fetchone()
        if old:
            fps = [f for (f,) in conn.execute("SELECT f FROM seen")]
            if fps:
                _insert_buckets(conn, b"".join(fps), 0)  # before any merge
                logger.info("Moved %d fingerprints of the seen index into buckets", len(fps))
            conn.execute("DROP TABLE seen")

    def _build_filter(self) -> None:
        started = time.monotonic()
        cur = self.conn.execute("SELECT fps FROM seen_buckets")
        while rows := cur.fetchmany(SCAN_CHUNK):
            self.filter.add(b"".join([blob for (blob,) in rows]))
        if self.filter.added:
            logger.info("Seen filter built from %d fingerprints in %.2f s", self.filter.added,
                        time.monotonic() - started)

    # -- lookups ---------------------------------------------------------------------------------

    def unknown(self, fps: Set[bytes]) -> set[bytes]:
        """The fingerprints of ``fps`` (a set or a dict's keys) never seen before (exact)."""
        # Set algebra in C instead of a Python loop: most pushed links are duplicates.
        unknown = fps - self._young
        if not unknown:
            return unknown
        unknown -= self._old
        unknown -= self._log
        if not unknown:
            return unknown
        keys = list(unknown)
        maybe = self.filter.may_hold(b"".join(keys))
        if maybe.any():
            self._settle(unknown, [f for f, m in zip(keys, maybe.tolist()) if m])
        return unknown

    def _settle(self, unknown: set[bytes], keys: list[bytes]) -> None:
        """Look ``keys`` up in their buckets: drop those found from ``unknown``."""
        wanted: dict[int, list[bytes]] = {}
        for f in keys:
            wanted.setdefault(bucket_of(f), []).append(f)
        buckets = list(wanted)
        found = []
        for start in range(0, len(buckets), SQL_IN_CHUNK):
            chunk = buckets[start:start + SQL_IN_CHUNK]
            for b, blob in self.conn.execute(
                    f"SELECT b, fps FROM seen_buckets WHERE b IN ({','.join('?' * len(chunk))})", chunk):
                for f in wanted[b]:
                    if f in unknown and holds(blob, f):
                        unknown.discard(f)
                        found.append(f)
        self._remember(found)

    def known(self, f: bytes) -> bool:
        return not self.unknown({f})

    def hot_size(self) -> int:
        return len(self._young) + len(self._old) + len(self._log)

    def clear_hot(self) -> None:
        """Forget the hot set (it is a cache; benchmarks and tests use this)."""
        self._young = set()
        self._old = set()

    def stored(self) -> int:
        """Fingerprints in the buckets (tests, tools)."""
        return (self.conn.execute("SELECT sum(length(fps)) FROM seen_buckets").fetchone()[0] or 0) \
            // FINGERPRINT_BYTES

    # -- writes ----------------------------------------------------------------------------------

    def _remember(self, fps: Iterable[bytes]) -> None:
        young = self._young
        young.update(fps)
        if len(young) >= self._hot_half:  # the hot set's generations
            self._old = young
            self._young = set()

    def _absorb(self, merged: set[bytes]) -> None:
        """The merged log's fingerprints into the hot set, copying the smaller set if any."""
        young = self._young
        if len(young) + len(merged) >= self._hot_half:
            self._old, self._young = young, merged  # a new generation, nothing copied
        elif len(young) >= len(merged):
            young |= merged
        else:
            merged |= young
            self._young = merged

    def record(self, fps: list[bytes]) -> None:
        """Record fingerprints not seen before (inside the open transaction)."""
        row = b"".join(fps)
        self.conn.execute("INSERT INTO seen_log (f) VALUES (?)", (row,))
        self._log_rows.append(row)
        self._log.update(fps)  # hot while logged; the hot set's once merged
        self.count += len(fps)

    def merge_due(self) -> bool:
        return len(self._log) >= self.merge_rows

    def merge(self) -> None:
        """Move seen_log into the buckets (inside the open transaction)."""
        started = time.monotonic()
        joined = b"".join(self._log_rows)
        _insert_buckets(self.conn, joined, self._counter + 1)
        self.conn.execute("DELETE FROM seen_log")
        self.filter.add(joined)
        n = len(self._log)
        self._check_fill()
        self._absorb(self._log)
        self._log = set()
        self._log_rows = []
        self._counter += 1
        self._compact(self._counter)
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                          (MERGES_KEY, self._counter))
        took = time.monotonic() - started
        self.merges += 1
        self.timings["merge_seconds"] = self.timings.get("merge_seconds", 0.0) + took
        self.timings["merge_max_seconds"] = max(self.timings.get("merge_max_seconds", 0.0), took)
        logger.info("Merged %d new fingerprints into the seen buckets in %.3f s", n, took)

    def _check_fill(self) -> None:
        """Warn once when the filter holds more than it is sized for (dedup stays exact, but
        more and more new URLs cost a bucket lookup: measured 3-4x slower at 1.4x its size)."""
        flt = self.filter
        sized = flt.mib * FILTER_FPS_PER_MIB
        if self._warned_full or flt.added <= sized:
            return
        self._warned_full = True
        want = min(FILTER_MIB_MAX, 1 << max(0, (2 * flt.added // FILTER_FPS_PER_MIB)).bit_length())
        logger.warning("The seen filter (--seen-filter-mib %d) holds %d fingerprints, more than the "
                       "~%d it is sized for: new URLs cost more and more lookups; restart the "
                       "dispatcher with --seen-filter-mib %d (%d MiB of RAM)", flt.mib, flt.added,
                       sized, want, want)

    def _compact(self, counter: int) -> None:
        """Merge the rows of each bucket due (see the module docstring) into one of their level."""
        due: dict[int, int] = {}  # bucket -> level its lower rows become
        for b in range(-counter % FANOUT, BUCKETS, FANOUT):
            count, level = counter + b % CLASSES, 0
            while count % FANOUT == 0:
                count //= FANOUT
                level += 1
            due[b] = level
        c = self.conn
        rows: dict[int, list[tuple[int, bytes]]] = {}
        for b, level in due.items():
            for rowid, blob in c.execute("SELECT rowid, fps FROM seen_buckets WHERE b=? AND lvl<?",
                                         (b, level)):
                rows.setdefault(b, []).append((rowid, blob))
        # A single row moves too: its class's tail then holds its lowest levels, always. The
        # merged rows go in before the old ones go out: a failed insert leaves nothing deleted.
        c.executemany("INSERT INTO seen_buckets (rowid, b, fps, lvl) VALUES (?, ?, ?, ?)",
                      [(_rowid(b, counter, BUCKETS + b), b, b"".join(blob for _, blob in found), due[b])
                       for b, found in rows.items()])
        c.executemany("DELETE FROM seen_buckets WHERE rowid=?",
                      [(rowid,) for found in rows.values() for rowid, _ in found])


def _rowid(b: int, merge: int, slot: int) -> int:
    """Where a row of bucket ``b`` written by merge ``merge`` lies: with its class, in creation order."""
    assert merge < 1 << (_CLASS_SHIFT - _MERGE_SHIFT), merge
    return (b % CLASSES + 1) << _CLASS_SHIFT | merge << _MERGE_SHIFT | slot


def _insert_buckets(conn: sqlite3.Connection, joined: bytes, merge: int) -> None:
    """Fingerprints end to end, cut by bucket into one level-0 row per bucket."""
    fps = np.frombuffer(joined, dtype=np.uint8).reshape(-1, FINGERPRINT_BYTES)
    bucket = (fps[:, 0].astype(np.uint16) << 4) | (fps[:, 1] >> 4)
    order = np.argsort(bucket, kind="stable")
    data = fps[order].tobytes()
    ends = (np.cumsum(np.bincount(bucket, minlength=BUCKETS)) * FINGERPRINT_BYTES).tolist()
    starts = [0, *ends[:-1]]
    conn.executemany("INSERT INTO seen_buckets (rowid, b, fps) VALUES (?, ?, ?)",
                     [(_rowid(b, merge, b), b, data[s:e]) for b, (s, e) in enumerate(zip(starts, ends))
                      if e > s])
