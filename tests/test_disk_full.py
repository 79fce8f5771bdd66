"""A full disk under the dispatcher's store, a node's politeness state file and the MongoDB spill
directory: each says so (path, errno), loses nothing acknowledged, and goes on when space returns.

The disk is a real tmpfs with a size limit, filled to the last block by a filler file and freed
by removing it; the tests are skipped where no tmpfs can be mounted (not root).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until
from test_mongo_pipeline import (  # noqa: F401 - fixtures
    OUTAGE,
    SLOW,
    SMALL_WEB,
    _assert_one_doc_per_url,
    _crawling,
    _finish,
    _items,
    _seeds,
    _settings,
    _stats,
    connect,
    db_name,
    nx_server,
)

from crawlproj.pipelines.spill import SpillError, SpillWriter
from crawlproj.politeness.store import KeyRow, StateStore
from crawlproj.tools.dispatcher_process import DispatcherProcess
from crawlproj_testing.simnode import SimNode, drive, web_links, web_reachable
from crawlproj_testing.synthweb.model import Web, WebSpec

FS_BYTES = 24 * 1024 * 1024
HEARTBEAT = 0.2


class SmallFS:
    """A tmpfs of FS_BYTES; ``fill()`` takes every free block, ``free()`` gives them back."""

    def __init__(self, path: Path):
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9):
                block = b"\0" * size
                while True:
                    try:
                        os.write(fd, block)
                    except OSError as exc:
                        assert exc.errno == errno.ENOSPC, exc
                        break
        finally:
            os.close(fd)
        assert os.statvfs(self.path).f_bavail == 0

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallFS]:
    mnt = tmp_path / "fs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs with a size limit here (needs root): {done.stderr.strip()}")
    try:
        yield SmallFS(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_dispatcher_store_on_a_full_disk_says_so_keeps_every_url_and_goes_on(small_fs, tmp_path, zmq_context):
    web = Web(WebSpec(seed=7, hosts=40, min_pages=30, max_pages=120))
    seeds = [f"http://{h}{p}" for h, p in web.seeds()]
    truth = web_reachable(web, seeds)
    log = tmp_path / "dispatcher.log"
    with DispatcherProcess(small_fs.path / "store", "--partitions", "64", "--seeds", ",".join(seeds),
                           "--heartbeat-interval", str(HEARTBEAT), "--heartbeat-timeout", "2",
                           "--restart-hold", "1", log_path=log) as d:
        node = SimNode(zmq_context, d.endpoint, "n1", capacity=20)
        try:
            node.register()
            links = web_links(web)
            drive([node], lambda: len(node.acked) >= len(truth) // 4, 60, links_of=links,
                  heartbeat_interval=HEARTBEAT)
            small_fs.fill()
            drive([node], lambda: "Dispatcher store: cannot write" in log.read_text(), 60, links_of=links,
                  heartbeat_interval=HEARTBEAT)
            assert d.running
            small_fs.free()
            drive([node], lambda: node.finished, 120, links_of=links, heartbeat_interval=HEARTBEAT)
            state = d.status()
        finally:
            node.close()
    text = log.read_text()
    line = next(x for x in text.splitlines() if "Dispatcher store: cannot write" in x)
    print(f"\nthe dispatcher's log: {line}")
    print(next(x for x in text.splitlines() if "can be written again" in x))
    assert str(small_fs.path / "store" / "frontier.sqlite") in line and "errno 28 ENOSPC" in line
    assert "nothing acked is lost" in line
    # every reachable URL was served (some twice: the acks of the dropped transaction), none is left
    leased = {u for _, u in node.leased}
    assert leased == truth
    assert state["finished"] and state["frontier"] == 0 and state["counters"]["store_unwritable"] == 1
    assert len(node.welcomes) == 2 and node.welcomes[0]["epoch"] != node.welcomes[1]["epoch"]


def test_politeness_state_file_on_a_full_disk_keeps_its_rows_and_writes_them_later(small_fs, caplog):
    path = small_fs.path / "n1" / "politeness.sqlite3"
    store = StateStore(str(path), flush_interval=0.05)
    try:
        store.put_many((), [KeyRow(f"before{i}.test", 1.0, 2.0) for i in range(100)])
        wait_until(lambda: store.rows_written >= 100, 10, "the first rows written")
        small_fs.fill()
        with caplog.at_level(logging.ERROR, logger="crawlproj.politeness.store"):
            rows = [KeyRow(f"k{i}.test", 3.0, 4.0, {f"http://k{i}.test": 1.5}) for i in range(3000)]
            store.put_many((), rows)
            wait_until(lambda: store.write_errors >= 3, 20, "failed writes on the full disk")
            assert store.pending_rows() == 3000  # kept, newest per key
            small_fs.free()
            wait_until(lambda: store.pending_rows() == 0, 20, "the kept rows written")
        messages = [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()]
        print(f"\nthe node's log: {messages[0]}")
        assert len(messages) == 1  # one line per minute, not one per attempt
        assert str(path) in messages[0] and "errno 28 ENOSPC" in messages[0] and "3000 rows stay in memory" in messages[0]
    finally:
        store.close()
    conn = sqlite3.connect(path)
    got = dict(conn.execute("SELECT key, last_done FROM politeness"))
    conn.close()
    assert len(got) == 3100 and got["k2999.test"] == 4.0


def test_spill_append_on_a_full_disk_names_the_file_and_leaves_it_whole(small_fs):
    writer = SpillWriter(small_fs.path / "spill")
    try:
        assert writer.append([b'{"a": 1}\n'])
        small_fs.fill()
        with pytest.raises(SpillError) as failed:
            writer.append([b"x" * 100_000 + b"\n"])
        assert failed.value.errno == errno.ENOSPC
        assert str(writer.path) in str(failed.value) and "errno 28 ENOSPC" in str(failed.value)
        assert writer.path is not None and writer.path.read_bytes() == b'{"a": 1}\n'  # the torn append is cut off
        small_fs.free()
        assert writer.append([b'{"b": 2}\n'])
        assert writer.path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    finally:
        writer.close()


def test_crawl_with_mongodb_down_and_a_full_spill_disk_keeps_every_item(small_fs, synthweb, nx_server, db_name,
                                                                         tmp_path, connect):
    """MongoDB down and no room to spill: items wait in memory (the engine pauses when the
    buffer is full), nothing acked is lost; with room and MongoDB back, every item is written."""
    web = synthweb(dataclasses.replace(SMALL_WEB, base_latency_ms=60))
    settings = _settings(tmp_path, nx_server.uri, db_name, **OUTAGE, **SLOW, MONGO_BUFFER_MAX_ITEMS=60)
    settings["MONGO_SPILL_DIR"] = str(small_fs.path / "spill")
    coll = connect(nx_server.uri)[db_name]["pages"]
    with _crawling(tmp_path, settings, {"seeds": _seeds(web)}, "crawl") as (proc, log):
        wait_until(lambda: coll.count_documents({}) >= 20, 60, "20 documents written")
        small_fs.fill()
        nx_server.stop()
        wait_until(lambda: "Could not spill" in log.read_text(), 60, "a failed spill")
        wait_until(lambda: "Pausing the engine" in log.read_text(), 60, "the engine to pause")
        assert proc.poll() is None
        small_fs.free()
        nx_server.start()
        text = _finish(proc, log)
    line = next(x for x in text.splitlines() if "Could not spill" in x)
    print(f"\nthe node's log: {line[line.index('Could not spill'):]}")
    assert "errno 28 ENOSPC" in line and str(small_fs.path / "spill") in line
    items, stats = _items(tmp_path), _stats(tmp_path)
    _assert_one_doc_per_url(coll, items, fetch_count=1)
    assert stats.get("mongo/invalid_items", 0) == 0
