"""Revisits: conditional GET against the changing synthetic web, and the page's history in MongoDB.

The dispatcher's per-URL schedule hands out revisits with the stored validators in their meta
(docs/revisits.md; tests/test_revisit_schedule.py crawls through it). Here, without a dispatcher,
the second crawl's seed requests carry the validators themselves, as the schedule's revisits do.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pymongo
import pytest
import scrapy
from scrapy.utils.test import get_crawler

from crawlproj.meta import (
    REVISIT,
    REVISIT_CONTENT_HASH,
    REVISIT_ETAG,
    REVISIT_LAST_MODIFIED,
    REVISIT_OUTCOME,
    REVISIT_SENT,
)
from crawlproj.middlewares.revisit import CHANGED, NOT_MODIFIED, UNCHANGED
from crawlproj.pipelines.mongo.messages import Doc
from crawlproj.pipelines.mongo.writer import HISTORY_FIELDS, OP_FIELD, history_update, merge_updates
from crawlproj.tools.runner import SYNTHWEB_SETTINGS, crawl_argv, crawl_env
from crawlproj.wire.request import WireCodec
from crawlproj.wire.urls import fingerprint_hex
from crawlproj_testing.synthweb.changes import Changes
from crawlproj_testing.synthweb.model import WebSpec

CHANGING = WebSpec(seed=9, hosts=2, min_pages=40, max_pages=40, special_share=0.0, slow_host_share=0.0,
                   subdomain_share=0.0, change_classes=((0.2, 3600.0),))

REVISIT_SPIDER = '''
import json

import scrapy

from crawlproj.spiders.broad import BroadSpider


class RevisitSpider(BroadSpider):
    """The broad spider whose seeds carry meta, as the dispatcher's revisits do."""

    name = "revisit"

    async def start(self):
        with open(self.revisits, encoding="utf-8") as f:
            for seed in json.load(f):
                yield scrapy.Request(seed["url"], callback=self.parse, errback=self.on_error, meta=seed["meta"])
'''

#: Fields a revisit may write: the history and the write's id (idempotence).
HISTORY = HISTORY_FIELDS | {OP_FIELD}


@pytest.fixture
def db(mongo_uri: str) -> Any:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=2000)
    yield client[f"t_{uuid.uuid4().hex[:12]}"]
    client.close()


def _crawl(tmp_path: Path, mongo_uri: str, db_name: str, seeds: list[dict[str, Any]],
           **settings: Any) -> dict[str, Any]:
    spider = tmp_path / "revisit_spider.py"
    spider.write_text(textwrap.dedent(REVISIT_SPIDER))
    (tmp_path / "seeds.json").write_text(json.dumps(seeds))
    stats_file = tmp_path / "stats.json"
    stats_file.unlink(missing_ok=True)
    merged = {**SYNTHWEB_SETTINGS, "DOWNLOAD_TIMEOUT": 5, "LOGSTATS_INTERVAL": 0, "MONGO_URI": mongo_uri,
              "MONGO_DATABASE": db_name, "MONGO_SPILL_DIR": str(tmp_path / "spill"),
              "PROGRESS_STATS_FILE": str(stats_file), **settings}
    argv = crawl_argv("revisit", merged, {"revisits": str(tmp_path / "seeds.json"), "max_depth": 0})
    argv = [*argv[:3], "runspider", str(spider), *argv[5:]]
    proc = subprocess.run(argv, env=crawl_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(stats_file.read_text())


def _revisit_of(doc: dict[str, Any]) -> dict[str, Any]:
    """The seed of a revisit, from what the stored document knows (as the frontier's schedule does)."""
    return {"url": doc["url"], "meta": {REVISIT_ETAG: doc["headers"]["ETag"],
                                        REVISIT_LAST_MODIFIED: doc["headers"]["Last-Modified"],
                                        REVISIT_CONTENT_HASH: doc["content_hash"]}}


def _time(value: datetime | str) -> datetime:
    """A history time as stored. nx-27017 0.8.1 (the test server) stores a datetime that ``$set``
    writes into an existing document as its ``str()``; MongoDB keeps the BSON date."""
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    return value


def _content(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in HISTORY}


def test_revisit_of_an_unchanged_page_gets_304_and_writes_only_its_history(synthweb, mongo_uri, db, tmp_path):
    proc = synthweb(CHANGING)
    web, changes = proc.web, Changes(proc.web)
    host = web.hosts[0]
    pages = [web.page(host.name, i) for i in range(host.pages)]
    steady = next(p for p in pages if changes.period(p) is None)
    hourly = next(p for p in pages if changes.period(p) == 3600.0)
    urls = {"steady": proc.url(host.name, steady.path), "hourly": proc.url(host.name, hourly.path)}
    coll = db["pages"]

    stats = _crawl(tmp_path, mongo_uri, db.name, [{"url": u, "meta": {}} for u in urls.values()])
    assert stats["mongo/items_written"] == 2 and "revisit/requests" not in stats
    first = {name: coll.find_one({"_id": fingerprint_hex(u)}) for name, u in urls.items()}
    for doc in first.values():
        assert (doc["fetch_count"], doc["change_count"]) == (1, 0)
        assert doc["first_seen"] == doc["last_fetched"] == doc["last_changed"]
        assert doc["headers"]["ETag"] and doc["headers"]["Last-Modified"]

    # the hourly page changes; the steady one does not
    proc.clock(set_to=changes.change_times(hourly, 10**6)[0] + 1)
    log_mark = len(proc.accesses())
    stats = _crawl(tmp_path, mongo_uri, db.name, [_revisit_of(d) for d in first.values()])
    answers = {(a.path, a.status) for a in proc.accesses()[log_mark:] if not a.is_robots}
    assert answers == {(steady.path, 304), (hourly.path, 200)}
    assert stats["revisit/requests"] == stats["revisit/conditional"] == 2
    assert stats["revisit/not_modified"] == 1 and stats["revisit/changed"] == 1
    assert stats["mongo/items_written"] == 2

    doc = coll.find_one({"_id": fingerprint_hex(urls["steady"])})
    assert (doc["fetch_count"], doc["change_count"]) == (2, 0)
    assert _content(doc) == _content(first["steady"])  # not rewritten beyond its history
    assert _time(doc["last_fetched"]) > _time(first["steady"]["last_fetched"])
    assert (doc["first_seen"], doc["last_changed"]) == (first["steady"]["first_seen"], first["steady"]["last_changed"])
    assert doc["status"] == 200 and doc["title"] == first["steady"]["title"]

    doc = coll.find_one({"_id": fingerprint_hex(urls["hourly"])})
    assert (doc["fetch_count"], doc["change_count"]) == (2, 1)
    assert doc["content_hash"] != first["hourly"]["content_hash"]
    assert doc["headers"]["ETag"] != first["hourly"]["headers"]["ETag"]
    assert _time(doc["last_changed"]) == _time(doc["last_fetched"]) > _time(first["hourly"]["last_changed"])
    assert "revisit" not in doc  # the outcome is read by the pipeline, not stored

    # without conditional GET the server sends the page again: the same hash counts as unchanged
    second = {name: coll.find_one({"_id": fingerprint_hex(u)}) for name, u in urls.items()}
    log_mark = len(proc.accesses())
    stats = _crawl(tmp_path, mongo_uri, db.name, [_revisit_of(d) for d in second.values()],
                   REVISIT_CONDITIONAL_GET=False)
    assert {a.status for a in proc.accesses()[log_mark:] if not a.is_robots} == {200}
    assert stats["revisit/unchanged"] == 2 and "revisit/conditional" not in stats
    for name, url in urls.items():
        doc = coll.find_one({"_id": fingerprint_hex(url)})
        assert doc["fetch_count"] == 3 and doc["change_count"] == second[name]["change_count"]
        assert _content(doc) == _content(second[name])


class _Spider(scrapy.Spider):
    name = "t"


def test_revisit_meta_travels_on_the_wire_and_the_outcome_does_not():
    spider = _Spider()
    codec = WireCodec(spider, 16)
    meta = {REVISIT: 1, REVISIT_ETAG: '"abc"', REVISIT_LAST_MODIFIED: "Thu, 01 Jan 2026 00:00:00 GMT",
            REVISIT_CONTENT_HASH: "0" * 40, REVISIT_OUTCOME: NOT_MODIFIED, REVISIT_SENT: (b"If-None-Match",)}
    request = scrapy.Request("http://a.test/p", meta=meta)
    canonical, fp, key, part = codec.route(request.url)
    decoded = codec.decode(codec.encode(request, fp, key, part))
    assert {k: decoded.meta.get(k) for k in meta} == {**meta, REVISIT_OUTCOME: None, REVISIT_SENT: None}


def test_conditional_get_middleware_outcomes():
    from crawlproj.middlewares.revisit import ConditionalGetMiddleware, content_hash
    from scrapy.http import HtmlResponse

    crawler = get_crawler(_Spider, {"REVISIT_CONDITIONAL_GET": True})
    crawler.stats.open_spider()
    mw = ConditionalGetMiddleware.from_crawler(crawler)
    body = b"<html>same</html>"

    def outcome(status: int, response_body: bytes, **meta: Any) -> tuple[str | None, dict[bytes, bytes]]:
        request = scrapy.Request("http://a.test/", meta=meta)
        mw.process_request(request)
        headers = {k: request.headers.get(k) for k in (b"If-None-Match", b"If-Modified-Since")}
        mw.process_response(request, HtmlResponse(request.url, status=status, body=response_body, request=request))
        return request.meta.get(REVISIT_OUTCOME), headers

    stored = {REVISIT_ETAG: '"e"', REVISIT_LAST_MODIFIED: "Thu, 01 Jan 2026 00:00:00 GMT",
              REVISIT_CONTENT_HASH: content_hash(body)}
    assert outcome(304, b"", **stored) == (NOT_MODIFIED, {b"If-None-Match": b'"e"',
                                                          b"If-Modified-Since": b"Thu, 01 Jan 2026 00:00:00 GMT"})
    assert outcome(200, body, **stored)[0] == UNCHANGED
    assert outcome(200, b"<html>new</html>", **stored)[0] == CHANGED
    assert outcome(200, body) == (None, {b"If-None-Match": None, b"If-Modified-Since": None})  # no revisit
    # a redirected revisit does not send the stored validators to the target
    request = scrapy.Request("http://a.test/", meta=dict(stored))
    mw.process_request(request)
    target = request.replace(url="http://a.test/moved")
    target.meta["redirect_urls"] = ["http://a.test/"]
    mw.process_request(target)
    assert b"If-None-Match" not in target.headers and b"If-Modified-Since" not in target.headers
    mw.process_response(target, HtmlResponse(target.url, status=200, body=body, request=target))
    assert target.meta[REVISIT_OUTCOME] == UNCHANGED
    stats = crawler.stats.get_stats()
    assert (stats["revisit/requests"], stats["revisit/conditional"]) == (4, 4)


def test_history_upserts_of_one_batch_merge():
    at = [datetime(2026, 1, 1, h, tzinfo=timezone.utc) for h in range(3)]
    fields = {"url": "http://a.test/", "content_hash": "h1", "title": "t"}
    new = history_update(Doc("pages", "id", fields, at[0]))
    assert new == {"$set": {**fields, "last_fetched": at[0]},
                   "$setOnInsert": {"first_seen": at[0], "last_changed": at[0]},
                   "$inc": {"fetch_count": 1, "change_count": 0}}
    current = history_update(Doc("pages", "id", {"url": "http://a.test/", "revisit": NOT_MODIFIED}, at[1]))
    assert current == {"$set": {"last_fetched": at[1]},
                       "$setOnInsert": {"first_seen": at[1], "url": "http://a.test/"},
                       "$inc": {"fetch_count": 1, "change_count": 0}}
    changed = history_update(Doc("pages", "id", {**fields, "content_hash": "h2", "revisit": CHANGED}, at[2]))
    assert changed["$set"]["last_changed"] == at[2] and changed["$inc"]["change_count"] == 1
    merged = merge_updates(merge_updates(new, current), changed)
    assert merged["$set"] == {**fields, "content_hash": "h2", "last_fetched": at[2], "last_changed": at[2]}
    assert merged["$setOnInsert"] == {"first_seen": at[0]}  # never a field of $set too
    assert merged["$inc"] == {"fetch_count": 3, "change_count": 1}
