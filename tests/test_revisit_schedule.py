"""The dispatcher's per-URL revisit schedule (docs/revisits.md) with a real dispatcher and a real node.

``fixed``: every URL is fetched again after its interval and never before, politely; ``none``:
no schedule row, no outcome, the crawl ends as today; a kill -9 of the dispatcher keeps every
row's next fetch time. Plus unit tests of the schedule table on a real store, and of the revisit
share of a key in the node's per-key queues.
"""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import wait_until
from politeness_checks import assert_polite

from crawlproj.dispatcher.config import Config
from crawlproj.dispatcher.frontier import Frontier
from crawlproj.dispatcher.store import STORE_FILENAME
from crawlproj.dispatcher.revisits import RevisitSchedule
from crawlproj.meta import REVISIT, REVISIT_CONTENT_HASH, REVISIT_ETAG
from crawlproj.revisit.policy import Outcome
from crawlproj.scheduling.keyqueue import KeyQueues
from crawlproj.tools.cluster import Cluster
from crawlproj.tools.runner import SYNTHWEB_SETTINGS
from crawlproj.wire.protocol import routed_request
from crawlproj_testing.synthweb.model import RFC9309_OUTCOME, WebSpec

PARTITIONS = 16
DELAY = 0.2  # seconds between fetches on one key
INTERVAL = 4.0  # the fixed revisit interval
SPEC = WebSpec(seed=5, hosts=4, min_pages=6, max_pages=6, base_latency_ms=5, slow_host_share=0.0,
               special_share=0.0, subdomain_share=0.0, page_bytes=1500, robots_variants=False)
NODE_SETTINGS: dict[str, Any] = {
    **SYNTHWEB_SETTINGS, "BROAD_SCOPE": "any", "DOWNLOAD_TIMEOUT": 3, "DOWNLOAD_DELAY": DELAY,
    "ROBOTS_HOLD_TIME": 2, "ROBOTS_RETRY_DELAY": 1, "LOG_LEVEL": "INFO",
    "DISPATCHER_HEARTBEAT_INTERVAL": 0.5, "DISPATCHER_STATS_INTERVAL": 0.5,
}
FIXED = {**NODE_SETTINGS, "REVISIT_POLICY": "fixed", "REVISIT_INTERVAL": INTERVAL}


def start(tmp_path: Path, synthweb: Any, settings: dict[str, Any], *dispatcher_args: str) -> tuple[Any, Cluster]:
    web = synthweb(SPEC)
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("\n".join(web.seed_urls()) + "\n")
    cluster = Cluster(tmp_path / "cluster", seeds, settings=settings,
                      dispatcher_args=("--partitions", str(PARTITIONS), *dispatcher_args))
    return web, cluster


def fetch_starts(web: Any) -> dict[tuple[str, str], list[float]]:
    """Start times (s) of the page fetches, per page, in order."""
    starts: dict[tuple[str, str], list[float]] = defaultdict(list)
    for a in web.accesses():
        if not a.is_robots:
            starts[(a.host, a.path)].append(a.start_ms / 1000.0)
    return {page: sorted(times) for page, times in starts.items()}


def schedule_of(store: Path) -> dict[bytes, tuple[int, int]]:
    """{fingerprint: (next ms, queued)} as the store file holds it (a reader beside the dispatcher)."""
    conn = sqlite3.connect(f"file:{store / STORE_FILENAME}?mode=ro", uri=True, timeout=30)
    try:
        return {f: (nxt, q) for f, nxt, q in conn.execute("SELECT f, next, q FROM schedule")}
    finally:
        conn.close()


def test_fixed_fetches_every_url_again_after_its_interval_never_before_and_politely(tmp_path, synthweb):
    web, cluster = start(tmp_path, synthweb, FIXED)
    truth = web.web.ground_truth(outcome=RFC9309_OUTCOME)
    with cluster:
        cluster.start_node("n1")
        starts = wait_until(lambda: (s := fetch_starts(web)).keys() == truth
                            and all(len(t) >= 3 for t in s.values()) and s, 120,
                            "every page fetched three times")
        state = cluster.status()
        cluster.stop_nodes()
    starts = fetch_starts(web)
    assert starts.keys() == truth
    gaps = [b - a for times in starts.values() for a, b in zip(times, times[1:])]
    # never before the interval (the access log's clock is the server's, the schedule's the
    # dispatcher's: the same machine's)
    assert min(gaps) >= INTERVAL, sorted(gaps)[:5]
    assert_polite([a for a in web.accesses() if not a.is_robots], delay=DELAY)
    assert state["revisits"]["rows"] == len(truth)
    assert state["revisits"]["rescheduled"] >= len(truth)
    print(f"fixed {INTERVAL:g} s: {len(truth)} pages, {sum(map(len, starts.values()))} fetches, "
          f"gaps {min(gaps):.2f}..{max(gaps):.2f} s")


def test_none_changes_nothing(tmp_path, synthweb):
    web, cluster = start(tmp_path, synthweb, NODE_SETTINGS)
    truth = web.web.ground_truth(outcome=RFC9309_OUTCOME)
    with cluster:
        cluster.start_node("n1")
        assert cluster.wait(120), "the crawl did not finish"
        state = cluster.status()
    starts = fetch_starts(web)
    assert starts.keys() == truth
    assert max(map(len, starts.values())) == 1  # one pass
    assert state["finished"]
    assert state["revisits"] == {"rows": 0, "queued": 0, "share": 0.5}  # no outcome came, no row
    assert schedule_of(tmp_path / "cluster" / "dispatcher-store") == {}


def test_kill_9_of_the_dispatcher_during_a_revisit_crawl_keeps_every_next_fetch_time(tmp_path, synthweb):
    store = tmp_path / "cluster" / "dispatcher-store"
    timeout = 3.0
    # the node goes on with what the killed dispatcher leased it until its fence lapses
    fence = Config(heartbeat_timeout=timeout).fence_seconds
    web, cluster = start(tmp_path, synthweb, FIXED, "--heartbeat-timeout", str(timeout))
    truth = web.web.ground_truth(outcome=RFC9309_OUTCOME)
    with cluster:
        cluster.start_node("n1")
        wait_until(lambda: (s := fetch_starts(web)).keys() == truth and sum(len(t) > 1 for t in s.values()) > 5,
                   120, "every page fetched, some revisited")
        killed = time.time()
        cluster.dispatcher.kill()
        before = schedule_of(store)  # what the store kept: the restarted dispatcher reads this
        fetched = set(fetch_starts(web))
        cluster.dispatcher.restart()
        restarted = time.time()
        after = schedule_of(store)  # in the restart hold: no partition assigned, nothing leased
        assert before, "no schedule row survived the kill"
        for f, (nxt, _) in before.items():
            assert f in after, "a schedule row was lost in the restart"
            assert after[f][0] >= nxt  # the same, or later if a replayed ack moved it on
        moved = sum(after[f][0] != before[f][0] for f in before)
        # every page fetched before the kill gets (or has) its row, replayed acks included
        wait_until(lambda: len(schedule_of(store)) == len(fetched), 60, "a row for every fetched page")
        kill_at = time.time()
        wait_until(lambda: all(t[-1] > kill_at for t in fetch_starts(web).values()), 120,
                   "every page fetched again after the restart")
        cluster.stop_nodes()
    starts = fetch_starts(web)
    pairs = [(a, b) for times in starts.values() for a, b in zip(times, times[1:])]
    # a lease whose ack the kill lost is served again at once after the restart (at-least-once):
    # only a gap from a fetch the killed dispatcher leased (started before the node's fence
    # lapsed) may be short; every other revisit waits its interval
    def lost(a: float, b: float) -> bool:
        return a < killed + fence and b > killed

    gaps = [b - a for a, b in pairs if not lost(a, b)]
    short = {page: [round(t - killed, 3) for t in times] for page, times in starts.items()
             if any(b - a < INTERVAL and not lost(a, b) for a, b in zip(times, times[1:]))}
    assert min(gaps) >= INTERVAL, (f"gaps {sorted(gaps)[:5]}; restart {restarted - killed:.3f} s after the "
                                   f"kill; fetch times from the kill of pages with a short gap: {short}")
    across = [b - a for a, b in pairs if lost(a, b) and b - a < INTERVAL]
    assert len(across) <= len(before) + len(fetched), across
    assert_polite([a for a in web.accesses() if not a.is_robots], delay=DELAY)
    print(f"kill -9: {len(before)} rows kept, {moved} moved on by replayed acks, "
          f"{len(across)} leases served again after the restart")


# -- the schedule table on its own (a real store) ----------------------------------------------------


def _req(url: str) -> dict[str, Any]:
    return routed_request(url, PARTITIONS)


def _ack(fr: Frontier, sched: RevisitSchedule, req: dict[str, Any], outcome: Outcome, rp: list[Any],
         new: bool = False) -> None:
    """Lease the URL's row (a new one if ``new``) and ack it with that outcome, as the service does."""
    if new:
        fr.add([req])
    p = req["p"]
    others = []
    while (row := fr.take(p)) is not None and msgpack.unpackb(row[2], raw=False)["f"] != req["f"]:
        others.append(row)
    for other in others:
        fr.give_back(p, other)
    assert row is not None
    wire = {**outcome.to_wire(), "rp": rp}
    sched.acked([(row[1], p, row[2])], {row[1]: wire})
    fr.ack_leased([(row[1], p)])
    fr.commit()


def test_schedule_rows_are_due_after_their_interval_and_carry_the_validators(tmp_path):
    fr = Frontier(tmp_path, PARTITIONS)
    sched = RevisitSchedule(fr, share=0.5)
    req = _req("http://a.test/x")
    body_hash = bytes(range(20))
    _ack(fr, sched, req, Outcome(200, None, '"e1"', None, body_hash), ["fixed", 60, 60, 60],
         new=True)
    assert sched.rows == 1 and fr.size == 0
    now = time.time()
    assert sched.tick(now + 30) == []  # not due yet
    sched._next_tick = 0
    assert sched.tick(now + 61) == [req["p"]]
    row = fr.take(req["p"])
    assert row is not None
    again = msgpack.unpackb(row[2], raw=False)
    assert again["u"] == req["u"] and again["meta"][REVISIT_ETAG] == '"e1"' and again["meta"][REVISIT] == 1
    assert again["meta"][REVISIT_CONTENT_HASH] == body_hash.hex()
    fr.commit()
    fr.close()
    # durable: a new process reads the same row, queued
    fr2 = Frontier(tmp_path, PARTITIONS)
    sched2 = RevisitSchedule(fr2)
    assert sched2.rows == 1 and sum(sched2.queued) == 1 and fr2.size == 1
    fr2.close()


@pytest.mark.parametrize("new_waiting, share, expected", [(0, 0.5, 256), (10, 0.5, 10), (10, 0.2, 3),
                                                          (10, 0.0, 0), (10, 1.0, 256)])
def test_revisits_take_at_most_their_share_of_a_partition(tmp_path, new_waiting, share, expected):
    fr = Frontier(tmp_path, 1)
    sched = RevisitSchedule(fr, share=share)
    fr.add([routed_request(f"http://a.test/{i}", 1) for i in range(new_waiting)])
    assert sched.allowance(0) == expected
    fr.close()


def test_a_gone_url_retires_and_an_ack_without_outcome_keeps_a_revisit_on_its_interval(tmp_path):
    fr = Frontier(tmp_path, PARTITIONS)
    sched = RevisitSchedule(fr)
    req = _req("http://b.test/y")
    rp = ["fixed", 60, 60, 60]
    _ack(fr, sched, req, Outcome(200), rp, new=True)
    for _ in range(2):
        sched._next_tick = 0
        assert sched.tick(time.time() + 10 ** 6) == [req["p"]]
        _ack(fr, sched, req, Outcome(404), rp)
        assert sched.rows == 1
    sched._next_tick = 0
    sched.tick(time.time() + 10 ** 7)
    _ack(fr, sched, req, Outcome(410), rp)
    assert sched.rows == 0 and sched.counters["revisit_retired"] == 1  # gone after 3
    # a revisit acked by a node that sends no outcome: due again after the same interval
    req2 = _req("http://b.test/z")
    _ack(fr, sched, req2, Outcome(200), rp, new=True)
    sched._next_tick = 0
    sched.tick(time.time() + 61)
    row = fr.take(req2["p"])
    assert row is not None
    sched.acked([(row[1], req2["p"], row[2])], {})
    fr.ack_leased([(row[1], req2["p"])])
    (p, nxt, ivl, fails, q), = sched.table().values()
    assert q == 0 and ivl == 60 and nxt >= (time.time() + 59) * 1000
    fr.close()


def test_adaptive_rows_shorten_when_the_page_changed_and_lengthen_when_not(tmp_path):
    fr = Frontier(tmp_path, PARTITIONS)
    sched = RevisitSchedule(fr)
    rp = ["adaptive", 100, 10, 1000]
    changed, same = _req("http://c.test/changes"), _req("http://c.test/steady")
    _ack(fr, sched, changed, Outcome(200, None, None, None, b"a" * 20), rp, new=True)
    _ack(fr, sched, same, Outcome(200, None, None, None, b"b" * 20), rp, new=True)
    for n in range(3):
        sched._next_tick = 0
        sched.tick(time.time() + 10 ** 4)
        _ack(fr, sched, changed, Outcome(200, True, None, None, bytes([n]) * 20), rp)
        _ack(fr, sched, same, Outcome(304, False), rp)
    intervals = {f: row[2] for f, row in sched.table().items()}
    assert intervals[changed["f"]] == pytest.approx(10 + 90 / 8)  # (1 - 0.5) * I + 0.5 * min, 3 times
    assert intervals[same["f"]] == pytest.approx(100 * 1.5 ** 3)
    fr.close()


# -- the revisit share of a key, on the node ---------------------------------------------------------


def _queues(share: float, new: int, revisits: int, key: str = "a.test") -> KeyQueues[str]:
    q: KeyQueues[str] = KeyQueues(lambda item: item.startswith("r"), share)
    for i in range(max(new, revisits)):
        if i < revisits:
            q.push(key, f"r{i}")
        if i < new:
            q.push(key, f"n{i}")
    return q


def _picks(q: KeyQueues[str], n: int) -> list[str]:
    """The next ``n`` items, each fetch of the key ended at once (no delay)."""
    out = []
    for _ in range(n):
        popped = q.pop_ready(now=0.0)
        assert popped is not None
        out.append(popped[1])
        q.release(popped[0], 0.0)
    return out


def test_a_key_gives_revisits_at_most_their_share_while_new_urls_wait():
    q = _queues(0.5, new=4, revisits=6)
    assert _picks(q, 10) == ["n0", "r0", "n1", "r1", "n2", "r2", "n3", "r3", "r4", "r5"]  # then revisits alone
    assert len(q) == 0 and q.keys == 0 and not q._revisits and not q._credit and not q._front
    q = _queues(0.25, new=40, revisits=40)
    first = _picks(q, 40)
    assert sum(item.startswith("r") for item in first) == 10  # exactly a quarter while both wait
    assert _picks(q, 40)[-1] == "r39"
    assert _picks(_queues(0.0, new=3, revisits=2), 5) == ["n0", "n1", "n2", "r0", "r1"]
    assert _picks(_queues(1.0, new=2, revisits=3), 5) == ["r0", "r1", "r2", "n0", "n1"]
    assert _picks(_queues(0.5, new=0, revisits=2), 2) == ["r0", "r1"]  # only revisits: all of the budget


def test_an_item_pushed_to_the_front_comes_next_and_counts_for_no_pick():
    q = _queues(0.5, new=3, revisits=3)
    key, item = q.pop_ready(now=0.0)
    assert item == "n0"
    q.push(key, item, front=True)  # a wake-up (or a retry) puts it back: it is the next fetch
    q.release(key, 0.0)
    assert _picks(q, 6) == ["n0", "r0", "n1", "r1", "n2", "r2"]
    q = _queues(0.5, new=2, revisits=2, key="b.test")
    assert sorted(item for _, item in q.items()) == ["n0", "n1", "r0", "r1"] and len(q) == 4
    assert sorted(q.remove(lambda key: key == "b.test")) == ["n0", "n1", "r0", "r1"]
    assert len(q) == 0 and not q._revisits and not q._credit
    with pytest.raises(ValueError, match="revisit_share"):
        KeyQueues(revisit_share=1.5)
