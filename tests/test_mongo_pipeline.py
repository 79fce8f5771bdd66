"""The MongoDB pipeline against a MongoDB-protocol server, in real ``scrapy`` processes.

Crawls upsert one document per URL and a re-crawl updates it in place; an outage mid-crawl is
absorbed by the spill and replayed; a node killed with -9 loses nothing it acknowledged; bad items
are counted and skipped; a full buffer and spill pause the engine instead of dropping items.
The outage and kill tests run their own nx-27017 on a fixed port with ``--data-dir`` so it can be
stopped and started again with its data.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import textwrap
import uuid
from contextlib import contextmanager
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from scrapy.utils.misc import load_object
from scrapy.exceptions import NotConfigured
from scrapy.utils.test import get_crawler

from conftest import wait_until
from crawlproj.pipelines.mongo import MongoConfig, MongoPipeline
from crawlproj.pipelines.mongo.writer import HISTORY_FIELDS
from crawlproj.pipelines.spill import SpillRecord, SpillWriter, claim_spill_files
from crawlproj.tools.runner import SYNTHWEB_SETTINGS, crawl_argv, crawl_env
from crawlproj_testing.mongo import NxServer
from crawlproj_testing.synthweb.model import WebSpec
from crawlproj.wire.urls import fingerprint_hex

# Other components (robots.txt, politeness) are tested elsewhere; here they would only slow the
# crawls down. Short MongoDB timeouts make an outage visible within a flush interval or two.
BASE = {
    **SYNTHWEB_SETTINGS,
    "DOWNLOAD_TIMEOUT": 2,
    "LOGSTATS_INTERVAL": 0,
    "LOG_LEVEL": "INFO",
    "ROBOTSTXT_OBEY": False,
    "ROBOTS_THROTTLE_ENABLED": False,
    "MONGO_CONNECT_TIMEOUT": 0.5,
    "MONGO_STATS_INTERVAL": 1.0,
}
OUTAGE = {
    "MONGO_BATCH_SIZE": 20,
    "MONGO_FLUSH_INTERVAL": 0.2,
    "MONGO_SPILL_AFTER": 0.4,
    "MONGO_RETRY_BACKOFF_MIN": 0.2,
    "MONGO_RETRY_BACKOFF_MAX": 0.5,
}
# ~400 pages on hosts without robots.txt surprises, slow enough (latency, 4 connections) that an
# outage can start and end in the middle of the crawl.
SMALL_WEB = WebSpec(seed=11, hosts=8, min_pages=30, max_pages=80, special_share=0.03,
                    slow_host_share=0.0, cross_host_share=0.0, subdomain_share=0.0)
SLOW = {"CONCURRENT_REQUESTS": 4}


@pytest.fixture
def nx_server(tmp_path: Path) -> Iterator[NxServer]:
    server = NxServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def db_name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def connect() -> Iterator[Callable[[str], pymongo.MongoClient[dict[str, Any]]]]:
    """pymongo clients closed before the servers stop (nx-27017 may hang on SIGTERM with clients)."""
    clients: list[pymongo.MongoClient[dict[str, Any]]] = []

    def client(uri: str) -> pymongo.MongoClient[dict[str, Any]]:
        clients.append(pymongo.MongoClient(uri, serverSelectionTimeoutMS=2000))
        return clients[-1]

    yield client
    for c in clients:
        c.close()


def _settings(tmp_path: Path, uri: str, db: str, **extra: Any) -> dict[str, Any]:
    return {**BASE, "MONGO_URI": uri, "MONGO_DATABASE": db, "MONGO_SPILL_DIR": str(tmp_path / "spill"),
            "PROGRESS_STATS_FILE": str(tmp_path / "stats.json"),
            "FEEDS": {str(tmp_path / "items.jl"): {"format": "jsonlines"}}, **extra}


def _run(tmp_path: Path, settings: dict[str, Any], spider_args: dict[str, Any],
         timeout: float = 120) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """One `scrapy crawl broad` to its end: items (feed), stats (stats file), stderr."""
    (tmp_path / "items.jl").unlink(missing_ok=True)
    (tmp_path / "stats.json").unlink(missing_ok=True)
    proc = subprocess.run(crawl_argv("broad", settings, spider_args), env=crawl_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _items(tmp_path), _stats(tmp_path), proc.stderr


def _items(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "items.jl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _stats(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "stats.json").read_text())


def _spill_files(spill_dir: Path) -> list[Path]:
    return sorted(spill_dir.glob("spill-*.jsonl")) if spill_dir.is_dir() else []


def _spilled_records(spill_dir: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in _spill_files(spill_dir) if p.exists())


def _seeds(web: Any) -> str:
    return ",".join(web.url(h.name) for h in web.web.hosts)


def _assert_one_doc_per_url(coll: Any, items: list[dict[str, Any]], fetch_count: int) -> list[dict[str, Any]]:
    expected = {fingerprint_hex(i["url"]) for i in items}
    docs = list(coll.find())
    assert len(expected) == len(items), "the crawl produced two items for one URL"
    assert len(docs) == len(expected)
    assert {d["_id"] for d in docs} == expected
    assert {d["fetch_count"] for d in docs} == {fetch_count}
    return docs


@contextmanager
def _crawling(tmp_path: Path, settings: dict[str, Any], spider_args: dict[str, Any],
              name: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A `scrapy crawl broad` in the background, its output in ``<name>.log``; killed if left running."""
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(crawl_argv("broad", settings, spider_args), env=crawl_env(), cwd=tmp_path,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> str:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"crawl did not finish in {timeout}s: {log.read_text()[-3000:]}")
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


# -- crawls ---------------------------------------------------------------------------------------


def test_crawl_upserts_one_document_per_url_and_a_recrawl_updates_them(synthweb, mongo_uri, db_name,
                                                                       tmp_path, connect):
    # no redirects: a redirect's target is fetched as itself or through the redirect (an item
    # of the redirect's URL), whichever comes first, so two crawls' URLs would differ by timing
    web = synthweb(dataclasses.replace(SMALL_WEB, special_share=0.0))
    settings = _settings(tmp_path, mongo_uri, db_name, MONGO_INDEXES=[{"keys": [["final_url", 1]]}],
                         MONGO_QUERY_PATHS=["final_url"])
    items, stats, log = _run(tmp_path, settings, {"seeds": _seeds(web)})
    assert 150 < len(items) < 800
    coll = connect(mongo_uri)[db_name]["pages"]
    docs = _assert_one_doc_per_url(coll, items, fetch_count=1)
    by_url = {i["url"]: i for i in items}
    for doc in docs:
        item = by_url[doc["url"]]
        assert {k: doc[k] for k in item} == item  # every field of the item, as scraped
        assert set(doc) == set(item) | {"_id", "_op"} | HISTORY_FIELDS
    assert stats["mongo/items_written"] == stats["item_scraped_count"] == len(items)
    assert stats["mongo/batches"] >= len(items) // 100
    assert 0 < stats["mongo/write_latency_ms/p50"] <= stats["mongo/write_latency_ms/p99"]
    assert "mongo/invalid_items" not in stats and "mongo/retries" not in stats
    # the index self-check created the declared index, read it back and logged it
    assert any(list(ix["key"]) == ["final_url"] for ix in coll.list_indexes())
    assert f"MongoDB indexes on {db_name}.pages:" in log and "final_url" in log

    first = {d["_id"]: d for d in docs}
    items2, stats2, _ = _run(tmp_path, settings, {"seeds": _seeds(web)})
    assert {i["url"] for i in items2} == {i["url"] for i in items}
    docs2 = _assert_one_doc_per_url(coll, items2, fetch_count=2)
    for doc in docs2:
        assert doc["first_seen"] == first[doc["_id"]]["first_seen"]  # $setOnInsert: first crawl's
        assert doc["fetched_at"] > first[doc["_id"]]["fetched_at"]  # $set: the second crawl's
    assert stats2["mongo/items_written"] == len(items2)


def test_index_self_check_refuses_to_start_without_an_index_for_a_query_path(mongo_uri, db_name, tmp_path):
    settings = _settings(tmp_path, mongo_uri, db_name, MONGO_QUERY_PATHS=[["status", "depth"]])
    args = crawl_argv("broad", settings, {"seeds": "http://nowhere.test:9/", "max_depth": 0})
    proc = subprocess.run(args, env=crawl_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    line = "ERROR: MONGO_QUERY_PATHS / MONGO_INDEXES: MongoDB index check failed: query path 'status+depth' has no index"
    assert line in proc.stderr and "MONGO_ALLOW_UNINDEXED" in proc.stderr and "Traceback" not in proc.stderr
    assert "Spider closed (mongo_index_check_failed)" in proc.stderr
    # an index whose leading keys are the path's fields (any order) covers it
    ok = {**settings, "MONGO_INDEXES": [{"keys": ["depth", "status", "url"], "name": "by_depth_status"}]}
    subprocess.run(crawl_argv("broad", ok, {"seeds": "http://nowhere.test:9/", "max_depth": 0}),
                   env=crawl_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    # the override: run anyway, with the problem in the log
    anyway = {**settings, "MONGO_QUERY_PATHS": ["title"], "MONGO_ALLOW_UNINDEXED": True}
    _, _, log = _run(tmp_path, anyway, {"seeds": "http://nowhere.test:9/", "max_depth": 0})
    assert "query path 'title' has no index" in log and "MONGO_ALLOW_UNINDEXED is set: running anyway" in log


# -- outages --------------------------------------------------------------------------------------


def test_outage_mid_crawl_spills_then_replays_every_item_once(synthweb, nx_server, db_name, tmp_path,
                                                              connect):
    web = synthweb(dataclasses.replace(SMALL_WEB, base_latency_ms=60))
    spill_dir = tmp_path / "spill"
    settings = _settings(tmp_path, nx_server.uri, db_name, **OUTAGE, **SLOW)
    coll = connect(nx_server.uri)[db_name]["pages"]
    with _crawling(tmp_path, settings, {"seeds": _seeds(web)}, "crawl") as (proc, log):
        wait_until(lambda: coll.count_documents({}) >= 40, 60, "40 documents written before the outage")
        nx_server.stop()
        # several flush intervals of real connection failures, spilled batch by batch
        wait_until(lambda: (_spilled_records(spill_dir) >= 60
                            and log.read_text().count("MongoDB still failing") >= 3),
                   60, "60 upserts spilled and 4 failed attempts during the outage")
        assert proc.poll() is None, "the crawl ended during the outage; make the web bigger"
        nx_server.start()
        text = _finish(proc, log)
    items, stats = _items(tmp_path), _stats(tmp_path)
    _assert_one_doc_per_url(coll, items, fetch_count=1)
    assert stats["mongo/spilled_items"] >= 60
    assert stats["mongo/replayed_items"] == stats["mongo/spilled_items"]
    assert stats["mongo/items_written"] + stats["mongo/replayed_items"] == len(items)
    assert stats["mongo/retries"] >= 4
    connection_errors = ("ServerSelectionTimeoutError", "AutoReconnect")
    assert sum(stats.get(f"mongo/errors/{kind}", 0) for kind in connection_errors) >= 4
    assert stats["mongo/spill/files_replayed"] >= 1 and stats["mongo/spill/backlog_bytes"] == 0
    assert _spill_files(spill_dir) == [] and not list(spill_dir.glob("*.done"))
    assert "MongoDB write failed" in text and "MongoDB answers again" in text


def test_mongodb_down_at_start_the_crawl_spills_and_checks_indexes_when_it_answers(synthweb, nx_server,
                                                                                   db_name, tmp_path,
                                                                                   connect):
    web = synthweb(dataclasses.replace(SMALL_WEB, base_latency_ms=60))
    spill_dir = tmp_path / "spill"
    nx_server.stop()
    settings = _settings(tmp_path, nx_server.uri, db_name, **OUTAGE, **SLOW,
                         MONGO_INDEXES=["final_url"], MONGO_QUERY_PATHS=["final_url"])
    with _crawling(tmp_path, settings, {"seeds": _seeds(web)}, "crawl") as (proc, log):
        wait_until(lambda: _spilled_records(spill_dir) >= 30, 60, "30 upserts spilled")
        assert "is unreachable at start" in log.read_text()
        nx_server.start()
        text = _finish(proc, log)
    items, stats = _items(tmp_path), _stats(tmp_path)
    coll = connect(nx_server.uri)[db_name]["pages"]
    _assert_one_doc_per_url(coll, items, fetch_count=1)
    assert any(list(ix["key"]) == ["final_url"] for ix in coll.list_indexes())
    # the check ran before the first write, after MongoDB answered
    assert text.index("MongoDB answers again") < text.index(f"MongoDB indexes on {db_name}.pages")
    assert stats["mongo/replayed_items"] == stats["mongo/spilled_items"] >= 30


ACK_RECORDER = '''
"""Test extension: one line per item_scraped, i.e. per item whose process_item completed."""
import os

from scrapy import signals


class AckRecorder:
    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    @classmethod
    def from_crawler(cls, crawler):
        ext = cls(crawler.settings.get("ACK_LOG"))
        crawler.signals.connect(ext.item_scraped, signal=signals.item_scraped)
        return ext

    def item_scraped(self, item, response, spider):
        os.write(self.fd, (item["url"] + "\\n").encode())  # in the kernel when kill -9 comes
'''


def test_kill_9_loses_nothing_acknowledged_and_a_restarted_node_replays_the_spill(synthweb, nx_server,
                                                                                  db_name, tmp_path, connect):
    web = synthweb(dataclasses.replace(SMALL_WEB, base_latency_ms=60))
    (tmp_path / "ackrec.py").write_text(ACK_RECORDER)
    acks = tmp_path / "acks.txt"
    spill_dir = tmp_path / "spill"

    def acked() -> list[str]:
        return acks.read_text().splitlines() if acks.exists() else []

    settings = _settings(tmp_path, nx_server.uri, db_name, **OUTAGE, **SLOW, ACK_LOG=str(acks),
                         EXTENSIONS={"ackrec.AckRecorder": 0, "crawlproj.extensions.progress.Progress": None})
    with _crawling(tmp_path, settings, {"seeds": _seeds(web)}, "node1") as (proc, log):
        wait_until(lambda: len(acked()) >= 30, 60, "30 items acknowledged")
        nx_server.stop()
        before_outage = len(acked())
        # acknowledged while MongoDB is down: only the spill file can hold these
        wait_until(lambda: len(acked()) >= before_outage + 40 and _spilled_records(spill_dir) >= 40, 60,
                   "40 items acknowledged through the spill")
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    durable = set(acked())
    orphans = _spill_files(spill_dir)
    assert orphans, "a spill file must outlive the killed node"
    spilled = _spilled_records(spill_dir)
    assert "MongoDB pipeline closed" not in log.read_text()  # it really died mid-crawl

    nx_server.start()
    coll = connect(nx_server.uri)[db_name]["pages"]
    assert coll.count_documents({}) < len(durable)  # the rest is only in the spill file
    # a new node on the same spill directory (no seeds: it only opens, replays and closes)
    restart = _settings(tmp_path, nx_server.uri, db_name, **OUTAGE)
    _, stats, text = _run(tmp_path, restart, {"seeds": ""})
    assert f"Replaying {len(orphans)} spill files" in text
    assert stats["mongo/replayed_items"] >= spilled
    assert _spill_files(spill_dir) == []
    in_db = {d["_id"] for d in coll.find({}, {"_id": 1})}
    missing = {url for url in durable if fingerprint_hex(url) not in in_db}
    assert not missing, sorted(missing)[:10]
    # exactly once: no replayed upsert was applied twice
    assert set(coll.distinct("fetch_count")) == {1}


def test_replayed_upserts_apply_once_and_duplicate_keys_are_told_apart(mongo_uri, db_name, tmp_path, connect):
    coll = connect(mongo_uri)[db_name]["pages"]
    coll.create_index([("final_url", 1)], unique=True)
    # "applied": its upsert reached MongoDB before the node died; "legacy": written by someone else
    coll.insert_many([{"_id": "applied", "_op": "op-applied", "final_url": "a", "fetch_count": 1},
                      {"_id": "legacy", "final_url": "l", "fetch_count": 5}])

    def record(doc_id: str, final_url: str) -> bytes:
        return SpillRecord(op_id=f"op-{doc_id}", collection="pages", doc_id=doc_id, items=1,
                           update={"$set": {"final_url": final_url, "_op": f"op-{doc_id}"},
                                   "$inc": {"fetch_count": 1}}).encode()

    writer = SpillWriter(tmp_path / "spill")
    writer.append([record("applied", "a"), record("legacy", "l"), record("new", "n"),
                   record("clash", "n")])  # a unique index on final_url refuses this one
    writer.close()  # its node is gone
    settings = _settings(tmp_path, mongo_uri, db_name, MONGO_INDEXES=[{"keys": "final_url", "unique": True}])
    _, stats, log = _run(tmp_path, settings, {"seeds": ""})

    counts = {d["_id"]: d["fetch_count"] for d in coll.find()}
    assert counts == {"applied": 1, "legacy": 6, "new": 1}
    assert coll.find_one({"_id": "legacy"})["_op"] == "op-legacy"
    assert stats["mongo/already_applied"] == 1
    assert stats["mongo/replayed_items"] == 3 and stats["mongo/invalid_items"] == 1
    assert stats["mongo/errors/write/11000"] == 1
    assert "duplicate key on a unique index other than _id" in log
    assert _spill_files(tmp_path / "spill") == []


def test_full_buffer_and_full_spill_pause_the_engine_instead_of_dropping(synthweb, nx_server, db_name,
                                                                         tmp_path, connect):
    web = synthweb(dataclasses.replace(SMALL_WEB, base_latency_ms=60))
    concurrency = 4
    # the spill takes one append and is full; 20 waiting items fill the buffer
    settings = _settings(tmp_path, nx_server.uri, db_name, **{**OUTAGE, "MONGO_BATCH_SIZE": 10},
                         CONCURRENT_REQUESTS=concurrency, MONGO_SPILL_MAX_BYTES=1, MONGO_BUFFER_MAX_ITEMS=20)
    coll = connect(nx_server.uri)[db_name]["pages"]
    with _crawling(tmp_path, settings, {"seeds": _seeds(web)}, "crawl") as (proc, log):
        wait_until(lambda: coll.count_documents({}) >= 20, 60, "20 documents written")
        nx_server.stop()
        wait_until(lambda: re.search(r"Pausing the engine: \d+ items wait for MongoDB .* and the spill is full",
                                     log.read_text()), 60, "the engine to be paused")
        fetched_at_pause = len(web.accesses())
        # stay down for a few more failed attempts (the back-off caps at 0.5 s)
        attempts = log.read_text().count("MongoDB still failing")
        wait_until(lambda: log.read_text().count("MongoDB still failing") >= attempts + 4, 60,
                   "four more failed attempts while paused")
        # requests in flight when the engine paused may finish; no new ones start
        assert len(web.accesses()) - fetched_at_pause <= concurrency
        nx_server.start()
        text = _finish(proc, log)
    assert "Unpausing the engine" in text
    items, stats = _items(tmp_path), _stats(tmp_path)
    _assert_one_doc_per_url(coll, items, fetch_count=1)
    assert stats["mongo/engine_pauses"] >= 1
    assert stats.get("mongo/invalid_items", 0) == 0


# -- bad input ------------------------------------------------------------------------------------

ITEM_TYPES = '''
import dataclasses

import attrs
import scrapy


class PageItem(scrapy.Item):
    url = scrapy.Field()
    title = scrapy.Field()


@dataclasses.dataclass
class DataPage:
    url: str
    title: str


@attrs.define
class AttrsPage:
    url: str
    title: str


class Unencodable:
    pass
'''

BAD_SPIDER = '''
import scrapy

from testitems import AttrsPage, DataPage, PageItem, Unencodable

BIG = "x" * (17 * 1024 * 1024)


class BadItems(scrapy.Spider):
    name = "baditems"

    async def start(self):
        yield {"url": "http://good.test/1", "title": "dict"}
        yield PageItem(url="http://good.test/2", title="Item")
        yield DataPage(url="http://good.test/3", title="dataclass")
        yield AttrsPage(url="http://good.test/4", title="attrs")
        yield {"url": "http://bad.test/set", "tags": {"a", "b"}}
        yield {"url": "http://bad.test/object", "thing": Unencodable()}
        yield {"url": "http://bad.test/bigint", "n": 2 ** 70}
        yield {"url": "http://bad.test/huge", "body": BIG}
        yield {"title": "no url at all"}
        yield {"url": "ftp://bad.test/scheme"}
        yield {"url": "http://good.test/5", "title": "after the bad ones", "fetch_count": 99}
        yield {"url": "http://good.test/5", "title": "same URL again", "extra": 1}
        for i in range(6, 40):
            yield {"url": f"http://good.test/{i}", "title": "more"}
'''


def test_unencodable_and_oversized_items_are_counted_and_the_crawl_goes_on(mongo_uri, db_name, tmp_path,
                                                                           connect):
    (tmp_path / "testitems.py").write_text(textwrap.dedent(ITEM_TYPES))
    spider = tmp_path / "baditems.py"
    spider.write_text(textwrap.dedent(BAD_SPIDER))
    settings = _settings(tmp_path, mongo_uri, db_name, MONGO_BATCH_SIZE=100, FEEDS={},
                         MONGO_COLLECTIONS={"testitems.DataPage": "data", "testitems.AttrsPage": "data"})
    args = [*crawl_argv("baditems", settings)[:3], "runspider", str(spider), *crawl_argv("x", settings)[5:]]
    proc = subprocess.run(args, env=crawl_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    stats, log = _stats(tmp_path), proc.stderr
    db = connect(mongo_uri)[db_name]

    # everything valid of the same batch was written, each class to its collection
    pages = {d["url"]: d for d in db["pages"].find()}
    data = {d["url"]: d for d in db["data"].find()}
    good = {f"http://good.test/{i}" for i in range(1, 40)}
    assert set(pages) | set(data) == good
    assert set(data) == {"http://good.test/3", "http://good.test/4"}
    assert data["http://good.test/4"]["title"] == "attrs" and pages["http://good.test/2"]["title"] == "Item"
    # one URL twice in a batch: one upsert, later fields win, both counted
    five = pages["http://good.test/5"]
    assert (five["title"], five["extra"], five["fetch_count"]) == ("same URL again", 1, 2)
    assert stats["mongo/items_written"] == 40

    assert stats["mongo/invalid_items"] == 6
    assert stats["mongo/errors/InvalidDocument"] == 3  # set, custom object, 2**70
    assert stats["mongo/errors/DocumentTooLarge"] == 1
    assert stats["mongo/errors/BadURL"] == 2
    assert stats["item_scraped_count"] == 46  # invalid items still go on to later pipelines/feeds
    for url, kind in [("http://bad.test/set", "InvalidDocument"), ("http://bad.test/object", "InvalidDocument"),
                      ("http://bad.test/huge", "DocumentTooLarge")]:
        assert f"Item {url} not written to MongoDB: {kind}" in log
    assert "not written to MongoDB: BadURL" in log
    assert "Item field 'fetch_count' is owned by the MongoDB pipeline" in log
    assert len(max(log.splitlines(), key=len)) < 5000  # the 17 MB value is not in the log


# -- settings -------------------------------------------------------------------------------------


def _crawler(**overrides: Any) -> Any:
    import crawlproj.settings as module

    project = {k: getattr(module, k) for k in dir(module) if k.isupper()}
    return get_crawler(settings_dict={**project, **overrides})


def test_pipeline_is_off_without_mongo_uri():
    with pytest.raises(NotConfigured):
        MongoPipeline.from_crawler(_crawler())
    with pytest.raises(ValueError, match="^MONGO_URI: expected a mongodb://"):  # the reader itself is pure
        MongoConfig.from_settings(_crawler().settings)
    pipelines = _crawler().settings.getdict("ITEM_PIPELINES")  # the MongoDB add-on is on by default
    assert MongoPipeline in {load_object(p) for p, order in pipelines.items() if order is not None}


@pytest.mark.parametrize("name, value, expected", [
    ("MONGO_URI", "http://127.0.0.1:27017/", ["mongodb://", "'http://127.0.0.1:27017/'"]),
    ("MONGO_BATCH_SIZE", 0, ["an integer >= 1", "got 0"]),
    ("MONGO_BATCH_SIZE", "many", ["an integer >= 1", "got 'many'"]),
    ("MONGO_FLUSH_INTERVAL", -1, ["seconds > 0", "got -1"]),
    ("MONGO_WRITE_CONCERN", {"w": 0}, ["unacknowledged", "{'w': 0}"]),
    ("MONGO_WRITE_CONCERN", '{"w": "majority", "wtimout": 5}', ["'wtimeout': ms", "'wtimout': 5"]),
    ("MONGO_INDEXES", [{"keys": [["url", 2]]}], ["MONGO_INDEXES[0]", "direction", "[['url', 2]]"]),
    ("MONGO_INDEXES", [{"keys": "url", "uniqe": True}], ["MONGO_INDEXES[0]", "unknown index options ['uniqe']"]),
    ("MONGO_INDEXES", [{"keys": "url", "collection": "other"}], ["'other' is not written by the pipeline"]),
    ("MONGO_QUERY_PATHS", [{"fields": []}], ["MONGO_QUERY_PATHS[0]", "field name", "got []"]),
    ("MONGO_COLLECTIONS", {"no.such.Item": "x"}, ["cannot import item class 'no.such.Item'"]),
    ("MONGO_COLLECTION", "system.pages", ["collection name", "got 'system.pages'"]),
    ("MONGO_DATABASE", "a.b", ["database name", "got 'a.b'"]),
    ("MONGO_SPILL_MAX_BYTES", -1, ["bytes >= 0", "got -1"]),
    ("MONGO_RETRY_BACKOFF_MAX", 0.1, [">= MONGO_RETRY_BACKOFF_MIN (0.5)", "got 0.1"]),
    ("MONGO_ALLOW_UNINDEXED", "perhaps", ["True or False", "got 'perhaps'"]),
    ("MONGO_BUFFER_MAX_ITEMS", 99, [">= MONGO_BATCH_SIZE (100)", "got 99"]),
])
def test_bad_setting_names_the_setting_the_value_and_what_is_expected(name, value, expected):
    crawler = _crawler(**{"MONGO_URI": "mongodb://127.0.0.1:1/", name: value})
    with pytest.raises(ValueError) as info:
        MongoPipeline.from_crawler(crawler)
    message = str(info.value)
    assert message.startswith(name)
    for part in expected:
        assert part in message, message


def test_settings_given_as_json_on_the_command_line():
    config = MongoConfig.from_settings(_crawler(
        MONGO_URI="mongodb://user:secret@127.0.0.1:1/",
        MONGO_INDEXES='["url", {"keys": {"status": 1, "depth": -1}, "unique": false}]',
        MONGO_QUERY_PATHS='["url", ["status", "depth"]]',
        MONGO_COLLECTIONS='{"crawlproj.items.PageItem": "pages2"}',
        MONGO_WRITE_CONCERN='{"w": 1, "j": true}').settings)
    assert [s.keys for s in config.indexes] == [(("url", 1),), (("status", 1), ("depth", -1))]
    assert [q.fields for q in config.query_paths] == [("url",), ("status", "depth")]
    assert config.collection_names == ["pages", "pages2"]
    assert config.write_concern == {"w": 1, "j": True}


# -- spill files (no server) ------------------------------------------------------


def _record(doc_id: str, n: int = 1) -> SpillRecord:
    from datetime import datetime, timezone

    return SpillRecord(op_id=f"op-{doc_id}-{n}", collection="pages", doc_id=doc_id,
                       update={"$set": {"big": 2 ** 40, "when": datetime(2026, 1, 2, tzinfo=timezone.utc),
                                        "raw": b"\x00\xff"}, "$inc": {"fetch_count": n}}, items=n)


def test_spill_file_ownership_chunks_progress_and_torn_tail(tmp_path):
    writer = SpillWriter(tmp_path)
    records = [_record("a"), _record("b"), _record("a", 2), _record("c")]
    size = writer.append([r.encode() for r in records])
    assert size == writer.size > 0
    assert claim_spill_files(tmp_path) == []  # locked by its live writer
    writer.close()  # as if the process died
    with open(writer.path, "ab") as f:
        f.write(b'{"op": "torn')  # an append cut short by kill -9

    [spill] = claim_spill_files(tmp_path)
    assert claim_spill_files(tmp_path) == []  # now ours
    first = spill.read_chunk(10)
    # stops before the second upsert of "a": one bulk write never holds both
    assert [r.doc_id for r in first.records] == ["a", "b"] and not first.eof
    assert first.records[0] == records[0]  # exact round trip: 64-bit int, datetime, bytes
    spill.commit(first.end_offset)
    spill.close()  # crash after one chunk

    [again] = claim_spill_files(tmp_path)
    assert again.offset == first.end_offset  # resumes after the acknowledged chunk
    rest = again.read_chunk(10)
    assert [r.doc_id for r in rest.records] == ["a", "c"] and rest.eof and rest.torn_bytes == len('{"op": "torn')
    again.remove()
    assert list(tmp_path.iterdir()) == []
