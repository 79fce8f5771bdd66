"""MongoDB item pipeline: batched, idempotent upserts keyed by the URL fingerprint.

Every item becomes one upsert of the document whose ``_id`` is ``crawlproj.wire.urls.fingerprint_hex``
of its ``url``: ``$set`` the item's fields, ``$setOnInsert`` ``first_seen``, ``$inc``
``fetch_count``. Upserts are collected into unordered ``bulk_write`` calls that run in one worker
thread of this pipeline, never on the reactor; a batch is written when it reaches
``MONGO_BATCH_SIZE``, when its oldest item has waited ``MONGO_FLUSH_INTERVAL``, and at close.

Durability: ``process_item`` returns only when its item is acknowledged by MongoDB (at
``MONGO_WRITE_CONCERN``) or appended and fsynced to a spill file (``crawlproj.pipelines.spill``),
so ``item_scraped`` -- and the lease ack that follows it -- never runs ahead of the data.

Idempotence: each upsert carries an op id (``_op``) and is sent as
``{"_id": fp, "_op": {"$ne": op_id}}``. Re-sending an upsert that was applied but not acknowledged
(connection lost, write concern error, a replay after a crash) matches nothing, the upsert's
insert fails with duplicate key 11000 on ``_id``, and the pipeline confirms by reading ``_op``
back: nothing is applied twice, ``fetch_count`` included. Writes leave one worker in order, and
the spill is replayed before anything newer is written, so a re-sent upsert is always the last
one its document saw.

Outage: a failed write is kept and sent again once a ``ping`` (after an exponential back-off)
succeeds; items wait in memory up to ``MONGO_SPILL_AFTER`` seconds (or until
``MONGO_BUFFER_MAX_ITEMS`` wait), then go to the spill file; when MongoDB answers again the spill
is replayed in order and removed. When the buffer is full and the spill cannot take more
(``MONGO_SPILL_MAX_BYTES``), or MongoDB is reachable but slower than the crawl, the engine is
paused until the buffer drains to half.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import bson
from bson import ObjectId
from bson.errors import InvalidDocument
from itemadapter import ItemAdapter
from pymongo import MongoClient, UpdateOne, WriteConcern
from pymongo.errors import (
    BulkWriteError,
    ConfigurationError,
    ConnectionFailure,
    OperationFailure,
    PyMongoError,
)
from scrapy.exceptions import NotConfigured
from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future
from scrapy.utils.misc import load_object
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from crawlproj.pipelines.spill import SpillFile, SpillRecord, SpillWriter, claim_spill_files
from crawlproj.politeness.timing import LatencySampler
from crawlproj.setting_checks import float_at_least, int_at_least, positive_float, typed_setting
from crawlproj.wire.urls import BadURL, fingerprint_hex

if TYPE_CHECKING:
    from pymongo.collection import Collection
    from pymongo.database import Database
    from scrapy.core.engine import ExecutionEngine
    from scrapy.crawler import Crawler
    from twisted.internet.interfaces import IDelayedCall

logger = logging.getLogger(__name__)

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
#: The retry back-off stops doubling here (it is capped by MONGO_RETRY_BACKOFF_MAX long before).
MAX_DOUBLINGS = 32
#: Characters of an error message (which may quote the offending value) put in a log line.
MESSAGE_LIMIT = 300

INDEX_OPTIONS = frozenset({"name", "unique", "sparse", "expireAfterSeconds", "partialFilterExpression"})
INDEX_DIRECTIONS = (1, -1, "hashed", "text", "2d", "2dsphere")
WRITE_CONCERN_KEYS = frozenset({"w", "j", "wtimeout", "fsync"})


class IndexCheckError(RuntimeError):
    """A query path in MONGO_QUERY_PATHS has no index, or a declared index could not be made."""


class TransientWriteError(PyMongoError):
    """A bulk write the server answered with a retryable error (write concern, not primary)."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


# -- settings -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexSpec:
    keys: tuple[tuple[str, int | str], ...]
    collection: str | None  # None: every collection the pipeline writes
    options: dict[str, Any]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.keys)

    def describe(self) -> str:
        keys = ", ".join(f"{name}: {direction}" for name, direction in self.keys)
        return "{" + keys + "}" + (f" {self.options}" if self.options else "")


@dataclass(frozen=True)
class QueryPath:
    fields: tuple[str, ...]  # equality fields of one query shape, e.g. ("host", "fetched_at")
    collection: str | None

    def describe(self) -> str:
        return "+".join(self.fields)


def _redact(uri: str) -> str:
    """The URI without its user info, for log lines and error messages."""
    return re.sub(r"(mongodb(?:\+srv)?://)[^@/]*@", r"\1***@", uri)


def _json_dict(settings: Any, name: str) -> dict[str, Any]:
    value: dict[str, Any] = typed_setting(settings, name, settings.getdict, "a dict (or a JSON object)")
    return value


def _json_list(settings: Any, name: str) -> list[Any]:
    """A list setting given as a list, JSON (``-s NAME='["a", ["b", "c"]]'``) or ``a,b``."""
    raw = settings.get(name)
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            try:
                raw = json.loads(text)
            except ValueError as exc:
                raise ValueError(f"{name}: expected a JSON list, got {raw!r}: {exc}") from exc
        else:
            raw = [part.strip() for part in text.split(",") if part.strip()]
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"{name}: expected a list, got {raw!r}")
    return list(raw)


def _check_collection_name(setting: str, value: Any) -> str:
    if not isinstance(value, str) or not value or "$" in value or "\0" in value or value.startswith("system."):
        raise ValueError(f"{setting}: expected a MongoDB collection name (non-empty, no '$', not "
                         f"'system.*'), got {value!r}")
    return value


def _field_list(setting: str, value: Any) -> tuple[str, ...]:
    fields = (value,) if isinstance(value, str) else value
    if (not isinstance(fields, (list, tuple)) or not fields
            or not all(isinstance(f, str) and f and not f.startswith("$") for f in fields)):
        raise ValueError(f"{setting}: expected a field name or a list of field names, got {value!r}")
    return tuple(fields)


def _index_keys(setting: str, value: Any) -> tuple[tuple[str, int | str], ...]:
    """``"f"``, ``["a", "b"]`` (ascending), ``[["a", 1], ["b", -1]]`` or ``{"a": 1, "b": -1}``."""
    pairs: list[Any]
    if isinstance(value, str):
        pairs = [[value, 1]]
    elif isinstance(value, dict):
        pairs = [[k, v] for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        pairs = [[v, 1] if isinstance(v, str) else v for v in value]
    else:
        pairs = []
    keys: list[tuple[str, int | str]] = []
    for pair in pairs:
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2 or not isinstance(pair[0], str)
                or not pair[0] or pair[1] not in INDEX_DIRECTIONS or isinstance(pair[1], bool)):
            raise ValueError(f"{setting}: expected index keys as a field name, a list of field names, "
                             f"[[field, direction], ...] or {{field: direction}} with a direction in "
                             f"{INDEX_DIRECTIONS}, got {value!r}")
        keys.append((pair[0], pair[1]))
    if not keys:
        raise ValueError(f"{setting}: expected at least one index key, got {value!r}")
    return tuple(keys)


@dataclass(frozen=True)
class MongoConfig:
    uri: str
    database: str
    collection: str
    collections: dict[type, str]
    batch_size: int
    flush_interval: float
    write_concern: dict[str, Any]
    indexes: tuple[IndexSpec, ...]
    query_paths: tuple[QueryPath, ...]
    allow_unindexed: bool
    spill_dir: Path
    spill_max_bytes: int
    spill_after: float
    buffer_max_items: int
    retry_backoff_min: float
    retry_backoff_max: float
    connect_timeout: float
    socket_timeout: float
    stats_interval: float

    @property
    def collection_names(self) -> list[str]:
        return list(dict.fromkeys([self.collection, *self.collections.values()]))

    def indexes_for(self, collection: str) -> list[IndexSpec]:
        return [s for s in self.indexes if s.collection in (None, collection)]

    def query_paths_for(self, collection: str) -> list[QueryPath]:
        return [q for q in self.query_paths if q.collection in (None, collection)]

    @classmethod
    def read(cls, settings: Any) -> MongoConfig:
        """Read and validate every ``MONGO_*`` setting; NotConfigured when MONGO_URI is empty."""
        uri = settings.get("MONGO_URI") or ""
        if not isinstance(uri, str):
            raise ValueError(f"MONGO_URI: expected a mongodb:// URI string, got {type(uri).__name__}")
        uri = uri.strip()
        if not uri:
            raise NotConfigured("MONGO_URI is empty: the MongoDB pipeline is off")
        if not uri.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError(f"MONGO_URI: expected a mongodb:// or mongodb+srv:// URI, got {_redact(uri)!r}")
        if uri.startswith("mongodb://"):  # +srv would need DNS: checked when the client starts
            from pymongo.uri_parser import parse_uri

            try:
                parse_uri(uri)
            except (ConfigurationError, ValueError) as exc:
                raise ValueError(f"MONGO_URI: not a valid MongoDB URI ({_redact(uri)!r}): {exc}") from exc

        database = settings.get("MONGO_DATABASE")
        if not isinstance(database, str) or not database or re.search(r'[/\\. "$\0]', database):
            raise ValueError(f"MONGO_DATABASE: expected a database name without / \\ . space \" $, "
                             f"got {database!r}")
        collection = _check_collection_name("MONGO_COLLECTION", settings.get("MONGO_COLLECTION"))

        collections: dict[type, str] = {}
        for path, name in _json_dict(settings, "MONGO_COLLECTIONS").items():
            try:
                item_class = load_object(path) if isinstance(path, str) else path
            except (ImportError, AttributeError, NameError, ValueError) as exc:
                raise ValueError(f"MONGO_COLLECTIONS: expected importable item classes as keys, cannot "
                                 f"import item class {path!r}: {exc}") from exc
            if not isinstance(item_class, type):
                raise ValueError(f"MONGO_COLLECTIONS: expected item classes as keys, {path!r} is "
                                 f"a {type(item_class).__name__}")
            collections[item_class] = _check_collection_name(f"MONGO_COLLECTIONS[{path!r}]", name)
        written = {collection, *collections.values()}

        write_concern = _json_dict(settings, "MONGO_WRITE_CONCERN")
        unknown = set(write_concern) - WRITE_CONCERN_KEYS
        w = write_concern.get("w", 1)
        if (unknown or w == 0 or isinstance(w, bool)
                or not ((isinstance(w, int) and w > 0) or (isinstance(w, str) and w))):
            raise ValueError(f"MONGO_WRITE_CONCERN: expected {{'w': 'majority' | N >= 1, 'j': bool, "
                             f"'wtimeout': ms}} (w=0 is unacknowledged and breaks the durability "
                             f"contract), got {write_concern!r}")
        try:
            WriteConcern(**write_concern)
        except (ConfigurationError, TypeError, ValueError) as exc:
            raise ValueError(f"MONGO_WRITE_CONCERN: {exc} (got {write_concern!r})") from exc

        indexes = []
        for i, raw in enumerate(_json_list(settings, "MONGO_INDEXES")):
            setting = f"MONGO_INDEXES[{i}]"
            spec = {"keys": raw} if isinstance(raw, str) else raw
            if not isinstance(spec, dict) or "keys" not in spec:
                raise ValueError(f"{setting}: expected a field name or a dict with 'keys', got {raw!r}")
            options = {k: v for k, v in spec.items() if k not in ("keys", "collection")}
            if set(options) - INDEX_OPTIONS:
                raise ValueError(f"{setting}: unknown index options {sorted(set(options) - INDEX_OPTIONS)}; "
                                 f"expected some of {sorted(INDEX_OPTIONS)}")
            target = spec.get("collection")
            if target is not None and target not in written:
                raise ValueError(f"{setting}: collection {target!r} is not written by the pipeline "
                                 f"(MONGO_COLLECTION / MONGO_COLLECTIONS: {sorted(written)})")
            indexes.append(IndexSpec(_index_keys(setting, spec["keys"]), target, options))

        query_paths = []
        for i, raw in enumerate(_json_list(settings, "MONGO_QUERY_PATHS")):
            setting = f"MONGO_QUERY_PATHS[{i}]"
            spec = raw if isinstance(raw, dict) else {"fields": raw}
            target = spec.get("collection")
            if set(spec) - {"fields", "collection"} or (target is not None and target not in written):
                raise ValueError(f"{setting}: expected a field, a list of fields or "
                                 f"{{'fields': [...], 'collection': one of {sorted(written)}}}, got {raw!r}")
            query_paths.append(QueryPath(_field_list(setting, spec.get("fields")), target))

        backoff_min = positive_float(settings, "MONGO_RETRY_BACKOFF_MIN", "seconds > 0")
        backoff_max = float_at_least(settings, "MONGO_RETRY_BACKOFF_MAX", backoff_min,
                                     f"seconds >= MONGO_RETRY_BACKOFF_MIN ({backoff_min})")
        batch_size = int_at_least(settings, "MONGO_BATCH_SIZE", 1)
        buffer_max_items = int_at_least(settings, "MONGO_BUFFER_MAX_ITEMS", batch_size,
                                        f"an integer >= MONGO_BATCH_SIZE ({batch_size})")
        spill_dir = settings.get("MONGO_SPILL_DIR")
        if not isinstance(spill_dir, str) or not spill_dir.strip():
            raise ValueError(f"MONGO_SPILL_DIR: expected a directory path, got {spill_dir!r}")
        return cls(
            uri=uri,
            database=database,
            collection=collection,
            collections=collections,
            batch_size=batch_size,
            flush_interval=positive_float(settings, "MONGO_FLUSH_INTERVAL", "seconds > 0"),
            write_concern=write_concern,
            indexes=tuple(indexes),
            query_paths=tuple(query_paths),
            allow_unindexed=typed_setting(settings, "MONGO_ALLOW_UNINDEXED", settings.getbool, "True or False"),
            spill_dir=Path(spill_dir),
            spill_max_bytes=int_at_least(settings, "MONGO_SPILL_MAX_BYTES", 0, "bytes >= 0 (0: never spill)"),
            spill_after=float_at_least(settings, "MONGO_SPILL_AFTER", 0.0, "seconds >= 0"),
            buffer_max_items=buffer_max_items,
            retry_backoff_min=backoff_min,
            retry_backoff_max=backoff_max,
            connect_timeout=positive_float(settings, "MONGO_CONNECT_TIMEOUT", "seconds > 0"),
            socket_timeout=positive_float(settings, "MONGO_SOCKET_TIMEOUT", "seconds > 0"),
            stats_interval=positive_float(settings, "MONGO_STATS_INTERVAL", "seconds > 0"),
        )


# -- the units of work ----------------------------------------------------------------------------


@dataclass
class _Entry:
    """One item waiting to become durable (reactor side)."""

    collection: str
    doc_id: str
    url: str
    fields: dict[str, Any]
    seen_at: datetime
    enqueued: float  # time.monotonic()
    done: Deferred[str]


@dataclass
class _Op:
    """One idempotent upsert; its ``op_id`` never changes once it may have reached the server."""

    op_id: str
    collection: str
    doc_id: str
    update: dict[str, Any]
    items: int
    members: list[int] = field(default_factory=list)  # indexes into the batch's entries


@dataclass
class _Invalid:
    index: int  # into the batch's entries
    kind: str
    message: str


@dataclass
class _Batch:
    entries: list[_Entry]
    ops: list[_Op] | None = None  # set by _prepare (worker thread), fixed from then on
    invalid: list[_Invalid] = field(default_factory=list)
    invalid_reported: bool = False

    @property
    def oldest(self) -> float:
        return self.entries[0].enqueued if self.entries else time.monotonic()


@dataclass
class _WriteOutcome:
    bulk_writes: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    invalid: dict[str, tuple[str, str]] = field(default_factory=dict)  # op_id -> (kind, message)
    already_applied: int = 0


@dataclass
class _ReplayOutcome:
    write: _WriteOutcome
    records: int
    items: int
    eof: bool
    torn_bytes: int
    bad_lines: int
    invalid_items: int


# -- the pipeline ---------------------------------------------------------------------------------


class MongoPipeline:
    """Upsert every item into MongoDB; see the module docstring and README "MongoDB pipeline"."""

    def __init__(self, crawler: Crawler, config: MongoConfig):
        self.crawler = crawler
        self.stats = crawler.stats
        self.config = config
        self._collection_by_type: dict[type, str] = {}
        self._buffer: deque[_Entry] = deque()
        self._doubt: _Batch | None = None  # a batch sent (perhaps applied) but not acknowledged
        self._backlog: list[SpillFile] = []  # spill files to replay, oldest first
        self._writer = SpillWriter(config.spill_dir)
        self._pool: ThreadPool | None = None
        self._pool_trigger: Any = None
        self._client: MongoClient[dict[str, Any]] | None = None
        self._db: Database[dict[str, Any]] | None = None
        self._collections: dict[str, Collection[dict[str, Any]]] = {}
        self._max_bson_size = DEFAULT_MAX_BSON_SIZE
        self._indexes_checked = False
        self._busy = False
        self._healthy = True
        self._fatal: Exception | None = None
        self._failures = 0  # consecutive failed attempts
        self._outage_started = 0.0
        self._outage_spilled = 0
        self._retry_at = 0.0
        self._spill_blocked_until = 0.0
        self._closing = False
        self._drained: Deferred[None] | None = None
        self._wakeup: IDelayedCall | None = None
        self._stats_loop: LoopingCall | None = None
        self._engine_paused = False
        self._warned_fields: set[str] = set()
        self._write_latency = LatencySampler("mongo/write_latency_ms")  # one bulk_write
        self._item_wait = LatencySampler("mongo/item_wait_ms")  # process_item until durable

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> MongoPipeline:
        return cls(crawler, MongoConfig.read(crawler.settings))

    # -- Scrapy hooks -------------------------------------------------------------------------------

    async def open_spider(self) -> None:
        from twisted.internet import reactor

        config = self.config
        try:
            config.spill_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RuntimeError(f"MONGO_SPILL_DIR: expected a directory that exists or can be created, "
                               f"got {str(config.spill_dir)!r}: {exc}") from exc
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="crawlproj-mongo")
        self._pool.start()
        # the thread is not a daemon: stop it with the reactor even if close_spider never runs
        self._pool_trigger = reactor.addSystemEventTrigger("during", "shutdown", self._pool.stop)
        logger.info("MongoDB pipeline: %s database %r collection %r%s, batches of %d or every %.2fs, "
                    "write concern %s, spill directory %s", _redact(config.uri), config.database,
                    config.collection,
                    f" (+ {sorted(set(config.collections.values()) - {config.collection})})"
                    if config.collections else "",
                    config.batch_size, config.flush_interval, config.write_concern, config.spill_dir,
                    extra=self._log_extra())
        try:
            await maybe_deferred_to_future(deferToThreadPool(reactor, self._pool, self._connect))
            await maybe_deferred_to_future(deferToThreadPool(reactor, self._pool, self._check_indexes))
        except ConnectionFailure as exc:
            # Start anyway: items are kept and spilled; the index check runs before the first write.
            logger.warning("MongoDB at %s is unreachable at start (%s: %s); crawling on, items will be "
                           "spilled to %s until it answers", _redact(config.uri), type(exc).__name__,
                           str(exc)[:MESSAGE_LIMIT], config.spill_dir, extra=self._log_extra())
            self._write_failed(exc, log=False)
        except (IndexCheckError, PyMongoError) as exc:
            await self._shutdown_worker()
            if isinstance(exc, IndexCheckError):
                raise
            raise RuntimeError(f"MongoDB at {_redact(config.uri)} refused to start the pipeline: "
                               f"{type(exc).__name__}: {exc}") from exc
        self._backlog = claim_spill_files(config.spill_dir)
        if self._backlog:
            logger.warning("Replaying %d spill files (%d bytes) found in %s before writing new items",
                           len(self._backlog), sum(f.remaining for f in self._backlog), config.spill_dir,
                           extra=self._log_extra())
        self._stats_loop = LoopingCall(self._publish_stats)
        self._stats_loop.start(config.stats_interval, now=False)
        self._pump()

    async def process_item(self, item: Any) -> Any:
        entry = self._make_entry(item)
        if entry is None:
            return item
        self._buffer.append(entry)
        self._pump()
        await maybe_deferred_to_future(entry.done)
        return item

    async def close_spider(self) -> None:
        if self._pool is None:  # open_spider failed and has already cleaned up
            return
        self._closing = True
        self._drained = Deferred()
        try:
            self._pump()
            await maybe_deferred_to_future(self._drained)
        finally:
            if self._wakeup is not None and self._wakeup.active():
                self._wakeup.cancel()
            if self._stats_loop is not None and self._stats_loop.running:
                self._stats_loop.stop()
            self._set_engine_paused(False)
            self._publish_stats()
            left = self._spill_bytes()
            await self._shutdown_worker()
        if left:
            logger.warning("%d bytes of items stay in spill files in %s: the next node that opens with "
                           "this MONGO_SPILL_DIR replays them", left, self.config.spill_dir,
                           extra=self._log_extra())
        logger.info("MongoDB pipeline closed: %d items written in %d batches, %d spilled, %d replayed, "
                    "%d invalid", self.stats.get_value("mongo/items_written", 0),
                    self.stats.get_value("mongo/batches", 0), self.stats.get_value("mongo/spilled_items", 0),
                    self.stats.get_value("mongo/replayed_items", 0),
                    self.stats.get_value("mongo/invalid_items", 0), extra=self._log_extra())

    # -- items --------------------------------------------------------------------------------------

    def _make_entry(self, item: Any) -> _Entry | None:
        adapter = ItemAdapter(item)
        url = adapter.get("url")
        try:
            if not isinstance(url, str):
                raise BadURL(f"the item has no 'url' string (got {type(url).__name__})")
            doc_id = fingerprint_hex(url)
        except BadURL as exc:
            self._count_invalid("BadURL", str(exc), repr(url)[:MESSAGE_LIMIT])
            return None
        fields = adapter.asdict()
        for name in RESERVED_FIELDS.intersection(fields):
            del fields[name]
            if name not in self._warned_fields:
                self._warned_fields.add(name)
                logger.warning("Item field %r is owned by the MongoDB pipeline and is not written",
                               name, extra=self._log_extra())
        return _Entry(self._collection_for(item), doc_id, url, fields, datetime.now(timezone.utc),
                      time.monotonic(), Deferred())

    def _collection_for(self, item: Any) -> str:
        item_type = type(item)
        name = self._collection_by_type.get(item_type)
        if name is None:
            name = next((self.config.collections[c] for c in item_type.__mro__ if c in self.config.collections),
                        self.config.collection)
            self._collection_by_type[item_type] = name
        return name

    def _count_invalid(self, kind: str, message: str, url: str) -> None:
        self.stats.inc_value("mongo/invalid_items")
        self.stats.inc_value(f"mongo/errors/{kind}")
        logger.error("Item %s not written to MongoDB: %s: %s", url, kind, message[:MESSAGE_LIMIT],
                     extra=self._log_extra())

    def _resolve(self, entry: _Entry, status: str) -> None:
        self._item_wait.add((time.monotonic() - entry.enqueued) * 1000)
        if not entry.done.called:  # a cancelled process_item already fired it
            entry.done.callback(status)

    # -- the scheduler of the worker (reactor thread) -----------------------------------------------

    def _pump(self) -> None:
        """Start the next job of the worker if it is idle; otherwise wait for the next deadline."""
        if self._busy or self._pool is None:
            return
        now = time.monotonic()
        job = self._next_job(now)
        if job is not None:
            from twisted.internet import reactor

            func, args, on_done = job
            self._busy = True
            d = deferToThreadPool(reactor, self._pool, func, *args)
            d.addBoth(self._job_done, on_done)
        else:
            self._schedule_wakeup(now)
            self._check_drained()
        self._update_engine_pause()

    def _job_done(self, result: Any, on_done: Callable[[Any], None]) -> None:
        self._busy = False
        try:
            on_done(result)
        except Exception:
            logger.exception("MongoDB pipeline bookkeeping failed", extra=self._log_extra())
        self._pump()

    def _next_job(self, now: float) -> tuple[Callable[..., Any], tuple[Any, ...], Callable[[Any], None]] | None:
        """What the worker does next, in order: write what is in doubt, replay the spill, write a
        due batch (MongoDB healthy); spill what waited too long, probe (MongoDB failing)."""
        if self._fatal is None and self._healthy:
            if self._doubt is not None:
                batch = self._doubt
                return self._write_batch, (batch,), lambda r: self._after_write(batch, r)
            if self._spill_pending():  # older than anything in the buffer: first
                if not self._backlog:
                    detached = self._writer.detach()
                    assert detached is not None
                    self._backlog.append(detached)
                spill = self._backlog[0]
                return self._replay_chunk, (spill,), lambda r: self._after_replay(spill, r)
            if self._buffer and self._flush_due(now):
                batch = self._take_batch(self.config.batch_size)
                return self._write_batch, (batch,), lambda r: self._after_write(batch, r)
            return None
        if self._spill_due(now) and self._can_spill(now):
            doubt = self._doubt
            batches = [] if doubt is None else [doubt]
            self._doubt = None
            if self._buffer:
                batches.append(self._take_batch(self.config.buffer_max_items))
            return self._spill_batches, (batches,), lambda r: self._after_spill(batches, doubt, r)
        if (self._fatal is None and not self._closing and now >= self._retry_at
                and (self._oldest_waiting() is not None or self._spill_pending())):
            return self._probe, (), self._after_probe
        return None

    def _take_batch(self, size: int) -> _Batch:
        count = min(size, len(self._buffer))
        return _Batch([self._buffer.popleft() for _ in range(count)])

    def _flush_due(self, now: float) -> bool:
        return (len(self._buffer) >= self.config.batch_size or self._closing
                or now - self._buffer[0].enqueued >= self.config.flush_interval)

    def _waiting(self) -> int:
        return len(self._buffer) + (len(self._doubt.entries) if self._doubt else 0)

    def _oldest_waiting(self) -> float | None:
        if self._doubt is not None:
            return self._doubt.oldest
        return self._buffer[0].enqueued if self._buffer else None

    def _spill_due(self, now: float) -> bool:
        oldest = self._oldest_waiting()
        if oldest is None:
            return False
        return (self._fatal is not None or self._closing or self._waiting() >= self.config.buffer_max_items
                or now - oldest >= self.config.spill_after)

    def _spill_pending(self) -> bool:
        return bool(self._backlog) or self._writer.size > 0

    def _spill_bytes(self) -> int:
        return sum(f.remaining for f in self._backlog) + self._writer.size

    def _can_spill(self, now: float) -> bool:
        return now >= self._spill_blocked_until and self._spill_bytes() < self.config.spill_max_bytes

    def _schedule_wakeup(self, now: float) -> None:
        from twisted.internet import reactor

        deadlines = []
        oldest = self._oldest_waiting()
        if self._healthy and self._fatal is None and self._buffer:
            deadlines.append(self._buffer[0].enqueued + self.config.flush_interval)
        if not self._healthy and self._fatal is None and not self._closing and (
                oldest is not None or self._spill_pending()):
            deadlines.append(self._retry_at)
        if oldest is not None and (not self._healthy or self._fatal is not None):
            if self._spill_bytes() < self.config.spill_max_bytes:
                deadlines.append(max(oldest + self.config.spill_after, self._spill_blocked_until))
        if not deadlines:
            return
        delay = max(min(deadlines) - now, 0.001)
        if self._wakeup is not None and self._wakeup.active():
            if self._wakeup.getTime() <= reactor.seconds() + delay:
                return
            self._wakeup.cancel()
        self._wakeup = reactor.callLater(delay, self._pump)

    def _check_drained(self) -> None:
        if (self._drained is not None and not self._drained.called and not self._busy and not self._buffer
                and self._doubt is None
                and (not self._spill_pending() or not self._healthy or self._fatal is not None)):
            self._drained.callback(None)

    def _update_engine_pause(self) -> None:
        waiting = self._waiting()
        can_spill_now = (not self._healthy or self._fatal is not None) and self._can_spill(time.monotonic())
        if not self._engine_paused and not self._closing and waiting >= self.config.buffer_max_items \
                and not can_spill_now:
            logger.warning("Pausing the engine: %d items wait for MongoDB (MONGO_BUFFER_MAX_ITEMS=%d) and %s",
                           waiting, self.config.buffer_max_items,
                           "MongoDB is slower than the crawl" if self._healthy else
                           f"the spill is full ({self._spill_bytes()} bytes, MONGO_SPILL_MAX_BYTES="
                           f"{self.config.spill_max_bytes})", extra=self._log_extra())
            self.stats.inc_value("mongo/engine_pauses")
            self._set_engine_paused(True)
        elif self._engine_paused and (waiting <= self.config.buffer_max_items // 2 or self._closing):
            logger.info("Unpausing the engine: %d items wait for MongoDB", waiting, extra=self._log_extra())
            self._set_engine_paused(False)

    def _engine(self) -> ExecutionEngine | None:
        try:
            return self.crawler.engine
        except RuntimeError:  # not crawling (the pipeline driven on its own, e.g. a benchmark)
            return None

    def _set_engine_paused(self, paused: bool) -> None:
        engine = self._engine()
        if paused == self._engine_paused or engine is None:
            return
        self._engine_paused = paused
        if paused:
            engine.pause()
        else:
            engine.unpause()

    # -- results of the worker's jobs (reactor thread) ----------------------------------------------

    def _after_probe(self, result: Any) -> None:
        if isinstance(result, Failure):
            self._job_failed(result)
            return
        logger.warning("MongoDB answers again after %.1fs and %d failed attempts; %d items were spilled "
                       "meanwhile", time.monotonic() - self._outage_started, self._failures,
                       self._outage_spilled, extra=self._log_extra())
        self._healthy = True  # the back-off is reset by the first write that succeeds

    def _after_write(self, batch: _Batch, result: Any) -> None:
        self._report_invalid(batch)
        if isinstance(result, Failure):
            if batch.ops is None:  # never prepared, so never sent: back to the front of the queue
                self._buffer.extendleft(reversed(batch.entries))
            else:
                self._doubt = batch
            self._job_failed(result)
            return
        outcome: _WriteOutcome = result
        self._write_succeeded(outcome)
        self._doubt = None
        assert batch.ops is not None
        written = 0
        for op in batch.ops:
            bad = outcome.invalid.get(op.op_id)
            for index in op.members:
                entry = batch.entries[index]
                if bad is not None:
                    self._count_invalid(bad[0], bad[1], entry.url)
                    self._resolve(entry, "invalid")
                else:
                    written += 1
                    self._resolve(entry, "written")
        self.stats.inc_value("mongo/items_written", written)

    def _after_replay(self, spill: SpillFile, result: Any) -> None:
        if isinstance(result, Failure):
            self._job_failed(result)
            return
        outcome: _ReplayOutcome = result
        self._write_succeeded(outcome.write)
        self.stats.inc_value("mongo/replayed_items", outcome.items - outcome.invalid_items)
        if outcome.invalid_items:
            self.stats.inc_value("mongo/invalid_items", outcome.invalid_items)
            for kind, message in outcome.write.invalid.values():
                self.stats.inc_value(f"mongo/errors/{kind}")
                logger.error("Spilled item not written to MongoDB on replay: %s: %s", kind,
                             message[:MESSAGE_LIMIT], extra=self._log_extra())
        if outcome.torn_bytes:
            self.stats.inc_value("mongo/spill/torn_records")
            logger.warning("Spill file %s ends with a torn record (%d bytes, an append interrupted by a "
                           "crash, never acknowledged): skipped", spill.path, outcome.torn_bytes,
                           extra=self._log_extra())
        if outcome.bad_lines:
            self.stats.inc_value("mongo/spill/bad_records", outcome.bad_lines)
        if outcome.eof:
            self._backlog.remove(spill)
            self.stats.inc_value("mongo/spill/files_replayed")
            logger.info("Replayed and removed spill file %s (%d items)", spill.path, spill.replayed_items,
                        extra=self._log_extra())

    def _after_spill(self, batches: list[_Batch], doubt: _Batch | None, result: Any) -> None:
        for batch in batches:
            self._report_invalid(batch)
        if isinstance(result, Failure):
            exc = result.value
            kind = type(exc).__name__
            self.stats.inc_value(f"mongo/errors/spill/{kind}")
            self._spill_blocked_until = time.monotonic() + self.config.retry_backoff_max
            logger.error("Could not spill %d items to %s (%s: %s); keeping them in memory",
                         sum(len(b.entries) for b in batches), self.config.spill_dir, kind, exc,
                         extra=self._log_extra())
            for batch in reversed(batches):
                if batch is doubt:
                    self._doubt = batch  # its upserts may have been applied: keep their op ids
                else:  # never sent: its items rejoin the queue, except those already rejected
                    rejected = {bad.index for bad in batch.invalid}
                    self._buffer.extendleft(reversed([e for i, e in enumerate(batch.entries)
                                                      if i not in rejected]))
            return
        written, unspillable = result
        spilled = 0
        for position, batch in enumerate(batches):
            assert batch.ops is not None
            for op in batch.ops:
                reason = unspillable.get((position, op.op_id))
                for index in op.members:
                    if reason is None:
                        spilled += 1
                        self._resolve(batch.entries[index], "spilled")
                    else:
                        self._count_invalid("SpillEncodeError", reason, batch.entries[index].url)
                        self._resolve(batch.entries[index], "invalid")
        self.stats.inc_value("mongo/spilled_items", spilled)
        self.stats.inc_value("mongo/spill_bytes", written)
        self._outage_spilled += spilled
        logger.debug("Spilled %d items (%d bytes) to %s", spilled, written, self._writer.path,
                     extra=self._log_extra())

    def _report_invalid(self, batch: _Batch) -> None:
        if batch.invalid_reported or batch.ops is None:
            return
        batch.invalid_reported = True
        for bad in batch.invalid:
            entry = batch.entries[bad.index]
            self._count_invalid(bad.kind, bad.message, entry.url)
            self._resolve(entry, "invalid")

    def _job_failed(self, failure: Failure) -> None:
        exc = failure.value
        if isinstance(exc, IndexCheckError):
            self._set_fatal(exc)
            return
        if not isinstance(exc, PyMongoError):
            logger.error("Unexpected error in the MongoDB pipeline's worker; retrying",
                         exc_info=(failure.type, failure.value, failure.getTracebackObject()),
                         extra=self._log_extra())
        self._write_failed(exc)

    def _write_failed(self, exc: BaseException, log: bool = True) -> None:
        now = time.monotonic()
        kind = getattr(exc, "kind", None) or type(exc).__name__
        self.stats.inc_value(f"mongo/errors/{kind}")
        self.stats.inc_value("mongo/retries")
        self._failures += 1
        doublings = min(self._failures - 1, MAX_DOUBLINGS)
        delay = min(self.config.retry_backoff_min * 2**doublings, self.config.retry_backoff_max)
        self._retry_at = now + delay
        message = str(exc)[:MESSAGE_LIMIT]
        # An unreachable server is weather; anything else (auth, a server bug) needs a person.
        level = logging.WARNING if isinstance(exc, (ConnectionFailure, TransientWriteError)) else logging.ERROR
        if self._healthy:
            self._healthy = False
            self._outage_started = now
            self._outage_spilled = 0
            if log:
                logger.log(level, "MongoDB write failed (%s: %s); retrying with back-off, items wait up to "
                           "%.1fs in memory, then go to the spill file in %s", kind, message,
                           self.config.spill_after, self.config.spill_dir, extra=self._log_extra())
        else:
            logger.log(logging.INFO if level == logging.WARNING else level,
                       "MongoDB still failing (attempt %d, %s: %s); next try in %.1fs", self._failures,
                       kind, message, delay, extra=self._log_extra())

    def _write_succeeded(self, outcome: _WriteOutcome) -> None:
        self._healthy = True
        self._failures = 0
        self.stats.inc_value("mongo/batches", outcome.bulk_writes)
        if outcome.already_applied:
            self.stats.inc_value("mongo/already_applied", outcome.already_applied)
        for ms in outcome.latencies_ms:
            self._write_latency.add(ms)

    def _set_fatal(self, exc: Exception) -> None:
        if self._fatal is not None:
            return
        self._fatal = exc
        self.stats.inc_value(f"mongo/errors/{type(exc).__name__}")
        logger.error("%s; no more writes to MongoDB, items go to the spill file; closing the spider", exc,
                     extra=self._log_extra())
        engine = self._engine()
        if engine is not None and engine.spider is not None:
            deferred_from_coro(engine.close_spider_async(reason="mongo_index_check_failed"))

    def _publish_stats(self) -> None:
        self._write_latency.publish(self.stats)
        self._item_wait.publish(self.stats)
        self.stats.set_value("mongo/spill/backlog_bytes", self._spill_bytes())
        self.stats.set_value("mongo/buffer/items", self._waiting())

    def _log_extra(self) -> dict[str, Any]:
        return {"spider": self.crawler.spider}

    # -- the worker thread: everything that blocks ------------------------------------------------

    def _connect(self) -> None:
        config = self.config
        self._client = MongoClient(config.uri, serverSelectionTimeoutMS=int(config.connect_timeout * 1000),
                                   connectTimeoutMS=int(config.connect_timeout * 1000),
                                   socketTimeoutMS=int(config.socket_timeout * 1000), appname="crawlproj")
        self._db = self._client.get_database(config.database)
        concern = WriteConcern(**config.write_concern)
        self._collections = {name: self._db.get_collection(name, write_concern=concern)
                             for name in config.collection_names}

    def _check_indexes(self) -> None:
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
            message = ("MongoDB index check failed (MONGO_INDEXES / MONGO_QUERY_PATHS): " + "; ".join(problems)
                       + ". Declare the index in MONGO_INDEXES, or set MONGO_ALLOW_UNINDEXED = True to run "
                       "with collection scans")
            if not self.config.allow_unindexed:
                raise IndexCheckError(message)
            logger.warning("%s (MONGO_ALLOW_UNINDEXED is set: running anyway)", message)
        self._indexes_checked = True

    def _probe(self) -> None:
        """While MongoDB fails, a ping decides when to write again (a write would rotate the spill)."""
        assert self._client is not None
        self._client.admin.command("ping")

    def _prepare(self, batch: _Batch) -> None:
        """Validate every item (BSON-encodable, under the size limit) and merge the upserts of one
        document (a URL seen twice in a batch) in their order: later fields win, counts add up."""
        sets: dict[tuple[str, str], dict[str, Any]] = {}
        first_seen: dict[tuple[str, str], datetime] = {}
        members: dict[tuple[str, str], list[int]] = {}
        invalid = []
        limit = self._max_bson_size - DOC_OVERHEAD
        for index, entry in enumerate(batch.entries):
            update = {"$set": entry.fields, "$setOnInsert": {FIRST_SEEN_FIELD: entry.seen_at},
                      "$inc": {FETCH_COUNT_FIELD: 1}}
            try:
                size = len(bson.encode(update))
            except (InvalidDocument, OverflowError, TypeError, ValueError) as exc:
                invalid.append(_Invalid(index, "InvalidDocument", str(exc)))
                continue
            if size > limit:
                invalid.append(_Invalid(index, "DocumentTooLarge", f"{size} bytes encoded; the server "
                                        f"takes documents up to {self._max_bson_size} bytes"))
                continue
            key = (entry.collection, entry.doc_id)
            if key not in sets:
                sets[key], first_seen[key], members[key] = dict(entry.fields), entry.seen_at, [index]
                continue
            combined = {**sets[key], **entry.fields}
            size = len(bson.encode({"$set": combined}))
            if size > limit:
                invalid.append(_Invalid(index, "DocumentTooLarge", f"{size} bytes once merged with an "
                                        f"earlier item of the same URL in this batch"))
                continue
            sets[key] = combined
            members[key].append(index)
        ops = []
        for key, fields in sets.items():
            op_id = str(ObjectId())
            update = {"$set": {**fields, OP_FIELD: op_id}, "$setOnInsert": {FIRST_SEEN_FIELD: first_seen[key]},
                      "$inc": {FETCH_COUNT_FIELD: len(members[key])}}
            ops.append(_Op(op_id, key[0], key[1], update, len(members[key]), members[key]))
        batch.ops = ops
        batch.invalid = invalid

    def _write_batch(self, batch: _Batch) -> _WriteOutcome:
        if batch.ops is None:
            self._prepare(batch)
        assert batch.ops is not None
        if not self._indexes_checked:
            self._check_indexes()
        return self._write_ops(batch.ops)

    def _write_ops(self, ops: list[_Op]) -> _WriteOutcome:
        outcome = _WriteOutcome()
        groups: dict[str, list[_Op]] = {}
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
                self._sort_write_errors(collection, group, exc.details, outcome)
            except InvalidDocument:  # DocumentTooLarge included: pymongo refused the whole batch
                self._write_one_by_one(collection, group, outcome)
            outcome.latencies_ms.append((time.perf_counter() - started) * 1000)
            outcome.bulk_writes += 1
        return outcome

    def _collection(self, name: str) -> Collection[dict[str, Any]]:
        collection = self._collections.get(name)
        if collection is None:  # a spill file written under another MONGO_COLLECTIONS
            assert self._db is not None
            collection = self._db.get_collection(name, write_concern=WriteConcern(**self.config.write_concern))
            self._collections[name] = collection
        return collection

    def _sort_write_errors(self, collection: Collection[dict[str, Any]], group: list[_Op],
                           details: dict[str, Any], outcome: _WriteOutcome) -> None:
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
                verdict = self._resolve_duplicate(collection, op, outcome)
                if verdict is not None:
                    outcome.invalid[op.op_id] = ("write/11000", verdict)
            else:
                outcome.invalid[op.op_id] = (f"write/{code}", str(error.get("errmsg")))

    def _resolve_duplicate(self, collection: Collection[dict[str, Any]], op: _Op,
                           outcome: _WriteOutcome) -> str | None:
        """Why ``op`` cannot be written, or None once it is in place (counting an upsert that had
        been applied before as ``mongo/already_applied``)."""
        doc = collection.find_one({"_id": op.doc_id}, {OP_FIELD: 1})
        if doc is not None and doc.get(OP_FIELD) == op.op_id:
            outcome.already_applied += 1  # a re-sent upsert that had been applied: nothing to do
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

    def _write_one_by_one(self, collection: Collection[dict[str, Any]], group: list[_Op],
                          outcome: _WriteOutcome) -> None:
        for op in group:
            try:
                collection.bulk_write([UpdateOne({"_id": op.doc_id, OP_FIELD: {"$ne": op.op_id}}, op.update,
                                                 upsert=True)], ordered=False)
            except BulkWriteError as exc:
                self._sort_write_errors(collection, [op], exc.details, outcome)
            except InvalidDocument as exc:
                outcome.invalid[op.op_id] = (type(exc).__name__, str(exc))

    def _replay_chunk(self, spill: SpillFile) -> _ReplayOutcome:
        if not self._indexes_checked:
            self._check_indexes()
        chunk = spill.read_chunk(self.config.batch_size)
        ops = [_Op(r.op_id, r.collection, r.doc_id, r.update, r.items) for r in chunk.records]
        outcome = self._write_ops(ops) if ops else _WriteOutcome()
        invalid_items = sum(op.items for op in ops if op.op_id in outcome.invalid)
        items = sum(op.items for op in ops)
        if chunk.eof:
            spill.remove()
        else:
            spill.commit(chunk.end_offset)
        spill.replayed_items += items - invalid_items
        return _ReplayOutcome(outcome, len(ops), items, chunk.eof, chunk.torn_bytes, chunk.bad_lines,
                              invalid_items)

    def _spill_batches(self, batches: list[_Batch]) -> tuple[int, dict[tuple[int, str], str]]:
        """Append the batches' upserts to the spill file and fsync; return the bytes written and
        the upserts Extended JSON could not encode (none that BSON can encode, but never a poison
        pill that blocks the spill)."""
        records = []
        unspillable: dict[tuple[int, str], str] = {}
        for position, batch in enumerate(batches):
            if batch.ops is None:
                self._prepare(batch)
            assert batch.ops is not None
            for op in batch.ops:
                try:
                    records.append(SpillRecord(op.op_id, op.collection, op.doc_id, op.update, op.items).encode())
                except (TypeError, ValueError, OverflowError) as exc:
                    unspillable[(position, op.op_id)] = str(exc)
        return self._writer.append(records), unspillable

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _shutdown_worker(self) -> None:
        from twisted.internet import reactor

        if self._pool is None:
            return
        try:
            await maybe_deferred_to_future(deferToThreadPool(reactor, self._pool, self._close_client))
        finally:
            try:
                reactor.removeSystemEventTrigger(self._pool_trigger)
            except ValueError:  # the reactor is shutting down and has run it already
                pass
            if self._pool.started:
                self._pool.stop()
            self._pool = None
            self._writer.close()
            for spill in self._backlog:
                spill.close()
