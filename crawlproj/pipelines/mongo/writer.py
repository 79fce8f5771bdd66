"""Everything of the MongoDB pipeline that blocks: the pymongo client, the index self-check, the
bulk writes and the spill files. A :class:`MongoWriter` belongs to the pipeline's one worker
thread: every method runs there, one job at a time; the reactor side hands it docs and gets
messages (:mod:`.messages`) back through Deferreds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import bson
from bson import ObjectId
from bson.errors import InvalidDocument
from pymongo import MongoClient, UpdateOne, WriteConcern
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError
from twisted.python.failure import Failure

from crawlproj.pipelines.spill import SpillRecord

from .backlog import SpillBacklog
from .messages import (
    MESSAGE_LIMIT,
    BatchResult,
    Doc,
    Done,
    Invalid,
    Op,
    Prepared,
    ReplayOutcome,
    SpillResult,
    WriteOutcome,
)

if TYPE_CHECKING:
    from pymongo.collection import Collection
    from pymongo.database import Database

    from .config import MongoConfig

logger = logging.getLogger(__package__)  # one logger for the whole pipeline

#: Fields the pipeline owns in every document; an item field of the same name is not written.
OP_FIELD = "_op"
FIRST_SEEN_FIELD = "first_seen"
FETCH_COUNT_FIELD = "fetch_count"
RESERVED_FIELDS = frozenset({"_id", OP_FIELD, FIRST_SEEN_FIELD, FETCH_COUNT_FIELD})

DUPLICATE_KEY = 11000
#: Server error codes that say "try again" rather than "this document is wrong": not primary,
#: shutting down, network errors reported by a router (the set pymongo retries on).
TRANSIENT_CODES = frozenset({6, 7, 89, 91, 134, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})
#: Until the server tells its own limit in ``hello``.
DEFAULT_MAX_BSON_SIZE = 16 * 1024 * 1024
#: Bytes the stored document may add to an upsert's encoded size (``_id``, ``_op``).
DOC_OVERHEAD = 128


class IndexCheckError(RuntimeError):
    """A query path in MONGO_QUERY_PATHS has no index, or a declared index could not be made."""


class TransientWriteError(PyMongoError):
    """A bulk write the server answered with a retryable error (write concern, not primary)."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


class _Tally:
    """A write's outcome while it is being made (the worker's own, until it becomes a WriteOutcome)."""

    def __init__(self) -> None:
        self.bulk_writes = 0
        self.latencies_ms: list[float] = []
        self.invalid: dict[str, tuple[str, str]] = {}
        self.already_applied = 0

    def outcome(self) -> WriteOutcome:
        return WriteOutcome(self.bulk_writes, tuple(self.latencies_ms), self.invalid, self.already_applied)


class MongoWriter:
    """The worker thread's side of the pipeline; nothing here is touched from the reactor."""

    def __init__(self, config: MongoConfig):
        self.config = config
        self.spill = SpillBacklog(config.spill_dir)
        self._client: MongoClient[dict[str, Any]] | None = None
        self._db: Database[dict[str, Any]] | None = None
        self._collections: dict[str, Collection[dict[str, Any]]] = {}
        self._max_bson_size = DEFAULT_MAX_BSON_SIZE
        self._indexes_checked = False

    def run(self, job: Callable[..., Any], *args: Any) -> Done:
        """Run one job; its value or failure and the spill files' state after it."""
        try:
            value, failure = job(*args), None
        except BaseException:  # as deferToThreadPool would: the reactor side decides
            value, failure = None, Failure()
        return Done(value, failure, self.spill.state())

    # -- connection and indexes -------------------------------------------------------------------

    def connect(self) -> None:
        config = self.config
        self._client = MongoClient(config.uri, serverSelectionTimeoutMS=int(config.connect_timeout * 1000),
                                   connectTimeoutMS=int(config.connect_timeout * 1000),
                                   socketTimeoutMS=int(config.socket_timeout * 1000), appname="crawlproj")
        self._db = self._client.get_database(config.database)
        concern = WriteConcern(**config.write_concern)
        self._collections = {name: self._db.get_collection(name, write_concern=concern)
                             for name in config.collection_names}

    def check_indexes(self) -> None:
        """Create the declared indexes, read them back, log them, and check the query paths."""
        assert self._client is not None and self._db is not None
        hello = self._client.admin.command("hello")
        self._max_bson_size = int(hello.get("maxBsonObjectSize", DEFAULT_MAX_BSON_SIZE))
        problems = []
        for name in self.config.collection_names:
            collection = self._collections[name]
            namespace = f"{self.config.database}.{name}"
            for spec in self.config.indexes_for(name):
                try:
                    collection.create_index(list(spec.keys), **spec.options)
                except OperationFailure as exc:
                    if exc.code in TRANSIENT_CODES:
                        raise
                    raise IndexCheckError(f"MONGO_INDEXES: creating index {spec.describe()} on {namespace} "
                                          f"failed: {exc}") from exc
            existing = list(collection.list_indexes())
            logger.info("MongoDB indexes on %s: %s", namespace,
                        "; ".join(f"{ix.get('name')} {dict(ix['key'])}" for ix in existing))
            key_fields = [tuple(ix["key"].keys()) for ix in existing]
            for spec in self.config.indexes_for(name):
                if spec.fields not in key_fields:
                    problems.append(f"declared index {spec.describe()} is not listed on {namespace}")
            for path in self.config.query_paths_for(name):
                width = len(path.fields)
                if not any(set(keys[:width]) == set(path.fields) for keys in key_fields):
                    problems.append(f"query path {path.describe()!r} has no index on {namespace} "
                                    f"(indexes: {[list(k) for k in key_fields]})")
        if problems:
            message = ("MONGO_QUERY_PATHS / MONGO_INDEXES: MongoDB index check failed: " + "; ".join(problems)
                       + ". Declare the index in MONGO_INDEXES, or set MONGO_ALLOW_UNINDEXED = True to run "
                       "with collection scans")
            if not self.config.allow_unindexed:
                raise IndexCheckError(message)
            logger.warning("%s (MONGO_ALLOW_UNINDEXED is set: running anyway)", message)
        self._indexes_checked = True

    def probe(self) -> None:
        """While MongoDB fails, a ping decides when to write again (a write would rotate the spill)."""
        assert self._client is not None
        self._client.admin.command("ping")

    def claim_backlog(self) -> None:
        self.spill.claim()

    def close(self) -> None:
        try:
            if self._client is not None:
                self._client.close()
                self._client = None
        finally:
            self.spill.close()

    # -- batches ----------------------------------------------------------------------------------

    def prepare(self, docs: Sequence[Doc]) -> Prepared:
        """Validate every doc (BSON-encodable, under the size limit) and merge the upserts of one
        document (a URL seen twice in a batch) in their order: later fields win, counts add up."""
        sets: dict[tuple[str, str], dict[str, Any]] = {}
        first_seen: dict[tuple[str, str], datetime] = {}
        members: dict[tuple[str, str], list[int]] = {}
        invalid = []
        limit = self._max_bson_size - DOC_OVERHEAD
        for index, doc in enumerate(docs):
            update = {"$set": doc.fields, "$setOnInsert": {FIRST_SEEN_FIELD: doc.seen_at},
                      "$inc": {FETCH_COUNT_FIELD: 1}}
            try:
                size = len(bson.encode(update))
            except (InvalidDocument, OverflowError, TypeError, ValueError) as exc:
                invalid.append(Invalid(index, "InvalidDocument", str(exc)))
                continue
            if size > limit:
                invalid.append(Invalid(index, "DocumentTooLarge", f"{size} bytes encoded; the server "
                                       f"takes documents up to {self._max_bson_size} bytes"))
                continue
            key = (doc.collection, doc.doc_id)
            if key not in sets:
                sets[key], first_seen[key], members[key] = dict(doc.fields), doc.seen_at, [index]
                continue
            combined = {**sets[key], **doc.fields}
            size = len(bson.encode({"$set": combined}))
            if size > limit:
                invalid.append(Invalid(index, "DocumentTooLarge", f"{size} bytes once merged with an "
                                       f"earlier item of the same URL in this batch"))
                continue
            sets[key] = combined
            members[key].append(index)
        ops = []
        for key, fields in sets.items():
            op_id = str(ObjectId())
            update = {"$set": {**fields, OP_FIELD: op_id}, "$setOnInsert": {FIRST_SEEN_FIELD: first_seen[key]},
                      "$inc": {FETCH_COUNT_FIELD: len(members[key])}}
            ops.append(Op(op_id, key[0], key[1], update, len(members[key]), tuple(members[key])))
        return Prepared(tuple(ops), tuple(invalid))

    def write_batch(self, docs: Sequence[Doc], prepared: Prepared | None) -> BatchResult:
        """Write a batch (prepared now, or again with the op ids it was sent with before)."""
        if prepared is None:
            prepared = self.prepare(docs)
        try:
            if not self._indexes_checked:
                self.check_indexes()
            return BatchResult(prepared, self._write_ops(prepared.ops))
        except BaseException:
            return BatchResult(prepared, None, Failure())

    def replay_chunk(self) -> ReplayOutcome:
        """Write the next chunk of the oldest spill file; remove the file at its end."""
        if not self._indexes_checked:
            self.check_indexes()
        spill = self.spill.oldest()
        chunk = spill.read_chunk(self.config.batch_size)
        ops = [Op(r.op_id, r.collection, r.doc_id, r.update, r.items) for r in chunk.records]
        outcome = self._write_ops(ops) if ops else WriteOutcome()
        invalid_items = sum(op.items for op in ops if op.op_id in outcome.invalid)
        items = sum(op.items for op in ops)
        if chunk.eof:
            spill.remove()
            self.spill.replayed(spill)
        else:
            spill.commit(chunk.end_offset)
        spill.replayed_items += items - invalid_items
        return ReplayOutcome(outcome, spill.path, len(ops), items, chunk.eof, chunk.torn_bytes,
                             chunk.bad_lines, invalid_items, spill.replayed_items)

    def spill_batches(self, batches: Sequence[tuple[Sequence[Doc], Prepared | None]]) -> SpillResult:
        """Append the batches' upserts to the spill file and fsync; the upserts Extended JSON
        could not encode (none that BSON can encode, but never a poison pill that blocks the
        spill) are left out and named."""
        prepared = tuple(p if p is not None else self.prepare(docs) for docs, p in batches)
        records = []
        unspillable: dict[tuple[int, str], str] = {}
        for position, batch in enumerate(prepared):
            for op in batch.ops:
                try:
                    records.append(SpillRecord(op.op_id, op.collection, op.doc_id, op.update, op.items).encode())
                except (TypeError, ValueError, OverflowError) as exc:
                    unspillable[(position, op.op_id)] = str(exc)
        try:
            written = self.spill.append(records)
        except BaseException:
            return SpillResult(prepared, failure=Failure())
        return SpillResult(prepared, written, unspillable)

    # -- bulk writes ------------------------------------------------------------------------------

    def _write_ops(self, ops: Sequence[Op]) -> WriteOutcome:
        tally = _Tally()
        groups: dict[str, list[Op]] = {}
        for op in ops:
            groups.setdefault(op.collection, []).append(op)
        for name, group in groups.items():
            collection = self._collection(name)
            requests = [UpdateOne({"_id": op.doc_id, OP_FIELD: {"$ne": op.op_id}}, op.update, upsert=True)
                        for op in group]
            started = time.perf_counter()
            try:
                collection.bulk_write(requests, ordered=False)
            except BulkWriteError as exc:
                self._sort_write_errors(collection, group, exc.details, tally)
            except InvalidDocument:  # DocumentTooLarge included: pymongo refused the whole batch
                self._write_one_by_one(collection, group, tally)
            tally.latencies_ms.append((time.perf_counter() - started) * 1000)
            tally.bulk_writes += 1
        return tally.outcome()

    def _collection(self, name: str) -> Collection[dict[str, Any]]:
        collection = self._collections.get(name)
        if collection is None:  # a spill file written under another MONGO_COLLECTIONS
            assert self._db is not None
            collection = self._db.get_collection(name, write_concern=WriteConcern(**self.config.write_concern))
            self._collections[name] = collection
        return collection

    def _sort_write_errors(self, collection: Collection[dict[str, Any]], group: list[Op],
                           details: dict[str, Any], tally: _Tally) -> None:
        if details.get("writeConcernErrors"):
            # applied but not acknowledged as asked: send the same upserts again (idempotent)
            raise TransientWriteError(str(details["writeConcernErrors"][0])[:MESSAGE_LIMIT], "WriteConcernError")
        for error in details.get("writeErrors", []):
            code = error.get("code")
            if code in TRANSIENT_CODES:
                raise TransientWriteError(str(error.get("errmsg"))[:MESSAGE_LIMIT], f"write/{code}")
        for error in details.get("writeErrors", []):
            op = group[error["index"]]
            code = error.get("code")
            if code == DUPLICATE_KEY:
                verdict = self._resolve_duplicate(collection, op, tally)
                if verdict is not None:
                    tally.invalid[op.op_id] = ("write/11000", verdict)
            else:
                tally.invalid[op.op_id] = (f"write/{code}", str(error.get("errmsg")))

    def _resolve_duplicate(self, collection: Collection[dict[str, Any]], op: Op, tally: _Tally) -> str | None:
        """Why ``op`` cannot be written, or None once it is in place (counting an upsert that had
        been applied before as ``mongo/already_applied``)."""
        doc = collection.find_one({"_id": op.doc_id}, {OP_FIELD: 1})
        if doc is not None and doc.get(OP_FIELD) == op.op_id:
            tally.already_applied += 1  # a re-sent upsert that had been applied: nothing to do
            return None
        if doc is not None and OP_FIELD not in doc:
            # A document this pipeline never wrote; some servers' $ne does not match a missing field.
            try:
                collection.update_one({"_id": op.doc_id}, op.update, upsert=True)
            except OperationFailure as exc:  # DuplicateKeyError included; not a connection error
                if exc.code in TRANSIENT_CODES:
                    raise
                return str(exc)
            return None
        return "duplicate key on a unique index other than _id"

    def _write_one_by_one(self, collection: Collection[dict[str, Any]], group: list[Op], tally: _Tally) -> None:
        for op in group:
            try:
                collection.bulk_write([UpdateOne({"_id": op.doc_id, OP_FIELD: {"$ne": op.op_id}}, op.update,
                                                 upsert=True)], ordered=False)
            except BulkWriteError as exc:
                self._sort_write_errors(collection, [op], exc.details, tally)
            except InvalidDocument as exc:
                tally.invalid[op.op_id] = (type(exc).__name__, str(exc))
