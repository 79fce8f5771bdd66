"""What a process says when a file of its own cannot be written (a full disk, a quota, EROFS).

The dispatcher's store, a node's politeness state file and the MongoDB spill files keep what
they could not write and try again; each says so in one line naming the path, the errno and
the space left, through :func:`describe`. SQLite reports "database or disk is full" without an
errno: :func:`probe` writes a small file beside the database to learn it.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

#: errnos that mean "this file system takes no more writes now" (space may come back).
UNWRITABLE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})
#: SQLite primary result codes of a failed write to its files: SQLITE_IOERR, SQLITE_FULL.
SQLITE_WRITE_CODES = frozenset({10, 13})
PROBE_BYTES = 64 * 1024
PROBE_NAME = ".crawlproj-write-probe"


def unwritable(exc: BaseException) -> bool:
    """``exc`` says a file could not be written for lack of room (or a read-only/failing disk)."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and (code & 0xFF) in SQLITE_WRITE_CODES
    return isinstance(exc, OSError) and exc.errno in UNWRITABLE_ERRNOS


def probe(directory: str | os.PathLike[str]) -> OSError | None:
    """Write and fsync ``PROBE_BYTES`` in ``directory`` (then remove them): the OSError, if any."""
    path = Path(directory) / PROBE_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return exc
    finally:
        try:
            path.unlink()
        except OSError:
            pass
    return None


def free_bytes(directory: str | os.PathLike[str]) -> int | None:
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def describe(path: str | os.PathLike[str], exc: BaseException) -> str:
    """``<path>: errno 28 ENOSPC (No space left on device), <n> bytes free[; SQLite: ...]``."""
    directory = Path(path) if Path(path).is_dir() else Path(path).parent
    cause = exc if isinstance(exc, OSError) else probe(directory)
    if cause is not None and cause.errno is not None:
        what = f"errno {cause.errno} {errno.errorcode.get(cause.errno, '?')} ({cause.strerror})"
    else:
        what = "no errno (a probe write beside it succeeded)"
    free = free_bytes(directory)
    if free is not None:
        what += f", {free} bytes free"
    if isinstance(exc, sqlite3.Error):
        what += f"; SQLite: {getattr(exc, 'sqlite_errorname', '?')} ({exc})"
    elif not isinstance(exc, OSError):
        what += f"; {type(exc).__name__}: {exc}"
    return f"{path}: {what}"
