"""The ``MONGO_*`` settings of the MongoDB pipeline, read and checked once.

``MongoConfig.from_settings(settings)`` is pure: every bad value is a ValueError naming the
setting, the value and what is expected; ``MongoPipeline.from_crawler`` decides
``NotConfigured`` (``MongoConfig.enabled``: MONGO_URI is set). Defaults and meanings live in
crawlproj/settings.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pymongo import WriteConcern
from pymongo.errors import ConfigurationError
from scrapy.utils.misc import load_object

from crawlproj.setting_checks import (
    bool_setting,
    check_setting,
    dict_setting,
    float_at_least,
    int_at_least,
    list_setting,
    positive_float,
)

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

INDEX_OPTIONS = frozenset({"name", "unique", "sparse", "expireAfterSeconds", "partialFilterExpression"})
INDEX_DIRECTIONS = (1, -1, "hashed", "text", "2d", "2dsphere")
SPILL_SUBDIR = "mongo-spill"  # under CRAWLPROJ_STATE_DIR while MONGO_SPILL_DIR is empty
WRITE_CONCERN_KEYS = frozenset({"w", "j", "wtimeout", "fsync"})


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


def redact(uri: str) -> str:
    """The URI without its user info, for log lines and error messages."""
    return re.sub(r"(mongodb(?:\+srv)?://)[^@/]*@", r"\1***@", uri)


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


def _uri(settings: BaseSettings) -> str:
    uri = settings.get("MONGO_URI") or ""
    if not isinstance(uri, str):
        raise ValueError(f"MONGO_URI: expected a mongodb:// URI string, got {type(uri).__name__}")
    return uri.strip()


def _collections(settings: BaseSettings) -> dict[type, str]:
    collections: dict[type, str] = {}
    for path, name in dict_setting(settings, "MONGO_COLLECTIONS").items():
        try:
            item_class = load_object(path) if isinstance(path, str) else path
        except (ImportError, AttributeError, NameError, ValueError) as exc:
            raise ValueError(f"MONGO_COLLECTIONS: expected importable item classes as keys, cannot "
                             f"import item class {path!r}: {exc}") from exc
        if not isinstance(item_class, type):
            raise ValueError(f"MONGO_COLLECTIONS: expected item classes as keys, {path!r} is "
                             f"a {type(item_class).__name__}")
        collections[item_class] = _check_collection_name(f"MONGO_COLLECTIONS[{path!r}]", name)
    return collections


def _write_concern(settings: BaseSettings) -> dict[str, Any]:
    write_concern = dict_setting(settings, "MONGO_WRITE_CONCERN")
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
    return write_concern


def _indexes(settings: BaseSettings, written: set[str]) -> tuple[IndexSpec, ...]:
    indexes = []
    for i, raw in enumerate(list_setting(settings, "MONGO_INDEXES")):
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
    return tuple(indexes)


def _query_paths(settings: BaseSettings, written: set[str]) -> tuple[QueryPath, ...]:
    query_paths = []
    for i, raw in enumerate(list_setting(settings, "MONGO_QUERY_PATHS")):
        setting = f"MONGO_QUERY_PATHS[{i}]"
        spec = raw if isinstance(raw, dict) else {"fields": raw}
        target = spec.get("collection")
        if set(spec) - {"fields", "collection"} or (target is not None and target not in written):
            raise ValueError(f"{setting}: expected a field, a list of fields or "
                             f"{{'fields': [...], 'collection': one of {sorted(written)}}}, got {raw!r}")
        query_paths.append(QueryPath(_field_list(setting, spec.get("fields")), target))
    return tuple(query_paths)


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

    @staticmethod
    def enabled(settings: BaseSettings) -> bool:
        """Whether MONGO_URI is set (the pipeline is off while it is empty)."""
        return bool(_uri(settings))

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> MongoConfig:
        """Read and check every ``MONGO_*`` setting; ValueError naming the first bad one."""
        uri = _uri(settings)
        if not uri.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError(f"MONGO_URI: expected a mongodb:// or mongodb+srv:// URI, got {redact(uri)!r}")
        if uri.startswith("mongodb://"):  # +srv would need DNS: checked when the client starts
            from pymongo.uri_parser import parse_uri

            try:
                parse_uri(uri)
            except (ConfigurationError, ValueError) as exc:
                raise ValueError(f"MONGO_URI: not a valid MongoDB URI ({redact(uri)!r}): {exc}") from exc

        database = settings.get("MONGO_DATABASE")
        if not isinstance(database, str) or not database or re.search(r'[/\\. "$\0]', database):
            raise ValueError(f"MONGO_DATABASE: expected a database name without / \\ . space \" $, "
                             f"got {database!r}")
        collection = _check_collection_name("MONGO_COLLECTION", settings.get("MONGO_COLLECTION"))
        collections = _collections(settings)
        written = {collection, *collections.values()}
        write_concern = _write_concern(settings)
        indexes = _indexes(settings, written)
        query_paths = _query_paths(settings, written)

        backoff_min = positive_float(settings, "MONGO_RETRY_BACKOFF_MIN", "seconds > 0")
        backoff_max = float_at_least(settings, "MONGO_RETRY_BACKOFF_MAX", backoff_min,
                                     f"seconds >= MONGO_RETRY_BACKOFF_MIN ({backoff_min})")
        batch_size = int_at_least(settings, "MONGO_BATCH_SIZE", 1)
        buffer_max_items = int_at_least(settings, "MONGO_BUFFER_MAX_ITEMS", batch_size,
                                        f"an integer >= MONGO_BATCH_SIZE ({batch_size})")
        spill_dir = spill_dir_of(settings)
        return cls(
            uri=uri,
            database=database,
            collection=collection,
            collections=collections,
            batch_size=batch_size,
            flush_interval=positive_float(settings, "MONGO_FLUSH_INTERVAL", "seconds > 0"),
            write_concern=write_concern,
            indexes=indexes,
            query_paths=query_paths,
            allow_unindexed=bool_setting(settings, "MONGO_ALLOW_UNINDEXED", "True or False"),
            spill_dir=spill_dir,
            spill_max_bytes=int_at_least(settings, "MONGO_SPILL_MAX_BYTES", 0, "bytes >= 0 (0: never spill)"),
            spill_after=float_at_least(settings, "MONGO_SPILL_AFTER", 0.0, "seconds >= 0"),
            buffer_max_items=buffer_max_items,
            retry_backoff_min=backoff_min,
            retry_backoff_max=backoff_max,
            connect_timeout=positive_float(settings, "MONGO_CONNECT_TIMEOUT", "seconds > 0"),
            socket_timeout=positive_float(settings, "MONGO_SOCKET_TIMEOUT", "seconds > 0"),
            stats_interval=positive_float(settings, "MONGO_STATS_INTERVAL", "seconds > 0"),
        )


def spill_dir_of(settings: BaseSettings) -> Path:
    """``MONGO_SPILL_DIR``, or ``<CRAWLPROJ_STATE_DIR>/mongo-spill`` when it is empty; a directory
    that exists or can be created (nothing is created here)."""
    value = settings.get("MONGO_SPILL_DIR")
    value = "" if value is None else value
    check_setting(isinstance(value, str), "MONGO_SPILL_DIR", value, "a directory path or ''")
    if value.strip():
        name, path = "MONGO_SPILL_DIR", Path(value)
    else:
        name, path = "CRAWLPROJ_STATE_DIR", Path(str(settings.get("CRAWLPROJ_STATE_DIR") or "state"), SPILL_SUBDIR)
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    check_setting(ancestor.is_dir(), name, settings.get(name), f"a place where the spill directory {str(path)!r} "
                  "can be created")
    return path
