"""Append-only, fsynced spill files of the MongoDB pipeline.

While MongoDB is unreachable, the pipeline appends its pending upserts here and only then lets
``process_item`` complete; when MongoDB is back (or when any node opens with the same spill
directory after a crash) the files are replayed in order and removed.

Format: one JSON line per upsert, MongoDB Canonical Extended JSON (``bson.json_util``), so every
BSON value (dates, binary, 64-bit integers, ...) survives the round trip exactly. Never pickle.
A record is durable once its line and the ``\\n`` that ends it are fsynced; a line without its
newline is the torn tail of an append that was interrupted (its items were never acknowledged)
and is skipped.

Ownership: a spill file is exclusively ``flock``-ed by the process that writes or replays it,
from its creation (made under a temporary name, locked, then renamed) until it is removed, so a
node only claims the files of processes that are gone, and a kill -9 releases them.

Replay progress: after each replayed chunk its end offset is appended to ``<file>.done`` and
fsynced, so a replay interrupted by a crash resumes after the last acknowledged chunk instead of
re-applying (and re-counting) what was already written. The spill file is removed before its
sidecar, never the other way round.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import timezone
from pathlib import Path
from typing import Any

from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS

from crawlproj import diskfull

logger = logging.getLogger(__name__)

PREFIX = "spill-"
SUFFIX = ".jsonl"
DONE_SUFFIX = ".done"
TMP_PREFIX = ".tmp-spill-"
#: A temporary file exists for microseconds between creation and rename; one older than this
#: (and not locked) is left over from a crash and is removed.
STALE_TMP_SECONDS = 60.0

#: Dates come back timezone-aware in UTC: the same instant BSON stores.
JSON_OPTIONS = CANONICAL_JSON_OPTIONS.with_options(tz_aware=True, tzinfo=timezone.utc)

_sequence = itertools.count()


class SpillError(OSError):
    """A spill file could not be written or read."""


@dataclass(frozen=True)
class SpillRecord:
    """One idempotent upsert: ``update`` applied to ``doc_id`` in ``collection`` once (``op_id``)."""

    op_id: str
    collection: str
    doc_id: str
    update: dict[str, Any]
    items: int  # how many scraped items this upsert carries (duplicates in a batch are merged)

    def encode(self) -> bytes:
        data = {"op": self.op_id, "c": self.collection, "_id": self.doc_id, "u": self.update, "n": self.items}
        return (json_util.dumps(data, json_options=JSON_OPTIONS) + "\n").encode("ascii")

    @classmethod
    def decode(cls, line: bytes) -> SpillRecord:
        data = json_util.loads(line, json_options=JSON_OPTIONS)
        return cls(op_id=data["op"], collection=data["c"], doc_id=data["_id"], update=data["u"],
                   items=int(data["n"]))


def fsync_dir(directory: Path) -> None:
    """Make a create, rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


@dataclass
class Chunk:
    """Records read from a spill file, and where reading stopped."""

    records: list[SpillRecord]
    end_offset: int
    eof: bool
    torn_bytes: int = 0  # an unterminated last line (an interrupted append): skipped
    bad_lines: int = 0  # terminated lines that do not decode (should never happen): skipped


@dataclass
class SpillFile:
    """A locked spill file that is no longer appended to, read from ``offset`` to its end."""

    path: Path
    fd: int  # holds the flock
    offset: int = 0  # bytes already replayed
    size: int = 0
    replayed_items: int = field(default=0)

    @property
    def done_path(self) -> Path:
        return self.path.with_name(self.path.name + DONE_SUFFIX)

    @property
    def remaining(self) -> int:
        return max(self.size - self.offset, 0)

    def read_chunk(self, max_records: int) -> Chunk:
        """Up to ``max_records`` records from ``offset``; stops before a second upsert of the same
        document, so one unordered bulk write never holds two upserts whose order matters."""
        records: list[SpillRecord] = []
        keys: set[tuple[str, str]] = set()
        offset = self.offset
        bad = 0
        torn = 0
        with open(self.path, "rb") as f:
            f.seek(offset)
            while len(records) < max_records:
                line = f.readline()
                if not line:
                    break
                if not line.endswith(b"\n"):
                    torn = len(line)
                    break
                try:
                    record = SpillRecord.decode(line)
                except (ValueError, KeyError, TypeError) as exc:
                    bad += 1
                    logger.error("Skipping undecodable record at byte %d of %s: %s", offset, self.path, exc)
                    offset += len(line)
                    continue
                key = (record.collection, record.doc_id)
                if key in keys:
                    break
                keys.add(key)
                records.append(record)
                offset += len(line)
        eof = offset + torn >= self.size
        return Chunk(records, offset, eof, torn, bad)

    def commit(self, offset: int) -> None:
        """Record durably that everything before ``offset`` has been written to MongoDB."""
        fd = os.open(self.done_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, f"{offset}\n".encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        self.offset = offset

    def remove(self) -> None:
        """Delete the replayed file, then its progress sidecar, and release the lock."""
        self.path.unlink(missing_ok=True)
        fsync_dir(self.path.parent)
        self.done_path.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the flock
            self.fd = -1


def _read_done_offset(done_path: Path) -> int:
    try:
        lines = done_path.read_bytes().split(b"\n")
    except FileNotFoundError:
        return 0
    # the last complete line: an append interrupted by a crash leaves an unterminated tail
    complete = [line for line in lines[:-1] if line.strip()]
    return int(complete[-1]) if complete else 0


class SpillWriter:
    """This process's current spill file: created on first append, appended and fsynced."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.path: Path | None = None
        self.fd = -1
        self.size = 0

    def _create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = f"{time.time_ns():020d}-{os.getpid()}-{next(_sequence):06d}"
        tmp = self.directory / f"{TMP_PREFIX}{stamp}{SUFFIX}"
        final = self.directory / f"{PREFIX}{stamp}{SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            if not _try_lock(fd):
                raise SpillError(errno.EWOULDBLOCK, "new spill file locked by another process", str(tmp))
            # locked before it gets a name claimants look at, so no one can claim it half-born
            os.rename(tmp, final)
            fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        self.path, self.fd, self.size = final, fd, 0

    def append(self, records: list[bytes]) -> int:
        """Append ``records`` and fsync them; return the bytes written. All or nothing."""
        if not records:
            return 0
        if self.fd < 0:
            self._create()
        data = b"".join(records)
        try:
            view = memoryview(data)
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
            os.fsync(self.fd)
        except OSError as exc:
            # cut the partial append off (e.g. ENOSPC) so the file stays a sequence of records
            try:
                os.ftruncate(self.fd, self.size)
                os.fsync(self.fd)
            except OSError:
                logger.exception("Could not truncate %s after a failed append", self.path)
            assert self.path is not None
            raise SpillError(exc.errno, f"cannot append {len(data)} bytes to "
                             f"{diskfull.describe(self.path, exc)}") from exc
        self.size += len(data)
        return len(data)

    def detach(self) -> SpillFile | None:
        """Stop appending to the current file and hand it over (still locked) for replay."""
        if self.fd < 0 or self.path is None:
            return None
        spill = SpillFile(self.path, self.fd, 0, self.size)
        self.path, self.fd, self.size = None, -1, 0
        return spill

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def claim_spill_files(directory: Path) -> list[SpillFile]:
    """Lock and return, oldest first, every spill file in ``directory`` that no live process owns
    (left by a crashed or stopped node); tidy leftovers of crashes."""
    if not directory.is_dir():
        return []
    claimed: list[SpillFile] = []
    names = sorted(os.listdir(directory))
    for name in names:
        path = directory / name
        if name.startswith(PREFIX) and name.endswith(SUFFIX):
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue  # replayed and removed by its owner meanwhile
            if not _try_lock(fd):
                os.close(fd)
                logger.info("Spill file %s belongs to a live process; leaving it", path)
                continue
            if not path.exists():  # removed between open and lock by the previous owner
                os.close(fd)
                continue
            spill = SpillFile(path, fd, 0, os.fstat(fd).st_size)
            spill.offset = min(_read_done_offset(spill.done_path), spill.size)
            claimed.append(spill)
        elif name.startswith(PREFIX) and name.endswith(SUFFIX + DONE_SUFFIX):
            if not (directory / name[: -len(DONE_SUFFIX)]).exists():
                path.unlink(missing_ok=True)  # its spill file was removed; crash before this
        elif name.startswith(TMP_PREFIX):
            _remove_stale_tmp(path)
    return claimed


def _remove_stale_tmp(path: Path) -> None:
    try:
        age = time.time() - path.stat().st_mtime
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        if age > STALE_TMP_SECONDS and _try_lock(fd):
            path.unlink(missing_ok=True)  # never renamed, so never written to
    finally:
        os.close(fd)
