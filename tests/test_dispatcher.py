"""The dispatcher service against real processes and sockets, driven by simulated nodes.

Every test starts ``python -m crawlproj.dispatcher`` on a free port (DispatcherProcess) and talks
to it through DEALER sockets (SimNode). The crawled "web" is the link structure of a small
synthetic web (crawlproj_testing.synthweb.model.Web), without HTTP, so the expected set of URLs is exact.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from crawlproj.dispatcher.errors import StartError
from crawlproj.dispatcher.frontier import Frontier
from crawlproj.dispatcher.rows import packed
from crawlproj.dispatcher.partitions import Rendezvous, rendezvous_owner
from crawlproj.tools.dispatcher_process import DispatcherProcess
from crawlproj_testing.simnode import SimNode, drive, web_links, web_reachable
from crawlproj.wire.protocol import (
    decode_from_node,
    push_fields,
    split_push,
    wire_request,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    UNKNOWN_NODE,
    decode_from_dispatcher,
    encode,
    encode_batch,
)
from crawlproj_testing.synthweb.model import Web, WebSpec
from crawlproj.wire.urls import canonicalize, fingerprint, partition_of

from conftest import wait_until

SMALL_WEB = WebSpec(seed=5, hosts=25, min_pages=4, max_pages=30)
FAST_HEARTBEATS = ("--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.0")
HEARTBEAT = 0.2  # what the simulated nodes use with FAST_HEARTBEATS
CRAWL_TIMEOUT = 30.0
P_SMALL = 64


@pytest.fixture(scope="module")
def web() -> Web:
    return Web(SMALL_WEB)


@pytest.fixture(scope="module")
def seeds(web: Web) -> list[str]:
    return [f"http://{h}{p}" for h, p in web.seeds()]


@pytest.fixture(scope="module")
def truth(web: Web, seeds: list[str]) -> set[str]:
    return web_reachable(web, seeds)


@pytest.fixture
def dispatcher(tmp_path: Path) -> Iterator[Callable[..., DispatcherProcess]]:
    started: list[DispatcherProcess] = []

    def start(*args: str, store: str = "store", **kwargs: Any) -> DispatcherProcess:
        proc = DispatcherProcess(tmp_path / store, *args, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


@pytest.fixture
def nodes(zmq_context: zmq.Context[Any]) -> Iterator[Callable[..., SimNode]]:
    made: list[SimNode] = []

    def make(endpoint: str, name: str, **kwargs: Any) -> SimNode:
        node = SimNode(zmq_context, endpoint, name, **kwargs)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()


def register(all_nodes: list[SimNode], timeout: float = 10.0) -> None:
    for node in all_nodes:
        node.register()
    drive(all_nodes, lambda: all(n.registered for n in all_nodes), timeout, crawl=False,
          heartbeat_interval=HEARTBEAT)


def settled(d: DispatcherProcess, crew: list[SimNode], parts: int) -> bool:
    """No handoff pending and the running nodes' own views cover every partition once."""
    owned = [p for n in crew if not n.stopped for p in n.owned]
    if len(owned) != parts or set(owned) != set(range(parts)):
        return False
    state = d.status()
    return state["pending_handoffs"] == 0 and state["unowned_partitions"] == 0


def leased_urls(all_nodes: list[SimNode]) -> Counter[str]:
    return Counter(url for node in all_nodes for _, url in node.leased)


# -- pure parts ---------------------------------------------------------------------------------------


def test_rendezvous_moves_only_what_the_new_node_wins() -> None:
    parts = 1024
    rdv = Rendezvous(parts)
    before = rdv.table(["a", "b"])
    after = rdv.table(["a", "b", "c"])
    moved = [p for p in range(parts) if before[p] != after[p]]
    assert all(after[p] == "c" for p in moved)
    sigma = math.sqrt(parts * (1 / 3) * (2 / 3))
    assert abs(len(moved) - parts / 3) < 4 * sigma
    assert after == [rendezvous_owner(p, ["c", "a", "b"]) for p in range(parts)]
    assert rdv.table([]) == [None] * parts


def test_frontier_priority_fifo_bounded_readahead_and_dedup(tmp_path: Path) -> None:
    fr = Frontier(tmp_path / "s", 4, readahead=3, hot_seen=4, merge_rows=4)

    def wire(i: int, pr: int = 0) -> dict[str, Any]:
        url = f"http://x.test/{i}"
        return {"u": url, "f": fingerprint(url), "k": "x.test", "p": 1, "pr": pr}

    new, touched = fr.add([wire(i) for i in range(10)] + [wire(3), wire(4)])
    assert (new, touched) == (10, [1])
    assert fr.pending_rows() == 10  # in memory until the commit writes them, as one row
    fr.commit()
    assert fr.pending_rows() == 0 and fr.memory_rows() == 3  # the rest waits in SQLite
    fr.add([wire(100, pr=5)])  # jumps the queue
    fr.commit()
    # Hot set rotated away: the seen table settles these, exactly.
    assert fr.add([wire(i) for i in range(10)]) == (0, [])
    order = []
    while (row := fr.take(1)) is not None:
        order.append(msgpack.unpackb(row[2])["u"])
        if len(order) == 2:
            fr.give_back(1, row)  # a released lease comes first again
    assert order[0] == "http://x.test/100"
    assert order[1] == order[2] == "http://x.test/0"
    assert order[3:] == [f"http://x.test/{i}" for i in range(1, 10)]
    assert fr.size == 11 and fr.available(1) == 0
    assert fr.merges == 1  # the first ten went through seen_log into the seen buckets
    assert fr.add_forced(packed([wire(0)]))[0] == 1 and fr.seen_count == 11  # dont_filter: stored again
    fr.close()
    again = Frontier(tmp_path / "s", 4)
    assert again.epoch == 2 and again.size == 12 and again.seen_count == 11
    # Exact after a restart, whether a fingerprint sits in the seen buckets or still in seen_log.
    assert again.add([wire(5), wire(100)]) == (0, [])
    assert again.add([wire(11)])[0] == 1
    again.close()


def _wire(i: int, p: int = 0) -> dict[str, Any]:
    url = f"http://x.test/{i}"
    return {"u": url, "f": fingerprint(url), "k": "x.test", "p": p}


def _url(row: Any) -> str:
    return msgpack.unpackb(row[2])["u"]


def test_frontier_rows_and_partial_acks_survive_a_restart_exactly(tmp_path: Path) -> None:
    fr = Frontier(tmp_path / "s", 2, readahead=4)
    fr.add([_wire(i) for i in range(10)] + [_wire(100 + i, p=1) for i in range(3)])
    fr.commit()
    # one row per partition for the whole push
    assert fr.conn.execute("SELECT p, n FROM frontier_rows ORDER BY p").fetchall() == [(0, 10), (1, 3)]
    taken = [fr.take(0) for _ in range(6)]
    assert [_url(row) for row in taken] == [f"http://x.test/{i}" for i in range(6)]
    fr.ack_leased([(row[1], 0) for row in taken[:3]])
    fr.give_back(0, taken[3])
    fr.commit()
    fr.ack_leased([(taken[5][1], 0)])  # never committed: lost with the process
    fr.abandon()  # what a kill -9 leaves: the last commit
    again = Frontier(tmp_path / "s", 2, readahead=4)
    assert again.size == 10 and again.available(0) == 7
    rows = []
    while (row := again.take(0)) is not None:
        rows.append(row)
    assert [_url(row) for row in rows] == [f"http://x.test/{i}" for i in range(3, 10)]
    assert [row[1] for row in rows] == [row[1] for row in taken[3:]] + [rows[3][1] + i for i in range(4)]
    # A late ack of a lease of the first run acks the request, also while it is leased again;
    # a second ack of it changes nothing.
    assert again.ack_unknown(taken[4][1]) and not again.ack_unknown(taken[4][1])
    again.ack_leased([(row[1], 0) for row in rows])
    assert again.size == 3 and again.available(0) == 0
    again.commit()
    assert again.conn.execute("SELECT p FROM frontier_rows").fetchall() == [(1,)]  # done: deleted
    again.close()
    last = Frontier(tmp_path / "s", 2)
    assert last.size == 3 and last.take(0) is None and last.available(1) == 3
    last.close()


def test_a_request_not_written_yet_is_served_in_key_order(tmp_path: Path) -> None:
    fr = Frontier(tmp_path / "s", 1, readahead=2)
    fr.add([_wire(i) for i in range(5)])
    fr.commit()
    fr.add([{**_wire(50), "pr": 3}, _wire(51)])  # not committed yet
    assert fr.pending_rows() == 2
    order = [_url(row) for row in iter(lambda: fr.take(0), None)]
    assert order == ["http://x.test/50"] + [f"http://x.test/{i}" for i in (0, 1, 2, 3, 4, 51)]
    assert fr.pending_rows() == 2 and fr.size == 7  # served before they were written
    fr.commit()
    assert fr.pending_rows() == 0 and fr.conn.execute("SELECT count(*) FROM frontier_rows").fetchone() == (3,)
    fr.close()


def test_requests_served_from_a_block_not_written_yet_are_acked_after_its_commit(tmp_path: Path) -> None:
    fr = Frontier(tmp_path / "s", 1, readahead=2)
    fr.add([_wire(i) for i in range(2)])  # the read-ahead is full: the next wait beyond it
    fr.commit()
    fr.add([_wire(i) for i in range(2, 6)])  # a new block, none of it in the read-ahead
    rows = [fr.take(0) for _ in range(4)]  # two from the read-ahead, two read from the open block
    assert [_url(row) for row in rows] == [f"http://x.test/{i}" for i in range(4)]
    fr.commit()  # writes the block while four of its requests are leased
    fr.ack_leased([(row[1], 0) for row in rows])
    rows += [fr.take(0) for _ in range(2)]
    fr.ack_leased([(row[1], 0) for row in rows[4:]])
    fr.commit()
    assert fr.size == 0 and fr.conn.execute("SELECT count(*) FROM frontier_rows").fetchone() == (0,)
    fr.close()


def test_a_schema_1_store_is_read_as_rows_of_one(tmp_path: Path) -> None:
    import sqlite3

    from crawlproj.dispatcher.store import STORE_FILENAME

    (tmp_path / "s").mkdir()
    conn = sqlite3.connect(tmp_path / "s" / STORE_FILENAME)
    conn.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value);"
        "CREATE TABLE seen (f BLOB PRIMARY KEY) WITHOUT ROWID; CREATE TABLE seen_log (f BLOB NOT NULL);"
        "CREATE TABLE frontier (id INTEGER PRIMARY KEY, p INTEGER NOT NULL, npr INTEGER NOT NULL,"
        " req BLOB NOT NULL); CREATE INDEX frontier_order ON frontier (p, npr, id);")
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [("schema", 1), ("partitions", 1), ("epoch", 3),
                                                        ("seen", 3)])
    conn.executemany("INSERT INTO seen_log VALUES (?)", [(_wire(i)["f"],) for i in range(3)])
    conn.executemany("INSERT INTO frontier VALUES (?, 0, ?, ?)",
                     [((3 << 40) + i, -i, msgpack.packb(_wire(i))) for i in range(3)])
    conn.commit()
    conn.close()
    fr = Frontier(tmp_path / "s", 1)
    assert fr.epoch == 4 and fr.size == 3 and fr.add([_wire(i) for i in range(4)])[0] == 1
    rows = [fr.take(0) for _ in range(3)]
    assert [(row[1], _url(row)) for row in rows] == [((3 << 40) + i, f"http://x.test/{i}") for i in (2, 1, 0)]
    fr.ack_leased([(rows[0][1], 0)])
    fr.close()
    again = Frontier(tmp_path / "s", 1)
    assert again.size == 3  # two old ones and the new one
    again.close()


def test_batch_frame_decodes_like_the_protocol_encoder() -> None:
    req = {"u": "http://a.test/", "f": b"\x01" * 20, "k": "a.test", "p": 3}
    frame = encode_batch([(7, msgpack.packb(req, use_bin_type=True)), (2 ** 41, msgpack.packb(req))])
    assert decode_from_dispatcher(frame) == decode_from_dispatcher(
        encode("batch", leases=[[7, req], [2 ** 41, req]]))


# -- service ------------------------------------------------------------------------------------------


def test_simulated_nodes_crawl_to_completion_exactly_once(dispatcher, nodes, web, seeds, truth):
    d = dispatcher("--partitions", str(P_SMALL), "--seeds", ",".join(seeds), *FAST_HEARTBEATS)
    crew = [nodes(d.endpoint, f"node{i}", capacity=7) for i in range(3)]
    register(crew)
    drive(crew, lambda: all(n.finished for n in crew), CRAWL_TIMEOUT, links_of=web_links(web),
          heartbeat_interval=HEARTBEAT)
    leased = leased_urls(crew)
    assert set(leased) == truth
    assert max(leased.values()) == 1, "a URL was leased twice without any fault"
    assert sorted(u for n in crew for u in n.acked) == sorted(truth)
    for node in crew:
        assert node.violations == [], "a node received a request of a partition it does not own"
        assert node.max_batch_over_credit <= 0, "a batch exceeded the credit asked for"
        assert node.leased, "every node took part"
    state = d.status()
    assert state["finished"] and state["frontier"] == 0 and state["leases"] == 0
    assert state["seen"] == len(truth)
    assert state["counters"]["acked"] == len(truth)
    assert state["counters"]["new"] + state["counters"]["seeds_new"] == len(truth)
    assert sum(n["owned"] for n in state["nodes"].values()) == P_SMALL


def test_credit_is_never_exceeded(dispatcher, nodes, seeds):
    d = dispatcher("--partitions", "8", "--seeds", ",".join(seeds), *FAST_HEARTBEATS)
    node = nodes(d.endpoint, "solo", capacity=0)
    register([node])
    for want, total in ((3, 3), (2, 5), (1, 6)):
        node.pull(want)
        drive([node], lambda: len(node.leased) >= total, 5, crawl=False, heartbeat_interval=HEARTBEAT)
        state = d.status()["nodes"]["solo"]
        assert (len(node.leased), state["leases"], state["credit"]) == (total, total, 0)
    assert node.max_batch_over_credit <= 0
    # Distinct politeness keys first: round-robin over the node's non-empty partitions.
    keys = {req["k"] for req in node.leases.values()}
    assert len(keys) >= 5


def test_join_and_graceful_leave_move_about_one_nth(dispatcher, nodes, web, seeds, truth):
    parts = 300
    d = dispatcher("--partitions", str(parts), "--seeds", ",".join(seeds), *FAST_HEARTBEATS)
    a, b = nodes(d.endpoint, "alpha", capacity=2), nodes(d.endpoint, "beta", capacity=2)
    links = web_links(web)
    register([a, b])
    drive([a, b], lambda: settled(d, [a, b], parts), 10, links_of=links, heartbeat_interval=HEARTBEAT)
    before = {"alpha": set(a.owned), "beta": set(b.owned)}
    assert before["alpha"] | before["beta"] == set(range(parts))

    # A third node joins mid-crawl: only the partitions it wins move, only to it.
    c = nodes(d.endpoint, "gamma", capacity=2)
    c.register()
    crew = [a, b, c]
    drive(crew, lambda: c.registered and bool(c.owned) and settled(d, crew, parts), 10, links_of=links, heartbeat_interval=HEARTBEAT)
    moved = set(c.owned)
    expected = {p for p in range(parts) if rendezvous_owner(p, ["alpha", "beta", "gamma"]) == "gamma"}
    assert moved == expected
    sigma = math.sqrt(parts * (1 / 3) * (2 / 3))
    assert abs(len(moved) - parts / 3) < 4 * sigma
    assert a.owned == before["alpha"] - moved and b.owned == before["beta"] - moved
    # Handoff state passed through, from the node that held each partition.
    handed = set()
    for got, state in c.assigns:
        assert state["from"] in ("alpha", "beta")
        assert set(got) <= before[state["from"]] and set(got) <= set(state["partitions"])
        handed |= set(got)
    assert handed | set(c.welcomes[-1]["assigned"]) == moved

    # Graceful leave: gamma's partitions go back where rendezvous puts them, with its state.
    seen_assigns = {n.name: len(n.assigns) for n in (a, b)}
    c.bye()
    c.stopped = True
    drive(crew, lambda: settled(d, crew, parts), 10, links_of=links, heartbeat_interval=HEARTBEAT)
    assert a.owned == before["alpha"] and b.owned == before["beta"]
    back = [(got, state) for n in (a, b) for got, state in n.assigns[seen_assigns[n.name]:]]
    assert back and all(state["from"] == "gamma" for _, state in back)
    assert set().union(*(set(got) for got, _ in back)) == moved

    drive(crew, lambda: a.finished and b.finished, CRAWL_TIMEOUT, links_of=links,
          heartbeat_interval=HEARTBEAT)
    acked = Counter(u for n in crew for u in n.acked)
    assert set(acked) == truth
    for node in crew:
        assert node.violations == []


def test_dead_node_leases_return_and_go_to_others(dispatcher, nodes, web, seeds, truth):
    d = dispatcher("--partitions", str(P_SMALL), "--seeds", ",".join(seeds), *FAST_HEARTBEATS)
    a, b = nodes(d.endpoint, "steady", capacity=10), nodes(d.endpoint, "doomed", capacity=10)
    register([a, b])
    drive([a, b], lambda: len(b.leases) >= 3, 10, crawl=False, heartbeat_interval=HEARTBEAT)
    lost = {req["u"] for req in b.leases.values()}
    b.stopped = True  # no heartbeat, no ack from now on
    drive([a, b], lambda: a.finished, CRAWL_TIMEOUT, links_of=web_links(web),
          heartbeat_interval=HEARTBEAT)
    assert lost <= set(a.acked)
    assert set(a.acked) | set(b.acked) == truth
    state = d.status()
    assert not state["nodes"]["doomed"]["alive"]
    assert state["counters"]["returned_dead"] >= len(lost)
    assert state["nodes"]["steady"]["owned"] == P_SMALL


def test_node_restart_under_same_name_returns_its_leases(dispatcher, nodes, seeds):
    d = dispatcher("--partitions", "8", "--seeds", ",".join(seeds), *FAST_HEARTBEATS)
    first = nodes(d.endpoint, "phoenix", capacity=4)
    register([first])
    drive([first], lambda: len(first.leases) >= 4, 5, crawl=False, heartbeat_interval=HEARTBEAT)
    held = set(first.leases)
    first.stopped = True
    first.close()
    second = nodes(d.endpoint, "phoenix", capacity=4)  # ROUTER_HANDOVER: takes over the identity
    register([second])
    drive([second], lambda: held <= set(second.leases), 5, crawl=False, heartbeat_interval=HEARTBEAT)
    assert d.status()["counters"]["returned_restart"] >= len(held)


def test_lease_expiry_returns_requests(dispatcher, nodes, seeds):
    d = dispatcher("--partitions", "8", "--seeds", ",".join(seeds[:5]), "--lease-timeout", "0.5",
                   *FAST_HEARTBEATS)
    node = nodes(d.endpoint, "slow", capacity=0)
    register([node])
    node.pull(5)
    drive([node], lambda: len(node.leased) == 5, 5, crawl=False, heartbeat_interval=HEARTBEAT)
    first = {lid for lid, _ in node.leased}
    wait_until(lambda: d.status()["counters"].get("expired", 0) >= 5, 5, "leases to expire")
    node.leases.clear()
    node.pull(5)
    drive([node], lambda: len(node.leased) == 10, 5, crawl=False, heartbeat_interval=HEARTBEAT)
    assert {lid for lid, _ in node.leased[5:]} == first  # same rows (lease id = row id) again


def test_kill_9_mid_crawl_then_restart_resumes(dispatcher, nodes, web, seeds, truth):
    d = dispatcher("--partitions", str(P_SMALL), "--seeds", ",".join(seeds), *FAST_HEARTBEATS)
    crew = [nodes(d.endpoint, f"n{i}", capacity=3) for i in range(2)]
    links = web_links(web)
    register(crew)
    drive(crew, lambda: sum(len(n.acked) for n in crew) >= len(truth) // 3, CRAWL_TIMEOUT,
          links_of=links, heartbeat_interval=HEARTBEAT)
    d.kill()
    d.restart()
    drive(crew, lambda: all(n.finished for n in crew), CRAWL_TIMEOUT, links_of=links,
          heartbeat_interval=HEARTBEAT)
    acked = {u for n in crew for u in n.acked}
    assert acked == truth, f"lost: {sorted(truth - acked)[:5]}"
    state = d.status()
    assert state["epoch"] == 2 and state["frontier"] == 0 and state["finished"]
    assert state["seen"] == len(truth)
    assert any(UNKNOWN_NODE in n.error_codes for n in crew)


def test_bad_frames_are_counted_dropped_and_the_service_keeps_serving(
        dispatcher, nodes, zmq_context, web, seeds, truth):
    d = dispatcher("--partitions", str(P_SMALL), "--seeds", ",".join(seeds), *FAST_HEARTBEATS)
    good_url = canonicalize("http://site0001.test/new")
    good = {"u": good_url, "f": fingerprint(good_url), "k": "site0001.test",
            "p": partition_of("site0001.test", P_SMALL)}
    frames = [
        b"\xc1 not msgpack",
        b"x" * (MAX_FRAME_BYTES + 1),
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"v": PROTOCOL_VERSION + 1, "t": "heartbeat", "node": "rogue"}),
        msgpack.packb({"v": PROTOCOL_VERSION, "t": "teleport", "node": "rogue"}),
        msgpack.packb({"v": PROTOCOL_VERSION, "t": "pull"}),
        encode("push", node="rogue", requests=[
            {**good, "f": b"short"}, {**good, "p": (good["p"] + 1) % P_SMALL},
            {"u": good_url}, "not a map", {**good, "pr": "high"}, good]),
        encode("ack", node="rogue", leases=[2 ** 64 - 1, "x", -1]),  # unknown ids: no-ops
    ]
    rogue = zmq_context.socket(zmq.DEALER)
    try:
        rogue.setsockopt(zmq.ROUTING_ID, b"rogue")
        rogue.connect(d.endpoint)
        for frame in frames:
            rogue.send(frame)
        replies = []
        while len(replies) < len(frames) + 1:  # the push answers twice (+ "unknown node")
            assert rogue.poll(5000), f"only {len(replies)} replies"
            replies.append(decode_from_dispatcher(rogue.recv()))
    finally:
        rogue.close(0)
    assert all(r["t"] == "error" for r in replies)
    state = d.status()
    assert state["bad_frames"] == {"undecodable": 1, "oversized": 1, "not_a_map": 1, "version": 1,
                                   "unknown_type": 1, "missing_field": 1, "request": 1}
    assert state["counters"]["bad_requests"] == 5
    assert state["counters"]["new"] == 1  # the one valid request of the push is kept
    assert state["counters"]["acks_unknown"] == 3
    # ... and a normal crawl still completes.
    crew = [nodes(d.endpoint, "honest", capacity=10)]
    register(crew)
    drive(crew, lambda: crew[0].finished, CRAWL_TIMEOUT, links_of=web_links(web),
          heartbeat_interval=HEARTBEAT)
    assert set(crew[0].acked) == truth | {good_url}


def test_push_fields_split_back_into_the_same_requests():
    reqs = []
    for i in range(40):
        url = canonicalize(f"http://site{i % 7:04d}.test/p{i}")
        key = f"site{i % 7:04d}.test"
        reqs.append(wire_request(url, fingerprint(url), key, partition_of(key, P_SMALL),
                                 priority=(i % 3) - 1, dont_filter=i % 5 == 0, depth=i,
                                 meta={"n": i, "b": b"\x00\xff"}))
    frame = encode("push", node="n", **push_fields(reqs))
    push = split_push(decode_from_node(frame), P_SMALL)
    assert [msgpack.unpackb(b, raw=False) for b in push.blobs] == reqs
    assert push.fps == [r["f"] for r in reqs] and push.keys == [r["k"] for r in reqs]
    assert push.parts == [r["p"] for r in reqs] and push.prs == [(i % 3) - 1 for i in range(40)]
    assert push.forced == [i for i in range(40) if i % 5 == 0]
    plain = push_fields([reqs[1], reqs[4]])  # no priority, no dont_filter: no columns for them
    assert "pr" not in plain and "df" not in plain
    assert split_push(decode_from_node(encode("push", node="n", **plain)), P_SMALL).prs is None


def test_columnar_push_checks_columns_framing_and_first_request(dispatcher, zmq_context):
    """A push whose columns or framing are wrong is refused whole with one clear reason; a key in
    the wrong partition drops that request only; a request whose content is bad but framed (not
    the first) is stored and reaches the leasing node as its own lease, the batch decodable."""
    d = dispatcher("--partitions", str(P_SMALL), *FAST_HEARTBEATS)

    def req(i: int) -> dict[str, Any]:
        url = canonicalize(f"http://site{i:04d}.test/columnar")
        key = f"site{i:04d}.test"
        return {"u": url, "f": fingerprint(url), "k": key, "p": partition_of(key, P_SMALL)}

    good = push_fields([req(1), req(2)])
    wrong_part = req(3)
    wrong_part["p"] = (wrong_part["p"] + 1) % P_SMALL
    refused = {
        "not msgpack": {**good, "requests": b"\xc1\xc1"},
        "trailing bytes": {**good, "requests": good["requests"] + b"\x01"},
        "short f": {**good, "f": good["f"][:-1]},
        "k not strings": {**good, "k": [1, 2]},
        "p out of range": {**good, "p": [0, P_SMALL]},
        "pr not integers": {**good, "pr": ["high", 0]},
        "df out of range": {**good, "df": [5]},
        "first does not match": {**good, "k": [good["k"][1], good["k"][1]]},
    }
    mixed = push_fields([req(4), wrong_part, req(5)])
    mixed["requests"] = msgpack.packb([req(4), wrong_part, 7], use_bin_type=True)  # 7: framed, not a map
    rogue = zmq_context.socket(zmq.DEALER)
    try:
        rogue.setsockopt(zmq.ROUTING_ID, b"rogue")
        rogue.connect(d.endpoint)
        rogue.send(encode("register", node="rogue", pid=1, host="test", capacity=10))
        assert rogue.poll(5000) and decode_from_dispatcher(rogue.recv())["t"] == "welcome"
        for fields in refused.values():
            rogue.send(encode("push", node="rogue", **fields))
        rogue.send(encode("push", node="rogue", **mixed))
        reasons = []
        while len(reasons) < len(refused) + 1:  # + the mixed push's dropped request
            assert rogue.poll(5000), f"only {len(reasons)} replies: {reasons}"
            msg = decode_from_dispatcher(rogue.recv())
            if msg["t"] == "error":
                reasons.append(msg["reason"])
        state = d.status()
        assert state["bad_frames"]["push"] == len(refused), reasons
        assert sum("bad frame (push)" in r for r in reasons) == len(refused), reasons
        assert any("1 of 3 pushed requests invalid" in r and "is not the partition" in r for r in reasons)
        assert state["counters"]["new"] == 2 and state["counters"]["bad_requests"] == 1
        # Leased: the framed non-map comes as its own lease in a batch that decodes.
        rogue.send(encode("pull", node="rogue", credit=10))
        leases = []
        deadline = time.monotonic() + 10
        while len(leases) < 2 and time.monotonic() < deadline:
            if rogue.poll(500):
                msg = decode_from_dispatcher(rogue.recv())
                if msg["t"] == "batch":
                    leases += [request for _, request in msg["leases"]]
        assert sorted(map(repr, leases)) == sorted([repr(req(4)), "7"])
    finally:
        rogue.close(0)


def test_backlog_balance_moves_a_partition_from_the_loaded_node_to_the_idle_one(
        dispatcher, zmq_context):
    """Two nodes, all backlog in two partitions of one of them: the larger partition that
    lowers the larger backlog moves (revoke, handoff, assign), once; the smaller one stays."""
    d = dispatcher("--partitions", str(P_SMALL), *FAST_HEARTBEATS, "--balance-interval", "0.2")
    owned: dict[str, set[int]] = {"a": set(), "b": set()}
    seen: dict[str, list[tuple[str, list[int]]]] = {"a": [], "b": []}
    socks = {}
    for name in ("a", "b"):
        sock = socks[name] = zmq_context.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, name.encode())
        sock.connect(d.endpoint)

    def pump(until: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 15
        while not until():
            assert time.monotonic() < deadline, f"{what}: {seen}"
            for name, sock in socks.items():
                while sock.poll(20):
                    msg = decode_from_dispatcher(sock.recv())
                    if msg["t"] == "welcome":
                        owned[name] |= set(msg["assigned"])
                    elif msg["t"] == "assign":
                        owned[name] |= set(msg["partitions"])
                        seen[name].append(("assign", msg["partitions"]))
                    elif msg["t"] == "revoke":
                        owned[name] -= set(msg["partitions"])
                        seen[name].append(("revoke", msg["partitions"]))
                        sock.send(encode("handoff", node=name, partitions=msg["partitions"], state={}))
                    elif msg["t"] == "heartbeat":
                        pass
            for name, sock in socks.items():
                sock.send(encode("heartbeat", node=name))

    try:
        socks["a"].send(encode("register", node="a", pid=1, host="test", capacity=1))
        pump(lambda: len(owned["a"]) == P_SMALL, "a owns every partition")
        socks["b"].send(encode("register", node="b", pid=2, host="test", capacity=1))
        pump(lambda: owned["b"] and len(owned["a"]) + len(owned["b"]) == P_SMALL, "b got its share")
        seen["a"].clear()
        seen["b"].clear()
        # two keys of two partitions of a: 250 and 150 requests (nobody pulls: they stay)
        keys = []
        for i in range(10_000):
            key = f"site{i}.test"
            p = partition_of(key, P_SMALL)
            if p in owned["a"] and p not in [q for _, q in keys]:
                keys.append((key, p))
            if len(keys) == 2:
                break
        (big, p_big), (small, p_small) = keys
        reqs = []
        for key, n in ((big, 250), (small, 150)):
            for j in range(n):
                url = canonicalize(f"http://{key}/page{j}")
                reqs.append({"u": url, "f": fingerprint(url), "k": key, "p": partition_of(key, P_SMALL)})
        socks["a"].send(encode("push", node="a", **push_fields(reqs)))
        pump(lambda: p_big in owned["b"], "the larger partition moved to b")
        pump(lambda: d.status()["counters"].get("balance_moves") == 1, "one move counted")
        time.sleep(1.0)  # five balance checks: a second move would show (not synchronisation)
        pump(lambda: True, "")
        assert seen["a"] == [("revoke", [p_big])] and seen["b"] == [("assign", [p_big])]
        assert p_small in owned["a"] and d.status()["counters"]["balance_moves"] == 1
    finally:
        for sock in socks.values():
            sock.close(0)


def test_partition_count_is_fixed_per_store(dispatcher):
    d = dispatcher("--partitions", "64")
    assert d.terminate() == 0
    with pytest.raises(StartError, match="64 partitions"):
        dispatcher("--partitions", "32")


def test_redis_seeds_in_keep_alive_mode(dispatcher, nodes, redis_url):
    import redis

    key = "disp-test:start_urls"
    client = redis.Redis.from_url(redis_url)
    client.delete(key)
    client.rpush(key, "http://a.seed.test/", json.dumps({"url": "http://b.seed.test/x"}), "bogus")
    d = dispatcher("--partitions", "16", "--keep-alive", "--seeds-redis", redis_url,
                   "--seeds-key", key, "--seeds-poll-interval", "0.1", *FAST_HEARTBEATS)
    node = nodes(d.endpoint, "keeper", capacity=10)
    register([node])

    def no_links(url: str) -> list[str]:
        return []

    drive([node], lambda: len(node.acked) == 2, 10, links_of=no_links, heartbeat_interval=HEARTBEAT)
    client.sadd(key + ":unused", "x")  # another key is not read
    client.rpush(key, "http://c.seed.test/")
    drive([node], lambda: len(node.acked) == 3, 10, links_of=no_links, heartbeat_interval=HEARTBEAT)
    assert sorted(node.acked) == ["http://a.seed.test/", "http://b.seed.test/x",
                                  "http://c.seed.test/"]
    # The last ack may still be on its way: wait for the dispatcher to have applied it.
    state = wait_until(lambda: (s := d.status())["frontier"] == 0 and s, 5, "the last ack")
    assert not node.finished and not state["finished"]
    assert state["counters"]["seeds_invalid"] == 1 and client.llen(key) == 0
    client.close()


def test_environment_overrides_sigterm_and_the_cli(dispatcher, tmp_path):
    d = dispatcher(env={"CRAWLPROJ_DISPATCHER_PARTITIONS": "32"})
    assert d.status()["partitions"] == 32
    assert d.terminate() == 0
    assert "Dispatcher stopped" in d.log_tail()
    out = subprocess.run([sys.executable, "-m", "crawlproj.tools.cli", "dispatcher", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--partitions" in out.stdout


def test_renewed_leases_outlive_the_lease_timeout(dispatcher, nodes, seeds):
    d = dispatcher("--partitions", "8", "--seeds", ",".join(seeds[:5]), "--lease-timeout", "0.5",
                   *FAST_HEARTBEATS)
    node = nodes(d.endpoint, "renewing", capacity=0)
    register([node])
    assert node.welcomes[-1]["renew_interval"] == 0.5 / 4
    node.pull(5)
    drive([node], lambda: len(node.leased) == 5, 5, crawl=False, heartbeat_interval=HEARTBEAT)
    held = sorted(node.leases)
    until = time.monotonic() + 2.0  # four lease time-outs

    def renewing() -> bool:
        node.send("renew", node=node.name, leases=held)
        return time.monotonic() >= until

    drive([node], renewing, 10, crawl=False, heartbeat_interval=HEARTBEAT, poll=0.1)
    counters = d.status()["counters"]
    assert counters.get("expired", 0) == 0 and counters["renewed"] >= 5 * 10
    node.send("renew", node=node.name, leases=[10 ** 12, "x"])  # not ours: counted, ignored
    wait_until(lambda: d.status()["counters"].get("renewed_unknown", 0) == 2, 5, "unknown renewals")
    # no renewal any more: they expire and are served again
    wait_until(lambda: d.status()["counters"].get("expired", 0) == 5, 5, "leases to expire")


def test_postponed_leases_wait_then_are_served_again(dispatcher, nodes, seeds):
    d = dispatcher("--partitions", "8", "--seeds", ",".join(seeds[:4]), *FAST_HEARTBEATS)
    node = nodes(d.endpoint, "robots-down", capacity=0)
    register([node])
    node.pull(4)
    drive([node], lambda: len(node.leased) == 4, 5, crawl=False, heartbeat_interval=HEARTBEAT)
    first, later, acked = sorted(node.leases)[:2], sorted(node.leases)[2], sorted(node.leases)[3]
    node.send("postpone", node=node.name, leases=[[lid, 0.3] for lid in first] + [[later, 600.0]]
              + [[acked, 600.0]])
    state = wait_until(lambda: (s := d.status())["postponed"] == 4 and s, 5, "4 postponed")
    keys = {node.leases[lid]["k"] for lid in [*first, later, acked]}
    assert set(state["postponed_keys"]) == keys and sum(state["postponed_keys"].values()) == 4
    assert state["leases"] == 0 and not state["finished"]
    node.ack([acked])  # a copy fetched before the postpone reached it: done
    wait_until(lambda: d.status()["postponed"] == 3, 5, "the acked one out")
    node.leases.clear()
    node.pull(4)
    drive([node], lambda: len(node.leased) == 6, 5, crawl=False, heartbeat_interval=HEARTBEAT)
    assert {lid for lid, _ in node.leased[4:]} == set(first)  # served again after 0.3 s
    state = d.status()
    assert state["postponed"] == 1 and not state["finished"]  # the crawl waits for it
    assert state["counters"]["returned_postponed"] == 2
    node.send("postpone", node=node.name, leases=[[1, "soon"]])
    wait_until(lambda: d.status()["bad_frames"].get("postpone") == 1, 5, "a bad postpone refused")


def test_fence_settings_that_break_the_timing_refuse_to_start() -> None:
    from crawlproj.dispatcher.config import Config
    from crawlproj.dispatcher.errors import ConfigError

    assert Config(heartbeat_interval=2, heartbeat_timeout=10).fence_seconds == 6
    for fence in (10.0, 12.0, 1.0):
        with pytest.raises(ConfigError) as info:
            Config(heartbeat_interval=2, heartbeat_timeout=10, fence=fence)
        message = str(info.value)
        assert "--fence" in message and "--heartbeat-timeout" in message and "\n" not in message
