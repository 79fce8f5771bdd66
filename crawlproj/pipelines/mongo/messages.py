"""What the reactor side and the worker thread of the MongoDB pipeline hand each other.

Every message is immutable and changes hands once: the reactor builds a :class:`Doc` per item and
hands the docs of a batch to the worker; the worker answers with a result. Neither side keeps a
reference to a message it has handed over that it would write again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.python.failure import Failure

#: Characters of an error message (which may quote the offending value) put in a log line.
MESSAGE_LIMIT = 300


@dataclass(frozen=True)
class Doc:
    """One item as the upsert of its document (built on the reactor, read by the worker)."""

    collection: str
    doc_id: str
    fields: dict[str, Any]
    seen_at: datetime


@dataclass(frozen=True)
class Op:
    """One idempotent upsert; its ``op_id`` never changes once it may have reached the server."""

    op_id: str
    collection: str
    doc_id: str
    update: dict[str, Any]
    items: int
    members: tuple[int, ...] = ()  # indexes into the batch's docs


@dataclass(frozen=True)
class Invalid:
    index: int  # into the batch's docs
    kind: str
    message: str


@dataclass(frozen=True)
class Prepared:
    """A batch's docs as upserts (one per document, merged in order) and the docs refused."""

    ops: tuple[Op, ...]
    invalid: tuple[Invalid, ...]


@dataclass(frozen=True)
class WriteOutcome:
    bulk_writes: int = 0
    latencies_ms: tuple[float, ...] = ()
    invalid: dict[str, tuple[str, str]] = field(default_factory=dict)  # op_id -> (kind, message)
    already_applied: int = 0


@dataclass(frozen=True)
class BatchResult:
    """A batch written, or not (``failure``); ``prepared`` either way, as its upserts may have
    been sent and must keep their op ids."""

    prepared: Prepared
    outcome: WriteOutcome | None
    failure: Failure | None = None


@dataclass(frozen=True)
class SpillResult:
    """Batches appended to the spill file, or not (``failure``)."""

    prepared: tuple[Prepared, ...]
    written: int = 0  # bytes
    unspillable: dict[tuple[int, str], str] = field(default_factory=dict)  # (batch, op_id) -> why
    failure: Failure | None = None


@dataclass(frozen=True)
class ReplayOutcome:
    """One chunk of the oldest spill file written to MongoDB."""

    write: WriteOutcome
    path: Path
    records: int
    items: int
    eof: bool  # the file is replayed and removed
    torn_bytes: int
    bad_lines: int
    invalid_items: int
    file_items: int  # items replayed from this file so far


@dataclass(frozen=True)
class SpillState:
    """The spill files of this process as the worker left them after its last job."""

    files: int = 0  # claimed or detached files waiting for replay
    backlog_bytes: int = 0  # left to replay in them
    current_bytes: int = 0  # in the file being appended to
    current_path: Path | None = None

    @property
    def pending(self) -> bool:
        return self.files > 0 or self.current_bytes > 0

    @property
    def bytes(self) -> int:
        return self.backlog_bytes + self.current_bytes


@dataclass(frozen=True)
class Done:
    """The end of one job of the worker: its value or failure, and the spill files after it."""

    value: Any
    failure: Failure | None
    spill: SpillState
