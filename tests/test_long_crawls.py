"""Crawls that run for days, in minutes: leases outliving their time-out, a paused node, a
robots.txt that is down for a while (docs/protocol.md: lease renewal, postponed leases, fenced
ownership).

The crawl tests run a real dispatcher and real `scrapy crawl` nodes on the synthetic web and
assert against its ground truth and access log; the last one scripts the dispatcher's side to
watch one real node renew, drop a second copy of a lease and stop at its fence.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import zmq
from conftest import wait_until
from hostile_web import HostileWeb
from politeness_checks import assert_polite

from crawlproj.addons import combine, node_settings
from crawlproj.tools.cluster import Cluster
from crawlproj.tools.runner import SYNTHWEB_SETTINGS, start_crawl
from crawlproj.wire.protocol import decode_from_node, encode, routed_request
from crawlproj.wire.urls import politeness_key
from crawlproj_testing.synthweb.model import RFC9309_OUTCOME, WebSpec
from crawlproj_testing.synthweb.process import Access, SynthWebProcess

PARTITIONS = 16
BASE: dict[str, Any] = {
    **SYNTHWEB_SETTINGS, "BROAD_SCOPE": "any", "DOWNLOAD_TIMEOUT": 3, "ROBOTS_FETCH_TIMEOUT": 3,
    "LOG_LEVEL": "INFO", "DISPATCHER_HEARTBEAT_INTERVAL": 0.5, "DISPATCHER_STATS_INTERVAL": 0.5,
}
CRAWL_TIMEOUT = 240


def pages_of(web: SynthWebProcess) -> list[Access]:
    return [a for a in web.accesses() if not a.is_robots]


def assert_ground_truth_once(web: SynthWebProcess) -> None:
    """Every page of the (all-allowing) ground truth fetched, each exactly once."""
    counts = Counter((a.host, a.path) for a in pages_of(web))
    truth = web.web.ground_truth(outcome=RFC9309_OUTCOME)
    assert set(counts) == truth, (sorted(truth - set(counts))[:8], sorted(set(counts) - truth)[:8])
    twice = [u for u, n in counts.items() if n > 1]
    assert not twice, f"{len(twice)} URLs fetched more than once: {twice[:8]}"


def start_web(synthweb: Any, spec: WebSpec, tmp_path: Path, hold_seconds: float = 4) -> tuple[SynthWebProcess, Path]:
    web = synthweb(spec, hold_seconds=hold_seconds)
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("\n".join(web.seed_urls()) + "\n")
    return web, seeds


# -- 1 + 6: leases renewed past the lease time-out on Crawl-delay keys ----------------------------

# 3 keys of 24 pages with Crawl-delay: 1 (~25 s each) and a lease time-out of 4 s: every lease
# the node takes at the start is held 6 times longer than the time-out.
DELAY_SPEC = WebSpec(seed=17, hosts=3, min_pages=24, max_pages=24, subdomain_share=0.0,
                     special_share=0.0, private_share=0.0, robots_variants=False, crawl_delay=1.0)
LEASE_TIMEOUT = 4.0


def test_leases_held_past_the_time_out_are_renewed_not_served_twice(tmp_path, synthweb):
    web, seeds = start_web(synthweb, DELAY_SPEC, tmp_path)
    for host in web.web.hosts:
        web.set_robots(host.name, "crawl_delay")  # robots.txt says Crawl-delay: 1
    settings = {**BASE, "DOWNLOAD_DELAY": 0.0}  # DISPATCHER_QUEUE_TARGET at its default
    with Cluster(tmp_path / "cluster", seeds, settings=settings,
                 dispatcher_args=("--partitions", str(PARTITIONS),
                                  "--lease-timeout", str(LEASE_TIMEOUT))) as cluster:
        cluster.start_node("n1")
        started = time.monotonic()
        assert cluster.wait(CRAWL_TIMEOUT), "the crawl did not finish"
        took = time.monotonic() - started
        counters = cluster.status()["counters"]
        stats = cluster.node_stats("n1")
    assert took > 4 * LEASE_TIMEOUT  # the leases really outlived the time-out
    assert counters.get("expired", 0) == 0, counters  # the dispatcher re-served none
    assert counters["renewed"] > 0 and counters.get("renewed_unknown", 0) == 0
    assert stats.get("dispatcher/duplicate_lease", 0) == 0
    assert_ground_truth_once(web)
    assert_polite(pages_of(web), delay=DELAY_SPEC.crawl_delay)


# -- 2: a node paused past the dead-node time-out ------------------------------------------------

PAUSE_SPEC = WebSpec(seed=23, hosts=8, min_pages=40, max_pages=60, subdomain_share=0.0,
                     special_share=0.0, base_latency_ms=10, slow_host_share=0.0,
                     robots_variants=False)
PAUSE_DELAY = 0.4
DEAD_TIMEOUT = 3.0


def test_a_paused_node_starts_no_fetch_on_keys_it_no_longer_owns(tmp_path, synthweb):
    web, seeds = start_web(synthweb, PAUSE_SPEC, tmp_path)
    settings = {**BASE, "DOWNLOAD_DELAY": PAUSE_DELAY}
    with Cluster(tmp_path / "cluster", seeds, settings=settings,
                 dispatcher_args=("--partitions", str(PARTITIONS),
                                  "--heartbeat-timeout", str(DEAD_TIMEOUT))) as cluster:
        cluster.start_node("n1")
        cluster.start_node("n2")
        wait_until(lambda: len({a.host for a in pages_of(web) if a.node == "n2"}) >= 2
                   and len(pages_of(web)) > 60, 90, "both nodes crawling")
        n2 = cluster.nodes["n2"]
        os.kill(n2.pid, signal.SIGSTOP)
        paused_ms = time.time() * 1000.0
        try:
            wait_until(lambda: not cluster.status()["nodes"]["n2"]["alive"], 30,
                       "n2 declared dead")
            # n1 takes n2's partitions over once n2's last fetch has surely ended...
            wait_until(lambda: cluster.status()["nodes"]["n1"]["owned"] == PARTITIONS, 30,
                       "n1 to own every partition")
            n2_hosts = {a.host for a in pages_of(web) if a.node == "n2"}

            def n1_on_n2_keys() -> bool:
                taken = [a for a in pages_of(web) if a.node == "n1" and a.host in n2_hosts
                         and a.start_ms > paused_ms]
                return len(taken) >= 2 * len(n2_hosts)

            # ... and crawls them when n2 wakes up, its queue full of requests of those keys
            wait_until(n1_on_n2_keys, 60, "n1 to crawl n2's keys")
            wait_until(lambda: time.time() * 1000.0 >= paused_ms + 2000 * DEAD_TIMEOUT, 30,
                       "a pause of twice the dead-node time-out")
        finally:
            os.kill(n2.pid, signal.SIGCONT)
        resumed_ms = time.time() * 1000.0
        assert cluster.wait(CRAWL_TIMEOUT), "the crawl did not finish"
        n2_stats = cluster.node_stats("n2")
    accesses = web.accesses()
    pages = [a for a in accesses if not a.is_robots]
    # No two fetches on one key ever overlap or come closer than the delay, whoever made them
    # (robots.txt fetches count against a key's politeness too).
    assert_polite(accesses, delay=PAUSE_DELAY)
    assert n2_stats["dispatcher/fence_lapsed"] >= 1
    # What n2 started before the pause is all it fetched until it registered again, and every
    # URL fetched twice was one n2 had in flight at the pause (one per key at most).
    n2_before = {(a.host, a.path) for a in pages if a.node == "n2" and a.start_ms < paused_ms}
    counts = Counter((a.host, a.path) for a in pages)
    twice = [u for u, n in counts.items() if n > 1]
    assert all(u in n2_before for u in twice), twice
    keys = {politeness_key(web.url(h.name)) for h in web.web.hosts}
    assert len(twice) <= len(keys), twice
    truth = web.web.ground_truth(outcome=RFC9309_OUTCOME)
    assert set(counts) == truth
    # n2's fetches after it woke up are on keys it owned again, after n1's last fetch there
    for key, entries in _by_key(pages).items():
        after = [a for a in entries if a.node == "n2" and a.start_ms >= resumed_ms]
        if after:
            n1_before = [a for a in entries if a.node == "n1" and a.start_ms < after[0].start_ms]
            assert not n1_before or after[0].start_ms >= n1_before[-1].end_ms + 950 * PAUSE_DELAY
    print(f"paused node: {len(twice)} URLs fetched twice (in flight at the pause), "
          f"{len(pages)} pages")


def _by_key(pages: list[Access]) -> dict[str, list[Access]]:
    groups: dict[str, list[Access]] = {}
    for a in sorted(pages, key=lambda a: a.start_ms):
        groups.setdefault(politeness_key(f"http://{a.host}/"), []).append(a)
    return groups


# -- 3: robots.txt unreachable for a while, then back --------------------------------------------

ROBOTS_SPEC = WebSpec(seed=31, hosts=6, min_pages=10, max_pages=25, subdomain_share=0.0,
                      special_share=0.0, robots_variants=False)


def test_requests_of_an_unreachable_robots_txt_are_postponed_then_crawled(tmp_path, synthweb):
    # hold 30 s: the "timeout" host never answers; ROBOTS_FETCH_TIMEOUT (1 s), not
    # DOWNLOAD_TIMEOUT (3 s), ends each attempt
    web, seeds = start_web(synthweb, ROBOTS_SPEC, tmp_path, hold_seconds=30)
    failing = {web.web.hosts[0].name: "server_error", web.web.hosts[1].name: "unavailable",
               web.web.hosts[2].name: "timeout"}
    for host, variant in failing.items():
        web.set_robots(host, variant)
    settings = {**BASE, "DOWNLOAD_DELAY": 0.05, "ROBOTS_FETCH_TIMEOUT": 1,
                "ROBOTS_RETRY_DELAY": 1, "ROBOTS_RETRY_MAX_DELAY": 2, "ROBOTS_HOLD_TIME": 1}
    with Cluster(tmp_path / "cluster", seeds, settings=settings,
                 dispatcher_args=("--partitions", str(PARTITIONS))) as cluster:
        cluster.start_node("n1")
        cluster.start_node("n2")
        failing_keys = {politeness_key(web.url(h)) for h in failing}

        def waiting() -> dict[str, Any] | None:
            state = cluster.status()
            return state if failing_keys <= set(state["postponed_keys"]) else None

        state = wait_until(waiting, 60, "requests of every failing host postponed")
        assert state["postponed"] >= len(failing) and not state["finished"]
        # a while of failures: each host's robots.txt tried again and again, with back-off
        wait_until(lambda: all(sum(1 for a in web.accesses() if a.is_robots and a.host == h) >= 3
                               for h in failing), 60, "three robots.txt attempts on every failing host")
        assert not cluster.status()["finished"]  # not finished while postponed URLs wait
        for host in failing:
            web.set_robots(host, "allow")
        assert cluster.wait(CRAWL_TIMEOUT), "the crawl did not finish"
        state = cluster.status()
        node_stats = [cluster.node_stats(n) for n in ("n1", "n2")]
    assert state["postponed"] == 0 and state["counters"]["postponed"] >= len(failing)
    assert sum(s.get("robots/postponed", 0) for s in node_stats) >= len(failing)
    assert not any(s.get("robots/forbidden", 0) for s in node_stats)  # nothing dropped
    assert_ground_truth_once(web)
    timeouts = [a for a in web.accesses() if a.is_robots and a.host == web.web.hosts[2].name
                and a.status == 0]
    assert timeouts  # the never-answered attempts


# -- the node's side of the fence and of lease renewal, against a scripted dispatcher ------------

FAKE_PARTITIONS = 4
FENCE = 3.0


class FakeDispatcher:
    """A ROUTER that answers only what the test tells it to; it records what the node sends."""

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.identity = b""
        self.got: list[dict[str, Any]] = []
        self.answer_heartbeats = True

    def send(self, mtype: str, **fields: Any) -> None:
        self.sock.send_multipart([self.identity, encode(mtype, **fields)])

    def welcome(self, clock: float) -> None:
        self.send("welcome", node="fenced", partitions=FAKE_PARTITIONS,
                  assigned=list(range(FAKE_PARTITIONS)), heartbeat_interval=0.2,
                  lease_timeout=600.0, renew_interval=0.3, fence=FENCE, epoch=1, clock=clock)

    def pump(self) -> None:
        while self.sock.poll(100):
            self.identity, frame = self.sock.recv_multipart()
            msg = decode_from_node(frame)
            self.got.append(msg)
            if msg["t"] == "heartbeat" and self.answer_heartbeats:
                self.send("heartbeat", epoch=1, clock=msg["clock"])

    def of(self, mtype: str) -> list[dict[str, Any]]:
        return [m for m in self.got if m["t"] == mtype]

    def lease_ids(self, mtype: str) -> set[int]:
        return {lid for m in self.of(mtype) for lid in m["leases"]}

    def wait(self, condition: Any, timeout: float, what: str) -> None:
        wait_until(lambda: (self.pump(), condition())[1], timeout, what)


def test_the_node_renews_drops_second_copies_and_stops_at_its_fence(tmp_path, zmq_context):
    fake = FakeDispatcher(zmq_context)
    stats_file = tmp_path / "node.stats.json"
    with HostileWeb(tmp_path / "access.jl") as web:
        def url(host: str, path: str) -> str:
            return f"http://{host}.hostile.test:{web.port}{path}"

        slow_key = politeness_key(url("slow", "/"), "host")
        node = start_crawl(settings={
            **combine(SYNTHWEB_SETTINGS, node_settings()), "POLITENESS_KEY": "host",
            "DISPATCHER_ENDPOINT": f"tcp://127.0.0.1:{fake.port}", "DISPATCHER_NODE_NAME": "fenced",
            "DISPATCHER_TIMEOUT": 120, "DISPATCHER_HEARTBEAT_INTERVAL": 0.2,
            "ROBOTS_THROTTLE_KEY_DELAYS": {slow_key: 9.0}, "DOWNLOAD_TIMEOUT": 5,
            "PROGRESS_STATS_FILE": str(stats_file), "LOG_FILE": str(tmp_path / "node.log"),
            "CRAWLPROJ_STATE_DIR": str(tmp_path / "state"),
        }, cwd=tmp_path)

        def wire(host: str, path: str) -> dict[str, Any]:
            return routed_request(url(host, path), FAKE_PARTITIONS, "host")

        def fetched(path: str) -> int:
            return sum(1 for r in web.requests() if r["path"] == path)

        try:
            fake.wait(lambda: fake.of("register"), 60, "the node to register")
            fake.welcome(fake.of("register")[-1]["clock"])
            fake.wait(lambda: fake.of("pull"), 30, "the node to ask for work")
            # lease 1 twice (a second copy while the first is held), then lease 2
            fake.send("batch", leases=[[1, wire("www", "/once")]])
            fake.send("batch", leases=[[1, wire("www", "/once")], [2, wire("www", "/two")]])
            fake.wait(lambda: {1, 2} <= fake.lease_ids("ack"), 60, "leases 1 and 2 acked")
            assert fetched("/once") == 1 and fetched("/two") == 1
            # two requests on a key with a 9 s delay: the second is held, and renewed meanwhile
            fake.send("batch", leases=[[3, wire("slow", "/first")], [4, wire("slow", "/second")]])
            fake.wait(lambda: 3 in fake.lease_ids("ack"), 60, "lease 3 acked")
            fake.wait(lambda: 4 in fake.lease_ids("renew"), 10, "lease 4 renewed while it waits")
            # the dispatcher goes silent: the fence (3 s) passes before the key's delay (9 s)
            fake.answer_heartbeats = False
            registers = len(fake.of("register"))
            fake.wait(lambda: len(fake.of("register")) > registers, 10,
                      "the node to register again once its fence has passed")
            assert 4 in fake.lease_ids("release")  # given back, not fetched
            # a batch sent before the dispatcher took the node for gone is given back too
            fake.send("batch", leases=[[5, wire("www", "/stale")]])
            fake.wait(lambda: 5 in fake.lease_ids("release"), 10, "the stale lease released")
            fake.answer_heartbeats = True
            fake.welcome(fake.of("register")[-1]["clock"])
            fake.send("batch", leases=[[6, wire("www", "/after")]])
            fake.wait(lambda: 6 in fake.lease_ids("ack"), 60, "lease 6 acked after the new welcome")
            fake.send("finished")
            assert node.wait(60) == 0
        finally:
            if node.poll() is None:
                node.kill()
                node.wait()
            fake.sock.close(0)
        assert fetched("/second") == 0 and fetched("/stale") == 0 and fetched("/after") == 1
    stats = json.loads(stats_file.read_text())
    assert stats["dispatcher/duplicate_lease"] == 1
    assert stats["dispatcher/fence_lapsed"] >= 1 and stats["dispatcher/stale_leases"] == 1
    assert 4 not in fake.lease_ids("ack") and 5 not in fake.lease_ids("ack")

