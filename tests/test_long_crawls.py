"""Crawls that run for days, in minutes: leases outliving their time-out, a paused node, a
robots.txt that is down for a while (issue 17; docs/protocol.md, "Fenced ownership").

Each test runs a real dispatcher and real `scrapy crawl` nodes on the synthetic web and
asserts against its ground truth and access log.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from conftest import wait_until
from politeness_checks import assert_polite

from crawlproj.tools.cluster import Cluster
from crawlproj.tools.runner import SYNTHWEB_SETTINGS
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
