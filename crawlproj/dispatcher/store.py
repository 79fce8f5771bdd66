"""The frontier store's SQLite file: how it is opened, its tables, its schema version and migrations.

One file per crawl, ``STORE_FILENAME`` in the store directory, in WAL mode. Tables:
``frontier_rows`` (rows of requests, :mod:`.rows`) with the index ``frontier_rows_order``
(partition, negated priority, id), ``acked`` (the log of partial acks), ``seen_log`` and
``seen_buckets`` (:mod:`.seen`), and ``meta``: ``schema``, ``partitions`` (fixed for the life of
a crawl), ``epoch`` (runs so far), ``seen`` (fingerprints accepted) and ``seen_merges`` (the
seen-set's compaction counter). What the rows mean and how they are kept is :mod:`.frontier`'s
and :mod:`.seen`'s.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

from .errors import StoreError
from .seen import SeenSet

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 1: one request per row in table "frontier" (migrated when opened)
STORE_FILENAME = "frontier.sqlite"
DEFAULT_CACHE_KIB = 64 * 1024  # SQLite page cache
# Large pages: a commit writes a few large WAL frames, not many small ones (rows and seen buckets
# are kilobytes each); measured 1.1-1.5x the new URLs per CPU-second of 4 KiB pages. Only a new,
# empty file takes it (an existing store keeps its own).
PAGE_SIZE = 65536
WAL_AUTOCHECKPOINT_BYTES = 40 << 20  # WAL written between automatic checkpoints
SQLITE_BUSY_TIMEOUT = 30.0


def connect(store_dir: Path) -> sqlite3.Connection:
    """The store's connection (autocommit: the frontier opens its transactions itself)."""
    try:
        store_dir.mkdir(parents=True, exist_ok=True)
        return sqlite3.connect(store_dir / STORE_FILENAME, isolation_level=None,
                               timeout=SQLITE_BUSY_TIMEOUT, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot open the store in {store_dir}: {exc}") from exc


def prepare(conn: sqlite3.Connection, path: Path, partitions: int, cache_kib: int) -> dict[str, Any]:
    """Set the connection up, open a write transaction (the caller commits it) with every table
    there and at the current schema, and return ``meta``. Raises StoreError (the transaction
    rolled back) if the store belongs to another schema or partition count."""
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # before WAL mode, or it is too late
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode survives a process kill (what -9 does); only power loss may lose the
    # last transactions, and those are re-derived (at-least-once).
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
    conn.execute("PRAGMA temp_store=MEMORY")
    # SQLite's own default; Debian's build turns it on, and then every page a delete frees (acked
    # rows, the seen log at each merge) is zeroed and written to the WAL once more.
    conn.execute("PRAGMA secure_delete=OFF")
    # Checkpointing seldom copies a page changed by many commits back once, not once per commit.
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_BYTES // page}")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)")
    SeenSet.create(conn)
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if not meta:
        meta = {"schema": SCHEMA_VERSION, "partitions": partitions, "epoch": 0, "seen": 0}
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
    if meta.get("schema") == 1:
        _migrate_v1(conn, path)
    elif meta.get("schema") != SCHEMA_VERSION:
        conn.execute("ROLLBACK")
        raise StoreError(f"store {path} has schema {meta.get('schema')!r}, "
                         f"this dispatcher reads {SCHEMA_VERSION}")
    if meta["partitions"] != partitions:
        conn.execute("ROLLBACK")
        raise StoreError(
            f"store {path} belongs to a crawl with {meta['partitions']} partitions; "
            f"--partitions {partitions} differs (P is fixed for the life of a crawl: use "
            f"--partitions {meta['partitions']} or a new --store)")
    conn.execute("CREATE TABLE IF NOT EXISTS frontier_rows (id INTEGER PRIMARY KEY, p INTEGER NOT NULL,"
                 " npr INTEGER NOT NULL, n INTEGER NOT NULL, reqs BLOB NOT NULL)")
    conn.execute("CREATE INDEX IF NOT EXISTS frontier_rows_order ON frontier_rows (p, npr, id)")
    conn.execute("CREATE TABLE IF NOT EXISTS acked (x BLOB NOT NULL)")
    return meta


def _migrate_v1(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("CREATE TABLE frontier_rows (id INTEGER PRIMARY KEY, p INTEGER NOT NULL,"
                 " npr INTEGER NOT NULL, n INTEGER NOT NULL, reqs BLOB NOT NULL)")
    conn.execute("INSERT INTO frontier_rows (id, p, npr, n, reqs) SELECT id, p, npr, 1, req FROM frontier")
    conn.execute("DROP TABLE frontier")
    conn.execute("UPDATE meta SET value=? WHERE key='schema'", (SCHEMA_VERSION,))
    logger.info("Store %s: schema 1 rows moved to schema %d", path, SCHEMA_VERSION)
