"""Everything of the MongoDB pipeline that blocks: the pymongo client, the index self-check, the
bulk writes and the spill files. A :class:`MongoWriter` belongs to the pipeline's one worker
thread: every method runs there, one job at a time; the reactor side hands it docs and gets
messages (:mod:`.messages`) back through Deferreds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import bson
from bson import ObjectId
from bson.errors import InvalidDocument
from pymongo import MongoClient, UpdateOne, WriteConcern
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError
from twisted.python.failure import Failure

from crawlproj.middlewares.revisit import CHANGED, CURRENT
from crawlproj.pipelines.spill import SpillRecord

from .backlog import SpillBacklog
from .config import IndexSpec, QueryPath
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
#: The page's history (docs/revisits.md): when last fetched ("checked at"), when its content
#: last changed, how often it changed; with ``content_hash`` (an item field) and the two above.
LAST_FETCHED_FIELD = "last_fetched"
LAST_CHANGED_FIELD = "last_changed"
CHANGE_COUNT_FIELD = "change_count"
HISTORY_FIELDS = frozenset({FIRST_SEEN_FIELD, FETCH_COUNT_FIELD, LAST_FETCHED_FIELD, LAST_CHANGED_FIELD,
                            CHANGE_COUNT_FIELD})
RESERVED_FIELDS = frozenset({"_id", OP_FIELD}) | HISTORY_FIELDS
#: Item field with a revisit's outcome (crawlproj.middlewares.revisit): read, never stored.
REVISIT_FIELD = "revisit"
#: Built in on every collection, self-checked like MONGO_INDEXES: "changed since T" and "not
#: fetched since T".
HISTORY_INDEXES = (IndexSpec(((LAST_CHANGED_FIELD, 1),), None, {}), IndexSpec(((LAST_FETCHED_FIELD, 1),), None, {}))
HISTORY_QUERY_PATHS = (QueryPath((LAST_CHANGED_FIELD,), None), QueryPath((LAST_FETCHED_FIELD,), None))

DUPLICATE_KEY = 11000
#: Server error codes that say "try again" rather than "this document is wrong": not primary,
#: shutting down, network errors reported by a router (the set pymongo retries on).
TRANSIENT_CODES = frozenset({6, 7, 89, 91, 134, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})
#: Until the server tells its own limit in ``hello``.
DEFAULT_MAX_BSON_SIZE = 16 * 1024 * 1024
#: Bytes the stored document may add to an upsert's encoded size (``_id``, ``_op``).
DOC_OVERHEAD = 128


def history_update(doc: Doc) -> dict[str, Any]:
    """The upsert of one item: its fields and the page's history.

    A revisit whose stored copy is current (304, or the same content hash) sets only
    ``last_fetched`` and counts the fetch; its fields are written only if the document is new. A
    changed revisit rewrites the fields and counts the change. A fetch that is no revisit
    rewrites the fields and leaves ``last_changed`` as first set: without the stored hash it
    cannot tell.
    """
    fields = dict(doc.fields)
    outcome = fields.pop(REVISIT_FIELD, None)
    at = doc.seen_at
    if outcome in CURRENT:
        return {"$set": {LAST_FETCHED_FIELD: at}, "$setOnInsert": {FIRST_SEEN_FIELD: at, **fields},
                "$inc": {FETCH_COUNT_FIELD: 1, CHANGE_COUNT_FIELD: 0}}
    changed = outcome == CHANGED
    sets = {**fields, LAST_FETCHED_FIELD: at, **({LAST_CHANGED_FIELD: at} if changed else {})}
    on_insert = {FIRST_SEEN_FIELD: at, **({} if changed else {LAST_CHANGED_FIELD: at})}
    return {"$set": sets, "$setOnInsert": on_insert, "$inc": {FETCH_COUNT_FIELD: 1, CHANGE_COUNT_FIELD: int(changed)}}


def merge_updates(first: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """Two upserts of one document as one: later $set wins, the first $setOnInsert, $inc adds up."""
    sets = {**first["$set"], **later["$set"]}
    on_insert = {k: v for k, v in {**later["$setOnInsert"], **first["$setOnInsert"]}.items() if k not in sets}
    counts = dict(first["$inc"])
    for name, n in later["$inc"].items():
        counts[name] = counts.get(name, 0) + n
    return {"$set": sets, "$setOnInsert": on_insert, "$inc": counts}


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
            declared = [*HISTORY_INDEXES, *self.config.indexes_for(name)]
            for spec in declared:
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
            for spec in declared:
                if spec.fields not in key_fields:
                    problems.append(f"declared index {spec.describe()} is not listed on {namespace}")
            for path in [*HISTORY_QUERY_PATHS, *self.config.query_paths_for(name)]:
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
        updates: dict[tuple[str, str], dict[str, Any]] = {}
        members: dict[tuple[str, str], list[int]] = {}
        invalid = []
        limit = self._max_bson_size - DOC_OVERHEAD
        for index, doc in enumerate(docs):
            update = history_update(doc)
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
            if key not in updates:
                updates[key], members[key] = update, [index]
                continue
            combined = merge_updates(updates[key], update)
            size = len(bson.encode(combined))
            if size > limit:
                invalid.append(Invalid(index, "DocumentTooLarge", f"{size} bytes once merged with an "
                                       f"earlier item of the same URL in this batch"))
                continue
            updates[key] = combined
            members[key].append(index)
        ops = []
        for key, update in updates.items():
            op_id = str(ObjectId())
            update = {**update, "$set": {**update["$set"], OP_FIELD: op_id}}
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
