"""A batch the dispatcher cannot deliver (the node's socket is gone) loses no request: every one
is given back, counted, and served again later, also when a serve is cut into several batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crawlproj.dispatcher.config import Config
from crawlproj.dispatcher.leases import MAX_BATCH_LEASES
from crawlproj.dispatcher.service import Dispatcher
from crawlproj.wire.protocol import encode, push_fields
from crawlproj.wire.urls import fingerprint, partition_of

P = 4


def requests(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        key = f"h{i % 3}.test"
        url = f"http://{key}/{i}"
        out.append({"u": url, "f": fingerprint(url), "k": key, "p": partition_of(key, P)})
    return out


@pytest.mark.parametrize("credit", [10, MAX_BATCH_LEASES + 10])  # one batch; a second one cut
def test_an_undeliverable_batch_gives_every_request_back(tmp_path: Path, credit: int) -> None:
    disp = Dispatcher(Config(store=str(tmp_path / "s"), partitions=P, bind="tcp://127.0.0.1:*"))
    try:
        disp.bind()
        ghost = b"ghost"  # registered, but no socket of that identity is connected: sends fail
        disp._handle([ghost, encode("register", node="ghost", pid=1, host="h", capacity=credit)])
        assert set(disp.owner) == {"ghost"}
        total = credit + 50
        disp._handle([ghost, encode("push", node="ghost", **push_fields(requests(total)))])
        for attempt in (1, 2):
            disp._handle([ghost, encode("pull", node="ghost", credit=credit)])
            disp._serve_dirty()
            assert disp.frontier.available_total() == total  # nothing leased, nothing lost
            assert not disp.leases and not disp.nodes["ghost"].leases
            assert disp.nodes["ghost"].credit == 0  # no more tries until it asks again
            assert disp.counters["leased"] == 0
            # What went out in a batch and came back; a serve stops at its first failed batch.
            assert disp.counters["returned_undeliverable"] == attempt * min(credit, MAX_BATCH_LEASES)
        taken = []
        for p in range(P):
            while (row := disp.frontier.take(p)) is not None:
                taken.append(row[2])
        assert len(taken) == len(set(taken)) == total  # each request once, none twice
    finally:
        disp.close()
