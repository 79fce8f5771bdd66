"""The frontier's SQLite file: the page size of new and older stores, and when a commit is due."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crawlproj.dispatcher import store
from crawlproj.dispatcher.frontier import COMMIT_ROWS, Frontier
from crawlproj.dispatcher.store import PAGE_SIZE, WAL_AUTOCHECKPOINT_BYTES
from crawlproj.wire.urls import fingerprint


def wire(i: int, p: int = 0) -> dict[str, Any]:
    url = f"http://x{p}.test/{i}"
    return {"u": url, "f": fingerprint(url), "k": f"x{p}.test", "p": p}


def pragma(fr: Frontier, name: str) -> int:
    return fr.conn.execute(f"PRAGMA {name}").fetchone()[0]


def test_a_new_store_has_large_pages_and_an_older_store_keeps_its_own(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fr = Frontier(tmp_path / "new", 2)
    assert pragma(fr, "page_size") == PAGE_SIZE == 65536
    assert pragma(fr, "wal_autocheckpoint") == WAL_AUTOCHECKPOINT_BYTES // PAGE_SIZE
    fr.close()

    monkeypatch.setattr(store, "PAGE_SIZE", 4096)  # a store made before 64 KiB pages
    old = Frontier(tmp_path / "old", 2)
    old.add([wire(i, i % 2) for i in range(300)])
    old.close()
    monkeypatch.undo()
    again = Frontier(tmp_path / "old", 2)
    assert pragma(again, "page_size") == 4096
    assert pragma(again, "wal_autocheckpoint") == WAL_AUTOCHECKPOINT_BYTES // 4096
    assert again.size == 300
    taken = [again.take(0) for _ in range(150)]
    assert all(row is not None for row in taken) and again.take(0) is None
    assert again.add([wire(i, i % 2) for i in range(310)])[0] == 10
    again.close()


def test_a_commit_is_due_after_commit_rows_requests_not_before(tmp_path: Path) -> None:
    fr = Frontier(tmp_path / "s", 4, commit_interval=3600.0)
    half = COMMIT_ROWS // 2
    fr.add([wire(i, i % 4) for i in range(half + 1)])  # more than half: once counted twice
    assert not fr.maybe_commit()
    fr.add([wire(i, i % 4) for i in range(half + 1, COMMIT_ROWS)])
    assert fr.maybe_commit()
    assert fr.commits == 1
    fr.close()
