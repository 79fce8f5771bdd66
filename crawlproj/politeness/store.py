"""The node's politeness state in one SQLite file: robots.txt rows and per-key fetch times.

Reads are primary-key lookups on the calling (reactor) thread, timed; they sit behind the
in-memory LRUs of :class:`crawlproj.politeness.core.Politeness`, so they happen once per authority or
key per process. Writes never touch the reactor thread: ``put_*`` only records the row in a
pending map (the newest value per primary key wins), and a writer thread flushes that map every
``flush_interval`` seconds, or sooner when it grows, in one transaction on its own connection.
WAL lets the reader and the writer work at the same time.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from crawlproj import diskfull
from crawlproj.wire.urls import partition_of, stable_hash64

from .robots import RobotsRow
from .timing import LatencySampler

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
#: Rows pending before the writer is woken early.
FLUSH_BATCH_ROWS = 2000
BUSY_TIMEOUT_MS = 5000
#: Seconds between two log lines while the state file cannot be written.
WRITE_ERROR_LOG_INTERVAL = 60.0
#: The reader maps the file instead of copying pages through read(): about a quarter off a
#: primary-key lookup at 1M rows (bench/bench_robots_cache.py).
READER_MMAP_BYTES = 256 * 1024 * 1024

_ROBOTS_COLUMNS = ("authority", "key", "fetched_at", "status", "outcome", "body", "checked_at",
                   "failures", "fail_since", "next_retry", "error")
_KEY_COLUMNS = ("key", "last_start", "last_done", "crawl_delays")
#: stable_hash64(key) shifted into SQLite's signed 64-bit range, stored (last column of both
#: tables) so that a handoff selects a partition's rows in SQL, without a Python call per row
_HASH_OFFSET = 2**63

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS robots (
    authority TEXT PRIMARY KEY,  -- scheme://host[:port]
    key TEXT NOT NULL,           -- politeness key; partition_of(key, P) says who owns the row
    fetched_at REAL, status INTEGER, outcome TEXT, body BLOB,  -- the last good copy
    checked_at REAL NOT NULL, failures INTEGER NOT NULL,       -- the last attempt
    fail_since REAL, next_retry REAL, error TEXT,
    key_hash INTEGER NOT NULL    -- stable_hash64(key) - 2**63
);
CREATE TABLE IF NOT EXISTS politeness (
    key TEXT PRIMARY KEY,        -- politeness key
    last_start REAL NOT NULL,    -- epoch seconds a fetch on the key last started
    last_done REAL NOT NULL,     -- epoch seconds a fetch on the key last ended
    crawl_delays TEXT NOT NULL,  -- JSON {{authority: Crawl-delay}} of the key's robots.txt files
    key_hash INTEGER NOT NULL    -- stable_hash64(key) - 2**63
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');
"""

_UPSERT_ROBOTS = (
    f"INSERT OR REPLACE INTO robots ({', '.join(_ROBOTS_COLUMNS)}, key_hash) "
    f"VALUES ({', '.join('?' * (len(_ROBOTS_COLUMNS) + 1))})"
)
_UPSERT_KEY = (
    f"INSERT OR REPLACE INTO politeness ({', '.join(_KEY_COLUMNS)}, key_hash) "
    f"VALUES ({', '.join('?' * (len(_KEY_COLUMNS) + 1))})"
)
_SELECT_ROBOTS = f"SELECT {', '.join(_ROBOTS_COLUMNS)} FROM robots"
_SELECT_KEY = f"SELECT {', '.join(_KEY_COLUMNS)} FROM politeness"
# partition_of(key, P) = (key_hash + 2**63) % P, in SQLite's signed arithmetic: its % keeps the
# dividend's sign, so add P before the final % (parameters: P, P, 2**63 % P, P, JSON partitions)
_IN_PARTITIONS = "WHERE ((key_hash % ?) + ? + ?) % ? IN (SELECT value FROM json_each(?))"
ROBOTS, KEYS = "robots", "politeness"  # the two tables, as keys of the pending maps

Pending = dict[str, dict[str, tuple[Any, ...]]]  # table -> primary key -> row values


def _no_rows() -> Pending:
    return {ROBOTS: {}, KEYS: {}}


class StoreError(RuntimeError):
    """The state file cannot be opened or has an unknown schema."""


@dataclass(slots=True)
class KeyRow:
    """Fetch times of one politeness key and the Crawl-delays its robots.txt files ask for."""

    key: str
    last_start: float = 0.0
    last_done: float = 0.0
    crawl_delays: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "last_start": self.last_start, "last_done": self.last_done,
                "crawl_delays": dict(self.crawl_delays)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeyRow:
        return cls(str(data["key"]), float(data.get("last_start") or 0.0),
                   float(data.get("last_done") or 0.0),
                   {str(a): float(d) for a, d in (data.get("crawl_delays") or {}).items()})


def _key_hash(key: str) -> int:
    return stable_hash64(key) - _HASH_OFFSET


def _robots_tuple(row: RobotsRow) -> tuple[Any, ...]:
    return (*(getattr(row, name) for name in _ROBOTS_COLUMNS), _key_hash(row.key))


def _key_tuple(row: KeyRow) -> tuple[Any, ...]:
    delays = json.dumps(row.crawl_delays, sort_keys=True) if row.crawl_delays else "{}"  # most keys: none
    return (row.key, row.last_start, row.last_done, delays, _key_hash(row.key))


def _robots_from(values: tuple[Any, ...]) -> RobotsRow:
    row = RobotsRow(**dict(zip(_ROBOTS_COLUMNS, values)))  # zip drops a trailing key_hash
    if row.body is not None:
        row.body = bytes(row.body)
    return row


def _key_from(values: tuple[Any, ...]) -> KeyRow:
    key, last_start, last_done, delays = values[:4]
    return KeyRow(key, last_start, last_done, json.loads(delays))


def _connect(path: str, check_same_thread: bool = True) -> sqlite3.Connection:
    # autocommit; transactions are explicit
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    # WAL + NORMAL: a commit is durable against a process crash; a power cut may lose the last
    # transactions, which only costs a robots refetch or one wait of a crawl delay.
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


class StateStore:
    def __init__(self, path: str, flush_interval: float):
        self.path = path
        self.flush_interval = flush_interval
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        try:
            # used by one thread at a time: the reactor thread, then close() at shutdown
            self._reader = _connect(path, check_same_thread=False)
            self._reader.execute(f"PRAGMA mmap_size = {READER_MMAP_BYTES}")
            self._reader.executescript(SCHEMA)
            (version,) = self._reader.execute(
                "SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the politeness state file {path!r}: {exc}") from exc
        if int(version) != SCHEMA_VERSION:
            raise StoreError(f"{path!r} has schema version {version}, expected {SCHEMA_VERSION}")
        self.lookup_ms = LatencySampler("robots/store/lookup_ms")
        self.write_ms = LatencySampler("robots/store/write_ms")
        self.rows_written = 0
        self.write_errors = 0
        self._failing_since = 0  # write_errors when the current run of failures began (0: none)
        self._error_logged_at = 0.0
        self._lock = threading.Lock()
        # newest value per primary key, waiting for the writer / being written by it; both are
        # only touched under the lock, except the writer reading its own in-flight map
        self._pending: Pending = _no_rows()
        self._inflight: Pending = _no_rows()
        self._wake = threading.Event()
        self._stopping = False
        self._writer = threading.Thread(target=self._run, name="politeness-store-writer", daemon=True)
        self._writer.start()

    # -- reads (calling thread) -----------------------------------------------------------------

    def get_robots(self, authority: str) -> RobotsRow | None:
        values = self._get(ROBOTS, authority, f"{_SELECT_ROBOTS} WHERE authority = ?")
        return None if values is None else _robots_from(values)

    def get_key(self, key: str) -> KeyRow | None:
        values = self._get(KEYS, key, f"{_SELECT_KEY} WHERE key = ?")
        return None if values is None else _key_from(values)

    def _get(self, table: str, name: str, sql: str) -> tuple[Any, ...] | None:
        with self._lock:
            values = self._pending[table].get(name) or self._inflight[table].get(name)
        if values is not None:
            return values
        started = time.perf_counter()
        found: tuple[Any, ...] | None = self._reader.execute(sql, (name,)).fetchone()
        self.lookup_ms.add((time.perf_counter() - started) * 1000.0)
        return found

    def scan_partitions(self, partitions: set[int], total: int) -> tuple[list[RobotsRow], list[KeyRow]]:
        """Every row whose key falls in ``partitions`` (of ``total``), pending writes included.

        A scan in SQL over the stored key hashes (the partition of a key depends on ``total``,
        so no index can serve it; a handoff is rare).
        """
        def wanted(key: str) -> bool:
            return partition_of(key, total) in partitions

        params = (total, total, _HASH_OFFSET % total, total, json.dumps(sorted(partitions)))
        robots = {v[0]: v for v in self._reader.execute(f"{_SELECT_ROBOTS} {_IN_PARTITIONS}", params)}
        keys = {v[0]: v for v in self._reader.execute(f"{_SELECT_KEY} {_IN_PARTITIONS}", params)}
        with self._lock:  # unwritten rows are newer than the file's; pending newer than in flight
            for table, target, key_column in ((ROBOTS, robots, 1), (KEYS, keys, 0)):
                for source in (self._inflight[table], self._pending[table]):
                    for name, values in source.items():
                        if wanted(values[key_column]):
                            target[name] = values
        return [_robots_from(v) for v in robots.values()], [_key_from(v) for v in keys.values()]

    # -- writes (batched, writer thread) --------------------------------------------------------

    def put_robots(self, row: RobotsRow) -> None:
        self.put_many((row,), ())

    def put_key(self, row: KeyRow) -> None:
        self.put_many((), (row,))

    def put_many(self, robots: Iterable[RobotsRow], keys: Iterable[KeyRow]) -> None:
        robots_values = [(r.authority, _robots_tuple(r)) for r in robots]
        key_values = [(k.key, _key_tuple(k)) for k in keys]
        with self._lock:
            self._pending[ROBOTS].update(robots_values)
            self._pending[KEYS].update(key_values)
            size = len(self._pending[ROBOTS]) + len(self._pending[KEYS])
        if size >= FLUSH_BATCH_ROWS:
            self._wake.set()

    def pending_rows(self) -> int:
        """Rows waiting for the writer (the newest per primary key)."""
        with self._lock:
            return sum(len(rows) for rows in (*self._pending.values(), *self._inflight.values()))

    def _run(self) -> None:
        conn = _connect(self.path)
        try:
            while True:
                self._wake.wait(self.flush_interval)
                self._wake.clear()
                stopping = self._stopping
                self._flush(conn)
                if stopping:
                    return
        finally:
            conn.close()

    def _flush(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if not self._pending[ROBOTS] and not self._pending[KEYS]:
                return
            self._inflight, self._pending = self._pending, _no_rows()
            inflight = self._inflight
        started = time.perf_counter()
        rows = len(inflight[ROBOTS]) + len(inflight[KEYS])
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_UPSERT_ROBOTS, inflight[ROBOTS].values())
            conn.executemany(_UPSERT_KEY, inflight[KEYS].values())
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self.write_errors += 1
            self._write_failed(rows, exc)
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # SQLite rolled back already
            with self._lock:  # back to pending unless a newer value arrived meanwhile
                for table, rows_of in inflight.items():
                    for name, values in rows_of.items():
                        self._pending[table].setdefault(name, values)
        else:
            self.rows_written += rows
            self.write_ms.add((time.perf_counter() - started) * 1000.0)
            if self._failing_since:
                logger.warning("Politeness state: %s written again (%d rows) after %d failed attempts",
                               self.path, rows, self.write_errors - self._failing_since + 1)
                self._failing_since = 0
        finally:
            with self._lock:
                self._inflight = _no_rows()

    def _write_failed(self, rows: int, exc: sqlite3.Error) -> None:
        """One line at the first failure of a run, then one every WRITE_ERROR_LOG_INTERVAL."""
        now = time.monotonic()
        first = not self._failing_since
        if first:
            self._failing_since = self.write_errors
        elif now - self._error_logged_at < WRITE_ERROR_LOG_INTERVAL:
            return
        self._error_logged_at = now
        if diskfull.unwritable(exc):
            logger.error("Politeness state: cannot write %s; %d rows stay in memory and are written "
                         "when it can be written again (retried every %g s, %d failed attempts)",
                         diskfull.describe(self.path, exc), rows, self.flush_interval,
                         self.write_errors - self._failing_since + 1)
        else:
            logger.error("Politeness state: writing %d rows to %s failed (%s); will retry", rows,
                         self.path, exc, exc_info=first)

    def close(self) -> None:
        """Flush what is pending and stop the writer (blocks: call it off the reactor thread)."""
        if not self._stopping:
            self._stopping = True
            self._wake.set()
            self._writer.join()
            left = len(self._pending[ROBOTS]) + len(self._pending[KEYS])
            if left:
                logger.error("Politeness state: %d rows could not be written to %s before the close "
                             "(they only cost a robots.txt refetch or a crawl delay waited again)",
                             left, self.path)
        self._reader.close()
