"""Drills of faults that diagnose has no rule for: short real crawls where a fault starts about
40% into the crawl, its size and timing drawn at random within a range (the seed is printed;
``DRILL_SEED=n`` repeats a draw), and ``crawlproj diagnose`` must name the resource from the
nodes' time account. Crawls whose shape bounds them (draining, one huge key) must not be
reported as faults. Also: the TIMING log's slow lines and short crawls' windows (units)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from fault_web import FaultWeb
from observability_faults import CpuThief, DelayProxy, Staller, confine, cpu_seconds
from test_observability import BASE_SETTINGS, TESTS, WIDE, drill_rng

from crawlproj.observability.analysis import read_logs, windows
from crawlproj.observability.diagnose import diagnose
from crawlproj.observability.logs import summary, text
from crawlproj.observability.timings import SLOW_LOG_EVERY, TimingLog
from crawlproj.tools.cluster import Cluster
from crawlproj_testing.synthweb.model import WebSpec

DRILL_SECONDS = 18
FAULT_AT = (0.35, 0.45)  # the fault starts at this share of the crawl
# Many small hosts, found as the crawl goes (links across hosts): robots.txt fetched all along.
MANY = WebSpec(seed=33, hosts=3000, min_pages=1, max_pages=3, base_latency_ms=5, slow_host_share=0.0,
               page_bytes=3000, robots_variants=False, cross_host_share=0.5, subdomain_share=0.0)
# Hosts that run out during the crawl: it drains to a few keys.
DRAIN = WebSpec(seed=8, hosts=30, min_pages=5, max_pages=60, pareto_alpha=1.0, base_latency_ms=5,
                slow_host_share=0.0, page_bytes=3000, robots_variants=False, cross_host_share=0.0,
                subdomain_share=0.0)
# One key holds the whole crawl.
HUGE = WebSpec(seed=4, hosts=1, min_pages=5000, max_pages=5000, base_latency_ms=5, slow_host_share=0.0,
               page_bytes=3000, robots_variants=False, cross_host_share=0.0, subdomain_share=0.0)


@contextmanager
def _cluster(tmp_path: Path, web: FaultWeb, settings: dict[str, Any], seeds: list[str] | None = None,
             monkeypatch: pytest.MonkeyPatch | None = None) -> Iterator[Cluster]:
    seeds_file = tmp_path / "seeds.txt"
    seeds_file.write_text("\n".join(seeds or web.seed_urls()) + "\n")
    merged = {**BASE_SETTINGS, "CLOSESPIDER_TIMEOUT": DRILL_SECONDS, **settings}
    with Cluster(tmp_path / "cluster", seeds_file, settings=merged,
                 dispatcher_args=("--partitions", "32", "--timings-interval", "1")) as cluster:
        cluster.start_node("n1")
        yield cluster


def _crawling(cluster: Cluster) -> float:
    """Wait for the node's first pages; the monotonic time the crawl started, about."""
    wait_until(lambda: any((n.get("stats") or {}).get("response_received_count")
                           for n in cluster.status()["nodes"].values()), 60, "the node's first pages")
    return time.monotonic()


def _at(cluster: Cluster, started: float, share: float) -> None:
    """Wait until ``share`` of the crawl has passed (or the node ended)."""
    cluster.wait(max(0.0, started + share * DRILL_SECONDS - time.monotonic()))


def _diagnosis(tmp_path: Path, cluster: Cluster, name: str, params: dict[str, Any]) -> Any:
    assert cluster.wait(DRILL_SECONDS + 60), "the node did not stop"
    obs = read_logs([tmp_path / "cluster"])
    result = diagnose(obs, window=2.0)
    rates = [round(b.rate or 0) for b in windows(obs, 2.0)]
    print(f"[{name}] {json.dumps(params)}; rates per 2 s {rates}\n{result.text()}")
    return result


@pytest.fixture
def drill_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))


def _fault_web(tmp_path: Path, spec: WebSpec) -> FaultWeb:
    return FaultWeb(spec, access_log=str(tmp_path / "access.log"))


def test_drill_slower_sites(tmp_path: Path, drill_env: None) -> None:
    rng = drill_rng()
    params = {"latency_ms": rng.randint(800, 2000), "ramp_s": round(rng.uniform(1.0, 3.0), 1),
              "at": round(rng.uniform(*FAULT_AT), 2)}
    with _fault_web(tmp_path, WIDE) as web, _cluster(tmp_path, web, {}) as cluster:
        started = _crawling(cluster)
        _at(cluster, started, params["at"])
        web.fault(latency_ms=params["latency_ms"], ramp_s=params["ramp_s"])
        result = _diagnosis(tmp_path, cluster, "slower sites", params)
    assert result.cause == "remote_sites", result.text()


CPU_CUT = 0.3  # the CPU theft drill's fault cuts the rate at least this much (its own ground truth)


def _page_rates(web: FaultWeb, at: float, settle: float = 2.0) -> tuple[float, float]:
    """Pages per second the web answered before epoch ``at`` and after it (from ``settle``
    seconds on; the first and the last ``settle`` seconds of the crawl left out)."""
    pages = sorted(a.end_ms / 1000.0 for a in web.accesses() if not a.is_robots and a.status)
    first, last = pages[0] + settle, pages[-1] - settle
    before = [t for t in pages if first <= t < at]
    after = [t for t in pages if at + settle <= t < last]
    return len(before) / max(at - first, 1e-9), len(after) / max(last - at - settle, 1e-9)


def test_drill_cpu_theft(tmp_path: Path, drill_env: None) -> None:
    """Other processes take the node's CPU: at the fault the node is confined to one core and
    spinners start there, as many as leave it ``keep`` of the CPU it used so far (its share of
    the core: 1 / (spinners + 1)). The web's access log must show the rate fell."""
    rng = drill_rng()
    params: dict[str, Any] = {"keep": round(rng.uniform(0.25, 0.5), 2), "at": round(rng.uniform(*FAULT_AT), 2)}
    core = {max(os.sched_getaffinity(0))}
    with _fault_web(tmp_path, WIDE) as web, _cluster(tmp_path, web, {}) as cluster:
        node = cluster.nodes["n1"].pid
        started = _crawling(cluster)
        used = cpu_seconds(node)
        _at(cluster, started, params["at"])
        params["node_cpu"] = need = round((cpu_seconds(node) - used) / (time.monotonic() - started), 2)
        params["spinners"] = min(16, max(2, math.ceil(1.0 / (params["keep"] * max(need, 0.05))) - 1))
        at = time.time()
        thief = CpuThief(params["spinners"], core)
        confine(node, core)
        try:
            result = _diagnosis(tmp_path, cluster, "CPU theft", params)
        finally:
            thief.stop()
        before, after = _page_rates(web, at)
    print(f"web's page rate {before:.1f} -> {after:.1f} pages/s")
    assert after <= (1.0 - CPU_CUT) * before, \
        f"the planted fault did not cut the rate: {before:.1f} -> {after:.1f} pages/s"
    assert result.cause == "machine_cpu", result.text()


def test_drill_dispatcher_stalls(tmp_path: Path, drill_env: None) -> None:
    rng = drill_rng()
    params = {"stall_s": round(rng.uniform(1.2, 1.8), 2), "period_s": round(rng.uniform(2.6, 3.4), 2),
              "at": round(rng.uniform(*FAULT_AT), 2)}
    # a node queue of a second's work or less: a stall leaves it without work
    with _fault_web(tmp_path, WIDE) as web, _cluster(tmp_path, web, {"DISPATCHER_QUEUE_TARGET": 16}) as cluster:
        started = _crawling(cluster)
        _at(cluster, started, params["at"])
        staller = Staller(cluster.dispatcher.pid, params["stall_s"], params["period_s"])
        try:
            cluster.wait(DRILL_SECONDS + 60)
        finally:
            staller.stop()
        result = _diagnosis(tmp_path, cluster, "dispatcher stalls", {**params, "stalls": staller.stalls})
    assert result.cause == "dispatcher", result.text()


def test_drill_slow_robots_on_new_hosts(tmp_path: Path, drill_env: None) -> None:
    rng = drill_rng()
    params = {"robots_ms": rng.randint(1500, 3000), "at": round(rng.uniform(*FAULT_AT), 2)}
    with _fault_web(tmp_path, MANY) as web:
        seeds = web.seed_urls()[:40]
        with _cluster(tmp_path, web, {}, seeds) as cluster:
            started = _crawling(cluster)
            _at(cluster, started, params["at"])
            web.fault(robots_ms=params["robots_ms"])
            result = _diagnosis(tmp_path, cluster, "slow robots.txt on new hosts", params)
    assert result.cause == "robots", result.text()


def test_drill_item_store_slows_down(tmp_path: Path, drill_env: None, mongo_uri: str) -> None:
    rng = drill_rng()
    params = {"answer_ms": rng.randint(1500, 2500), "ramp_s": round(rng.uniform(1.0, 2.0), 1),
              "at": round(rng.uniform(*FAULT_AT), 2)}
    host, port = mongo_uri.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    proxy = DelayProxy(host, int(port))
    settings = {"MONGO_URI": f"mongodb://127.0.0.1:{proxy.port}/", "MONGO_DATABASE": f"drill{os.getpid()}",
                "MONGO_BATCH_SIZE": 10, "MONGO_FLUSH_INTERVAL": 0.2, "MONGO_STATS_INTERVAL": 1.0,
                "MONGO_SPILL_AFTER": 1.0, "MONGO_SPILL_MAX_BYTES": 50_000_000, "MONGO_CONNECT_TIMEOUT": 5.0,
                "MONGO_SPILL_DIR": str(tmp_path / "spill"), "MONGO_WRITE_CONCERN": {"w": 1}}
    try:
        with _fault_web(tmp_path, WIDE) as web, _cluster(tmp_path, web, settings) as cluster:
            started = _crawling(cluster)
            _at(cluster, started, params["at"])
            proxy.slow_down(params["answer_ms"], params["ramp_s"])
            result = _diagnosis(tmp_path, cluster, "item store slowing down", params)
    finally:
        proxy.close()
    assert result.cause == "item_store", result.text()


def test_drill_crawl_ends_by_dropping_urls(tmp_path: Path, drill_env: None) -> None:
    """robots.txt of every host first asked from 20-30% on answers 5xx: the requests of those hosts
    are held, postponed up to ROBOTS_POSTPONE_MAX and dropped. Not a normal end: diagnose says so
    first, with the reason and its setting."""
    rng = drill_rng()
    # earlier than the other faults: most of the crawl's requests then come after it (a clear share)
    params = {"status": rng.choice([500, 502, 503]), "postpone_max_s": round(rng.uniform(0.5, 2.0), 1),
              "at": round(rng.uniform(0.2, 0.3), 2)}
    settings = {"ROBOTS_HOLD_TIME": 0.5, "ROBOTS_POSTPONE_MAX": params["postpone_max_s"],
                "ROBOTS_RETRY_DELAY": 0.5, "ROBOTS_RETRY_MAX_DELAY": 1.0}
    with _fault_web(tmp_path, MANY) as web:
        with _cluster(tmp_path, web, settings, web.seed_urls()[:40]) as cluster:
            started = _crawling(cluster)
            _at(cluster, started, params["at"])
            web.fault(robots_status=params["status"])
            result = _diagnosis(tmp_path, cluster, "crawl ends by dropping URLs", params)
    text_ = result.text()
    assert result.cause == "dropped" and result.findings[0].fault, text_
    assert "[robots/forbidden/unreachable]; to allow them: a longer ROBOTS_POSTPONE_MAX" in text_, text_


def _items(cluster: Cluster) -> int:
    """The nodes' items so far, by their latest stats reports."""
    return sum((n.get("stats") or {}).get("item_scraped_count", 0) for n in cluster.status()["nodes"].values())


BEHIND_SECONDS = 30
RATE_SECONDS = 4.0  # the falls-behind fault is sized from the item rate of the seconds before it


def test_drill_item_store_falls_behind_while_the_rate_holds(tmp_path: Path, drill_env: None,
                                                            mongo_uri: str) -> None:
    """MongoDB writes a share of the crawl's item rate (a delaying proxy, one batch per answer):
    the buffer grows (MONGO_BUFFER_MAX_ITEMS raised, leases and scraper room enough for the waiting
    items) while
    the crawl rate holds, and diagnose warns with the time left before the buffer is full."""
    rng = drill_rng()
    params = {"share": round(rng.uniform(0.3, 0.5), 2), "at": round(rng.uniform(*FAULT_AT), 2)}
    batch = 10
    host, port = mongo_uri.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    proxy = DelayProxy(host, int(port))
    settings = {"MONGO_URI": f"mongodb://127.0.0.1:{proxy.port}/", "MONGO_DATABASE": f"behind{os.getpid()}",
                "MONGO_BATCH_SIZE": batch, "MONGO_FLUSH_INTERVAL": 0.2, "MONGO_STATS_INTERVAL": 1.0,
                "MONGO_BUFFER_MAX_ITEMS": 5000, "MONGO_SPILL_MAX_BYTES": 50_000_000,
                "MONGO_CONNECT_TIMEOUT": 5.0, "MONGO_SPILL_DIR": str(tmp_path / "spill"),
                "MONGO_WRITE_CONCERN": {"w": 1},
                # items waiting for MongoDB keep their leases: credit enough that the node still pulls
                "DISPATCHER_QUEUE_TARGET": 4000,
                # ... and their responses: Scrapy's scraper backs out at 5 MB of them (~300 pages)
                "SCRAPER_SLOT_MAX_ACTIVE_SIZE": 100_000_000,
                # long enough for the oldest item to wait seconds before the crawl ends
                "CLOSESPIDER_TIMEOUT": BEHIND_SECONDS}
    try:
        with _fault_web(tmp_path, WIDE) as web, _cluster(tmp_path, web, settings) as cluster:
            started = _crawling(cluster)
            at = started + params["at"] * BEHIND_SECONDS
            cluster.wait(max(0.0, at - RATE_SECONDS - time.monotonic()))
            since, before = time.monotonic(), _items(cluster)
            cluster.wait(max(0.0, at - time.monotonic()))
            rate = (_items(cluster) - before) / max(time.monotonic() - since, 1e-9)
            params["items_per_s"] = round(rate, 1)
            params["answer_ms"] = round(1000.0 * batch / max(params["share"] * rate, 1.0))
            proxy.slow_down(params["answer_ms"], 0.0)
            # the fault ends with the crawl: the buffer left drains at MongoDB's own pace
            cluster.wait(max(0.0, started + BEHIND_SECONDS - time.monotonic()))
            proxy.slow_down(0.0, 0.0)
            result = _diagnosis(tmp_path, cluster, "item store falls behind", params)
    finally:
        proxy.close()
    text_ = result.text()
    assert result.cause == "item_store" and "the crawl rate holds" in text_, text_
    assert "the buffer (5000 items) is full in" in text_, text_


@pytest.mark.parametrize("shape", ["draining", "one huge key"])
def test_drill_crawl_shape_is_no_fault(shape: str, tmp_path: Path, drill_env: None) -> None:
    spec = DRAIN if shape == "draining" else HUGE
    with _fault_web(tmp_path, spec) as web, _cluster(tmp_path, web, {}) as cluster:
        _crawling(cluster)
        result = _diagnosis(tmp_path, cluster, shape, {})
    assert not result.faults, result.text()


# -- units: the slow lines of the TIMING log, short crawls --------------------------------------------


def test_slow_lines_only_for_unusual_durations_and_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    log = TimingLog("n1", 0.0, 1000.0)
    record = log.sink("item_write")
    with caplog.at_level(logging.INFO, logger="crawlproj.timing"):
        for _ in range(500):
            record(1100.0)  # slow by design (a batch wait): its typical duration
        assert not caplog.records
        quick = log.sink("robots_lookup")
        for _ in range(50):
            quick(0.5)
        for _ in range(20):
            quick(5000.0)  # unusual: one line, the rest counted in the next one
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and '"op": "robots_lookup"' in lines[0], lines
    log._slow_at["robots_lookup"] -= SLOW_LOG_EVERY
    with caplog.at_level(logging.INFO, logger="crawlproj.timing"):
        quick(60000.0)
    assert '"more_slow": ' in caplog.records[-1].getMessage()


def test_short_crawl_gets_a_rate_in_logs_and_diagnose(tmp_path: Path) -> None:
    """An 85 s crawl with Scrapy's default 60 s LogStats: two windows, the same in both tools."""
    start = time.mktime((2026, 3, 1, 0, 0, 0, 0, 0, -1))
    lines = []
    for t, pages in ((0, 0), (60, 3000), (85, 4100)):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start + t))
        lines.append(f"{stamp} [scrapy.extensions.logstats] INFO: Crawled {pages} pages (at {pages} pages/min), "
                     f"scraped {pages} items (at 0 items/min)")
    (tmp_path / "n1.log").write_text("\n".join(lines) + "\n")
    obs = read_logs([tmp_path])
    bins = windows(obs)
    assert len(bins) >= 2 and all(b.rate for b in bins)
    assert "no crawl rate found" not in text(summary(obs, bins))
    result = diagnose(obs)
    assert result.windows == len(bins) and result.rate_early is not None, result.text()


def test_slot_account_is_littles_law_on_the_probes() -> None:
    from crawlproj.observability.account import SlotAccount

    slots = SlotAccount()
    slots.open("log")
    # 10 slots: 4 transferring, 2 held for robots.txt, 1 queued in its slot, 3 empty
    slots.probe(10, download=4, robots=2, queued=1, waiting=True, ready=False, lag=0.002)  # keys on delay
    slots.probe(10, download=4, robots=2, queued=1, waiting=True, ready=True, lag=0.004)  # engine backs out
    slots.probe(10, download=4, robots=2, queued=1, waiting=False, ready=False, lag=0.0)  # nothing queued
    shares, lag = slots.take("log")
    assert shares == {"download": 0.4, "robots": 0.2, "delay": 0.2, "held": 0.1, "nowork": 0.1, "capacity": 10.0}
    assert sum(shares[s] for s in ("download", "robots", "delay", "held", "nowork")) == pytest.approx(1.0)
    assert lag == 2.0
    assert slots.take("log") == ({}, None)  # a new window


def test_dispatcher_stalls_are_wall_gaps_of_its_loop() -> None:
    from crawlproj.observability.dispatcher import STALL_ALLOWANCE, DispatcherObserver

    observer = DispatcherObserver(interval=1e9, log_interval=1e9)
    start = time.monotonic()
    reader = observer._readers["log"]
    for i in range(10):  # a turn every 0.1 s: no stall
        observer.tick(start + 0.1 * (i + 1))
    assert reader.stalled == 0.0
    observer.tick(start + 1.0 + 1.5)  # stopped for 1.5 s
    assert reader.stalled == pytest.approx(1.5 - STALL_ALLOWANCE, abs=1e-6)
    with observer.busy():  # busy time is not a stall
        pass
    observer.tick(start + 2.6)
    assert reader.stalled == pytest.approx(1.5 - STALL_ALLOWANCE, abs=1e-6)


def test_a_share_grows_by_absolute_and_relative_change() -> None:
    from crawlproj.observability.causes import Share

    assert not Share("x", 0.01, 0.03, 0.03).grown  # 3x but by 2 points: noise
    assert Share("x", 0.10, 0.20, 0.03).grown
    assert not Share("x", 0.60, 0.70, 0.10).grown  # +10 points of a large share: 1.17x, rest 0.4 -> 0.3
    assert Share("x", 0.60, 0.90, 0.10).grown  # the rest of the clock fell 4x
    assert not Share("x", 0.50, 0.40, 0.10).grown


def test_backlog_warns_with_the_time_left(tmp_path: Path) -> None:
    """The rate holds while the item store's buffer grows: a warning with the time left."""
    start = time.mktime((2026, 3, 1, 0, 0, 0, 0, 0, -1))
    lines = []
    for i in range(1, 13):
        items = 20 if i < 5 else 20 + 60 * (i - 4)
        record = {"t": start + 10 * i, "node": "n1", "interval": 10, "pages": 500 * i, "cpu": 0.3,
                  "keys": {"distinct": 50, "fetches": 500, "top": "a.test", "top_n": 12},
                  "ops": {"item_write": {"n": 500, "p50": 300.0, "p90": 400.0, "p99": 500.0, "sum": 150000}},
                  "account": {"backlog": {"items": items, "items_max": 1000, "spill_bytes": 0,
                                          "spill_max": 1e9, "oldest_s": 0.5 if i < 5 else 2.0 * (i - 4)}}}
        lines.append(json.dumps(record))
    (tmp_path / "n1.jl").write_text("\n".join(lines) + "\n")
    result = diagnose(read_logs([tmp_path]), window=10.0)
    assert result.cause == "item_store" and abs(result.rate_change or 0) < 0.05, result.text()
    text_ = result.text()
    assert "the crawl rate holds" in text_ and "the buffer (1000 items) is full in" in text_, text_


def _steady_log(directory: Path, ops_at: Any) -> None:
    """A node's TIMINGS records, 12 windows of 10 s at a steady 50 pages/s; ``ops_at(i)``: its ops."""
    start = time.mktime((2026, 3, 1, 0, 0, 0, 0, 0, -1))
    lines = [json.dumps({"t": start + 10 * i, "node": "n1", "interval": 10, "pages": 500 * i, "cpu": 0.3,
                         "keys": {"distinct": 50, "fetches": 500, "top": "a.test", "top_n": 12},
                         "ops": {"parse": {"n": 500, "p50": 2.0, "p90": 3.0, "p99": 4.0, "sum": 1000},
                                 **ops_at(i)}})
             for i in range(1, 13)]
    (directory / "n1.jl").write_text("\n".join(lines) + "\n")


def test_growth_that_costs_nothing_is_no_fault(tmp_path: Path) -> None:
    """The healthy drill's case: robots_store_write p50 0.5 -> 9.6 ms, one write every half second
    (2% of the writer's time) while the rate holds; and item writes 3x slower, one item in them."""
    def ops(i: int) -> dict[str, Any]:
        write, item = (0.5, 10.0) if i <= 4 else (9.6, 30.0)
        return {"robots_store_write": {"n": 20, "p50": write, "p90": write, "p99": 2 * write, "sum": 20 * write},
                "item_write": {"n": 500, "p50": item, "p90": item, "p99": item, "sum": 500 * item}}

    _steady_log(tmp_path, ops)
    result = diagnose(read_logs([tmp_path]), window=10.0)
    assert result.healthy, result.text()


def test_item_queue_growing_while_the_rate_holds_is_the_item_store(tmp_path: Path) -> None:
    """Item writes 20x slower, the rate holding: the items queued in the pipelines (Little's law)
    grow from 1 to 20 per node, the store falls behind."""
    def ops(i: int) -> dict[str, Any]:
        item = 20.0 if i <= 4 else 400.0
        return {"item_write": {"n": 500, "p50": item, "p90": item, "p99": item, "sum": 500 * item}}

    _steady_log(tmp_path, ops)
    result = diagnose(read_logs([tmp_path]), window=10.0)
    text_ = result.text()
    assert result.cause == "item_store", text_
    assert "items in the item pipelines (Little's law) 1.0 -> 20.0 (the crawl rate holds so far)" in text_, text_


def _slowing_log(directory: Path, reactor_cpu: float) -> None:
    """A node whose rate falls from 50 to 20 pages/s while its politeness store lookups, on the
    reactor thread, grow to 90% of its time; its callbacks' wall time (first output to last)
    holds what ran on the reactor meanwhile: 150% of the wall clock late."""
    start = time.mktime((2026, 3, 1, 0, 0, 0, 0, 0, -1))
    lines, pages = [], 0
    for i in range(1, 13):
        late = i > 4
        pages += 200 if late else 500
        lookup = 30.0 if late else 1.0
        record = {"t": start + 10 * i, "node": "n1", "interval": 10, "pages": pages, "cpu": reactor_cpu,
                  "keys": {"distinct": 50, "fetches": 500, "top": "a.test", "top_n": 12},
                  "ops": {"parse": {"n": 200, "p50": 75.0, "p90": 90.0, "p99": 99.0, "sum": 15000}
                          if late else {"n": 500, "p50": 2.0, "p90": 3.0, "p99": 4.0, "sum": 1000},
                          "robots_lookup": {"n": 300, "p50": lookup, "p90": lookup, "p99": 2 * lookup,
                                            "sum": 300 * lookup}},
                  "account": {"reactor": {"callbacks": 1.0 if late else 0.1, "cpu": reactor_cpu,
                                          "starved": 0.01, "idle": 0.99 - reactor_cpu}}}
        lines.append(json.dumps(record))
    (directory / "n1.jl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(("reactor_cpu", "cause"), [(0.15, "robots_store"), (0.9, "cpu")])
def test_callbacks_long_on_a_blocked_reactor_are_not_cpu(tmp_path: Path, reactor_cpu: float, cause: str) -> None:
    """Long callbacks name a CPU-bound node only when its reactor thread was on a CPU (or waiting
    for one) as much; blocked in slow store reads, the store is named."""
    _slowing_log(tmp_path, reactor_cpu)
    result = diagnose(read_logs([tmp_path]), window=10.0)
    assert result.cause == cause, result.text()
    assert "robots_store" in {f.cause for f in result.findings}, result.text()


def test_backlog_warns_with_the_time_left_in_the_spill_budget(tmp_path: Path) -> None:
    """MongoDB failing: the buffer stays at its bound and the spill grows; the time left before
    the spill budget is full, at the spill's pace (the buffer, not growing, gets no such line)."""
    start = time.mktime((2026, 3, 1, 0, 0, 0, 0, 0, -1))
    lines = []
    for i in range(1, 13):
        spill = 2_000_000 * i  # 200 kB/s
        record = {"t": start + 10 * i, "node": "n1", "interval": 10, "pages": 500 * i, "cpu": 0.3,
                  "keys": {"distinct": 50, "fetches": 500, "top": "a.test", "top_n": 12},
                  "ops": {"item_write": {"n": 500, "p50": 300.0, "p90": 400.0, "p99": 500.0, "sum": 150000}},
                  "account": {"backlog": {"items": 1000, "items_max": 1000, "spill_bytes": spill,
                                          "spill_max": 100_000_000, "oldest_s": 5.0}}}
        lines.append(json.dumps(record))
    (tmp_path / "n1.jl").write_text("\n".join(lines) + "\n")
    result = diagnose(read_logs([tmp_path]), window=10.0)
    text_ = result.text()
    assert result.cause == "item_store" and "the crawl rate holds" in text_, text_
    # 76 MB left of the budget at 200 kB/s: 380 s
    assert "at this pace (200000.0 bytes/s) the spill budget (100000000 bytes) is full in 6 min" in text_, text_
    assert "the buffer (1000 items)" not in text_, text_


def test_logs_and_diagnose_refuse_a_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from crawlproj.tools.cli import main as crawlproj_main

    for command in ("logs", "diagnose"):
        assert crawlproj_main([command, str(tmp_path / "nothing")]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"crawlproj {command}: no such file or directory: {tmp_path / 'nothing'}"


def _scrapy_log(start: float, counts: list[tuple[int, int]], final: dict[str, Any]) -> str:
    """A node's Scrapy log: LogStats lines at (seconds, pages) and the final stats dump."""
    def stamp(t: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start + t))

    lines = [f"{stamp(t)} [scrapy.extensions.logstats] INFO: Crawled {pages} pages (at 0 pages/min), "
             f"scraped {pages} items (at 0 items/min)" for t, pages in counts]
    dump = ",\n ".join(f"{key!r}: {value!r}" for key, value in sorted(final.items()))
    lines.append(f"{stamp(counts[-1][0] + 1)} [scrapy.statscollectors] INFO: Dumping Scrapy stats:\n{{{dump}}}")
    return "\n".join(lines) + "\n"


def test_a_crawl_that_ends_by_dropping_urls_says_so_first(tmp_path: Path) -> None:
    """The issue's crawl: 84k of 109k requests ended as robots/forbidden/unreachable (and some by
    the guards), 24.5k pages crawled at a steady rate: no normal end, the reason and its setting first."""
    start = time.mktime((2026, 3, 1, 0, 0, 0, 0, 0, -1))
    dropped = {"robots/forbidden/unreachable": 80_000, "traps/refused/host_cap": 3000,
               "ssrf/refused/private": 1000}
    counts = [(60 * i, 500 * i) for i in range(50)]
    # response_received_count counts the robots.txt fetches too: 500 of them
    final = {"response_received_count": 25_000, "finish_reason": "finished", "robots/forbidden": 80_000,
             "robots/fetch/status/200": 100, "robots/fetch/status/500": 400, **dropped}
    (tmp_path / "n1.log").write_text(_scrapy_log(start, counts, final))
    result = diagnose(read_logs([tmp_path]))
    text_ = result.text()
    assert result.cause == "dropped" and result.findings[0].fault, text_
    assert text_.splitlines()[0].startswith("the crawl ended by dropping requests"), text_
    assert "84000 of 108500 (77%) ended without a fetch" in text_, text_
    assert "[robots/forbidden/unreachable]; to allow them: a longer ROBOTS_POSTPONE_MAX" in text_, text_
    assert "3000 by the trap guard (pages per host) [traps/refused/host_cap]; to allow them: " \
           "TRAP_MAX_PAGES_PER_HOST" in text_, text_
    print(text_)

    # the same crawl live, from the dispatcher's series: the nodes' reports carry the counts
    from crawlproj.observability.analysis import from_series
    from crawlproj.observability.timings import Timings, parse_report

    points = []
    for i in range(1, 13):
        timings = Timings()
        timings.open_reader("report")
        timings.refused = {key: n * i // 12 for key, n in dropped.items()}
        report = parse_report(timings.report())
        assert report["refused"] == timings.refused
        points.append({"t": start + 10 * i, "interval": 10, "busy": 0.05, "stalled": 0.0, "available": 0,
                       "nodes": {"n1": {"pages": 2000 * i, "report": report}}})
    live = diagnose(from_series(points))
    assert live.cause == "dropped" and "84000 of 108000 (78%)" in live.text(), live.text()

    # a few refusals among many pages are a normal end
    final = {"response_received_count": 24_500, "robots/forbidden/rules": 300, "traps/refused/depth": 20}
    (tmp_path / "n1.log").write_text(_scrapy_log(start, counts, final))
    assert diagnose(read_logs([tmp_path])).healthy
