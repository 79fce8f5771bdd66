"""The frontier's seen_log: one row per push holding its fingerprints end to end, exact across
restarts and merges, and a store written when a row held one fingerprint reads the same."""

from __future__ import annotations

import logging
import math
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crawlproj.dispatcher.frontier import Frontier
from crawlproj.dispatcher.store import STORE_FILENAME
from crawlproj.dispatcher import seen as seen_module
from crawlproj.dispatcher.seen import BUCKETS, FANOUT, SeenFilter
from crawlproj.wire.urls import fingerprint


def wire(i: int) -> dict[str, Any]:
    url = f"http://x.test/{i}"
    return {"u": url, "f": fingerprint(url), "k": "x.test", "p": 0}


def test_pushes_are_one_row_each_and_dedup_stays_exact_across_restart_and_merge(tmp_path: Path) -> None:
    fr = Frontier(tmp_path / "s", 1, hot_seen=2, merge_rows=1000)
    assert fr.add([wire(i) for i in range(50)])[0] == 50
    assert fr.add([wire(i) for i in range(40, 70)])[0] == 20
    fr.commit()
    rows = fr.conn.execute("SELECT length(f) FROM seen_log").fetchall()
    assert rows == [(50 * 20,), (20 * 20,)]
    fr.close()

    again = Frontier(tmp_path / "s", 1, hot_seen=2, merge_rows=60)
    assert again.hot_seen_size() >= 70  # the log is back in memory, exactly
    assert again.add([wire(i) for i in range(75)])[0] == 5
    again.commit()  # 75 logged >= merge_rows: merged into the seen buckets
    assert again.merges == 1
    assert again.seen.stored() == 75
    assert again.conn.execute("SELECT count(*) FROM seen_log").fetchone() == (0,)
    again.close()

    last = Frontier(tmp_path / "s", 1, hot_seen=2)
    assert last.add([wire(i) for i in range(80)])[0] == 5  # settled by the seen buckets
    assert last.seen_count == 80
    last.close()


def test_a_log_of_one_fingerprint_per_row_reads_the_same(tmp_path: Path) -> None:
    fr = Frontier(tmp_path / "s", 1)
    fr.close()
    conn = sqlite3.connect(tmp_path / "s" / STORE_FILENAME)
    conn.executemany("INSERT INTO seen_log (f) VALUES (?)", [(wire(i)["f"],) for i in range(10)])
    conn.commit()
    conn.close()
    again = Frontier(tmp_path / "s", 1, merge_rows=12)
    assert again.add([wire(i) for i in range(12)])[0] == 2
    again.commit()
    assert again.merges == 1
    assert again.seen.stored() == 12
    again.close()


def test_the_filter_never_forgets_and_its_false_positives_cost_lookups_not_urls(tmp_path: Path) -> None:
    flt = SeenFilter(1)
    fps = [fingerprint(f"http://y.test/{i}") for i in range(20_000)]
    flt.add(b"".join(fps))
    assert flt.may_hold(b"".join(fps)).all()
    others = [fingerprint(f"http://z.test/{i}") for i in range(20_000)]
    assert flt.may_hold(b"".join(others)).sum() < 20  # about 1e-6 of them at this fill

    fr = Frontier(tmp_path / "s", 1, hot_seen=2, merge_rows=10)
    assert fr.add([wire(i) for i in range(30)])[0] == 30
    fr.commit()  # merged: the index and the filter hold them
    assert fr.merges == 1
    fr.seen.clear_hot()
    assert fr.add([wire(i) for i in range(30)]) == (0, [])  # the filter's "maybe" settled by the index
    fr.seen.filter.words[:] = ~np.uint64(0)  # a filter that answers "maybe" to everything
    assert fr.add([wire(i) for i in range(25, 40)])[0] == 10
    fr.close()


# Earlier versions' layouts, made from a store of this one: rows in plain insertion order,
# without levels and indexed on b alone, or with their levels kept (the layout before classes).
EARLIER_LAYOUTS = {
    "no levels": """
        CREATE TABLE old (b INTEGER NOT NULL, fps BLOB NOT NULL);
        INSERT INTO old SELECT b, fps FROM seen_buckets ORDER BY b;
        DROP TABLE seen_buckets;
        ALTER TABLE old RENAME TO seen_buckets;
        CREATE INDEX seen_buckets_b ON seen_buckets (b);
    """,
    "levels, no classes": """
        CREATE TABLE old (b INTEGER NOT NULL, fps BLOB NOT NULL, lvl INTEGER NOT NULL DEFAULT 0);
        INSERT INTO old SELECT b, fps, lvl FROM seen_buckets ORDER BY b;
        DROP TABLE seen_buckets;
        ALTER TABLE old RENAME TO seen_buckets;
        CREATE INDEX seen_buckets_lvl ON seen_buckets (b, lvl);
    """,
}


@pytest.mark.parametrize("earlier", sorted(EARLIER_LAYOUTS))
def test_buckets_are_compacted_by_level_exactly_across_restarts_and_from_the_earlier_layout(
        tmp_path: Path, earlier: str) -> None:
    fr = Frontier(tmp_path / "s", 1, hot_seen=2, merge_rows=1)  # every commit merges
    rounds, per = 40, 2000
    for r in range(rounds):
        assert fr.add([wire(i) for i in range(r * per, (r + 1) * per)])[0] == per
        fr.commit()
    fr.close()
    conn = sqlite3.connect(tmp_path / "s" / STORE_FILENAME)
    conn.executescript(EARLIER_LAYOUTS[earlier])
    conn.close()

    again = Frontier(tmp_path / "s", 1, hot_seen=2, merge_rows=1)
    for r in range(rounds, 2 * rounds):
        assert again.add([wire(i) for i in range(r * per, (r + 1) * per)])[0] == per
        again.commit()
    assert again.conn.execute("SELECT value FROM meta WHERE key='seen_merges'").fetchone() == (2 * rounds,)
    per_level = again.conn.execute("SELECT max(n) FROM (SELECT count(*) AS n FROM seen_buckets "
                                   "GROUP BY b, lvl)").fetchone()[0]
    # A level's rows are merged FANOUT at a time (an earlier layout's rows of a level above 1
    # wait for their class's next compaction that high: up to FANOUT more meanwhile).
    assert per_level <= (FANOUT if earlier == "no levels" else 2 * FANOUT)
    rows = again.conn.execute("SELECT count(*) FROM seen_buckets").fetchone()[0]
    uncompacted = 2 * rounds * BUCKETS * (1 - math.exp(-per / BUCKETS))  # a row a merge, if any
    assert rows < uncompacted / 2
    assert again.seen.stored() == 2 * rounds * per
    # A class's rows lie in the order written, the lowest levels last: what a compaction replaces
    # is its class's tail (a few pages), not rows spread over the table.
    classes: dict[int, list[int]] = {}
    for rowid, b, lvl in again.conn.execute("SELECT rowid, b, lvl FROM seen_buckets WHERE rowid >= ? "
                                            "ORDER BY rowid", (1 << seen_module._CLASS_SHIFT,)):
        assert rowid >> seen_module._CLASS_SHIFT == b % seen_module.CLASSES + 1
        classes.setdefault(b % seen_module.CLASSES, []).append(lvl)
    assert len(classes) == seen_module.CLASSES
    assert all(levels == sorted(levels, reverse=True) for levels in classes.values())
    again.seen.clear_hot()
    assert again.add([wire(i) for i in range(0, 2 * rounds * per, 7)]) == (0, [])  # exact
    assert again.add([wire(2 * rounds * per)])[0] == 1
    again.close()


def test_a_filter_past_its_size_is_named_once_with_the_setting_to_raise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(seen_module, "FILTER_FPS_PER_MIB", 20)  # a 1 MiB filter "sized" for 20
    fr = Frontier(tmp_path / "s", 1, merge_rows=10, filter_mib=1)
    with caplog.at_level(logging.WARNING, logger="crawlproj.dispatcher.seen"):
        for r in range(4):
            fr.add([wire(i) for i in range(r * 15, (r + 1) * 15)])
            fr.commit()
    warnings = [rec.getMessage() for rec in caplog.records if "seen filter" in rec.getMessage()]
    assert len(warnings) == 1
    assert "--seen-filter-mib 1" in warnings[0] and "restart the dispatcher with --seen-filter-mib 4" in warnings[0]
    fr.close()
