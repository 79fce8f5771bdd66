"""The whole system: a real dispatcher and real `scrapy crawl` nodes on the synthetic web.

Every test asserts against the synthetic web's ground truth and its access log: nothing missing,
nothing extra, no URL fetched twice without a fault, never two fetches on one key at once.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from scrapy.settings import Settings
from politeness_checks import assert_polite

from crawlproj.dispatcher.cli import build_parser as dispatcher_parser
from crawlproj.tools.cli import SERVICES, build_parser
from crawlproj.tools.cluster import Cluster
from crawlproj.tools.dispatcher_process import DispatcherProcess
from crawlproj.tools.report import NOTHING_CRAWLED, Watch
from crawlproj_testing.simnode import SimNode, drive, web_links
from crawlproj.dispatcher.partitions import rendezvous_owner
from crawlproj.extensions.drain import drain_stats
from crawlproj.politeness.config import PolitenessConfig
from crawlproj.politeness.core import Politeness
from crawlproj.politeness.gate import PolitenessGate
from crawlproj.tools.runner import SYNTHWEB_ADDON, SYNTHWEB_SETTINGS, crawl_argv
from crawlproj_testing.synthweb.model import RFC9309_OUTCOME, Web, WebSpec
from crawlproj_testing.synthweb.process import SynthWebProcess
from crawlproj.wire.urls import partition_of, politeness_key

TESTS = Path(__file__).resolve().parent

PARTITIONS = 64
DELAY = 0.05  # seconds between fetches on one key
# Small pages, every host a bit slow: the crawl lasts long enough to act on it mid-way.
# robots.txt variants have tests of their own (test_robots_throttle.py); here every host allows.
SPEC = WebSpec(seed=9, hosts=40, min_pages=25, max_pages=150, base_latency_ms=15,
               slow_host_share=0.0, page_bytes=3000, robots_variants=False)
NODE_SETTINGS: dict[str, Any] = {
    **SYNTHWEB_SETTINGS, "BROAD_SCOPE": "any", "DOWNLOAD_TIMEOUT": 3, "DOWNLOAD_DELAY": DELAY,
    "ROBOTS_HOLD_TIME": 2, "ROBOTS_RETRY_DELAY": 1, "LOG_LEVEL": "INFO",
    "DISPATCHER_HEARTBEAT_INTERVAL": 0.5, "DISPATCHER_STATS_INTERVAL": 0.5,
}
CRAWL_TIMEOUT = 180


def start(tmp_path: Path, synthweb: Any, dispatcher_args: tuple[str, ...] = ()) -> tuple[SynthWebProcess, Cluster]:
    web = synthweb(SPEC, hold_seconds=4)
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("\n".join(web.seed_urls()) + "\n")
    cluster = Cluster(tmp_path / "cluster", seeds, settings=NODE_SETTINGS,
                      dispatcher_args=("--partitions", str(PARTITIONS), *dispatcher_args))
    return web, cluster


def acked(cluster: Cluster) -> int:
    return int(cluster.status()["counters"].get("acked", 0))


def assert_ground_truth(web: SynthWebProcess) -> Counter[tuple[str, str]]:
    """Crawled set == ground truth; returns fetch counts of pages answered below 500."""
    accesses = web.accesses()
    pages = [(a.host, a.path) for a in accesses if not a.is_robots]
    truth = web.web.ground_truth(outcome=RFC9309_OUTCOME)
    got = set(pages)
    assert got == truth, (f"missing {len(truth - got)}: {sorted(truth - got)[:8]}; "
                          f"extra {len(got - truth)}: {sorted(got - truth)[:8]}")
    # 5xx answers are retried by design; everything else is fetched once unless a fault says so
    return Counter((a.host, a.path) for a in accesses if not a.is_robots and a.status < 500)


def assert_one_node_per_key_at_a_time(web: SynthWebProcess) -> None:
    # Two fetches on one key never overlap, whoever made them, and starts are >= DELAY apart.
    assert_polite([a for a in web.accesses() if not a.is_robots], delay=DELAY)


@pytest.mark.parametrize("nodes", [1, 2, 3])
def test_n_nodes_crawl_exactly_the_ground_truth(tmp_path, synthweb, nodes):
    web, cluster = start(tmp_path, synthweb)
    with cluster:
        for i in range(nodes):
            cluster.start_node(f"n{i + 1}")
        assert cluster.wait(CRAWL_TIMEOUT), "the crawl did not finish"
        state = cluster.status()
        assert state["finished"] and state["frontier"] == 0 and state["leases"] == 0
        per_node = {name: cluster.node_stats(name) for name in cluster.nodes}
    counts = assert_ground_truth(web)
    assert max(counts.values()) == 1, [u for u, n in counts.items() if n > 1][:5]
    assert_one_node_per_key_at_a_time(web)
    served = {a.node for a in web.accesses() if not a.is_robots}
    assert served == {f"n{i + 1}" for i in range(nodes)}
    assert all(s["finish_reason"] == "finished" for s in per_node.values())
    # every item of every node is one page of the crawl
    items = [i for name in cluster.nodes for i in cluster.items(name)]
    assert len({i["final_url"] for i in items}) == len(items)


def test_join_and_graceful_leave_mid_crawl(tmp_path, synthweb):
    # the rendezvous contract alone: a partition the backlog balance moved earlier would go back
    # to its rendezvous owner at the join (tests/test_dispatcher.py tests the balance)
    web, cluster = start(tmp_path, synthweb, ("--balance-interval", "0"))
    with cluster:
        cluster.start_node("n1")
        cluster.start_node("n2")
        wait_until(lambda: acked(cluster) > 300, 60, "300 pages crawled")
        before = {p: name for name, n in cluster.status()["nodes"].items() if n["alive"]
                  for p in n["partitions"]}
        assert len(before) == PARTITIONS
        cluster.start_node("n3")

        def settled() -> dict[int, str] | None:
            state = cluster.status()
            owners = {p: name for name, n in state["nodes"].items() if n["alive"] for p in n["partitions"]}
            ok = state["pending_handoffs"] == 0 and len(owners) == PARTITIONS and "n3" in owners.values()
            return owners if ok else None

        after = wait_until(settled, 60, "the join handoff to finish")
        moved = {p for p in range(PARTITIONS) if before[p] != after[p]}
        expected = {p for p in range(PARTITIONS) if rendezvous_owner(p, ["n1", "n2", "n3"]) == "n3"}
        assert moved == expected  # rendezvous: only the new node's share moves, all of it to n3
        assert {after[p] for p in moved} == {"n3"}
        assert abs(len(moved) - PARTITIONS / 3) <= PARTITIONS / 6  # "about 1/n"

        at_leave = acked(cluster)
        wait_until(lambda: acked(cluster) > at_leave + 200, 60, "200 more pages")
        assert cluster.stop_node("n1") == 0  # graceful: hands its partitions off, says bye
        state = wait_until(lambda: (s := cluster.status())["pending_handoffs"] == 0
                           and not s["nodes"]["n1"]["alive"] and s, 60, "n1 to leave")
        owners = {p for name, n in state["nodes"].items() if n["alive"] for p in n["partitions"]}
        assert len(owners) == PARTITIONS
        assert cluster.wait(CRAWL_TIMEOUT), "the crawl did not finish"
        assert cluster.node_stats("n1")["finish_reason"] == "shutdown"
    counts = assert_ground_truth(web)
    assert max(counts.values()) == 1
    assert_one_node_per_key_at_a_time(web)


def test_kill_9_of_a_node_loses_nothing(tmp_path, synthweb):
    web, cluster = start(tmp_path, synthweb, ("--heartbeat-timeout", "3"))
    with cluster:
        cluster.start_node("n1")
        cluster.start_node("n2")
        wait_until(lambda: acked(cluster) > 800, 90, "about half of the crawl")
        cluster.kill_node("n2")
        state = wait_until(lambda: (s := cluster.status())["nodes"]["n2"]["alive"] is False and s,
                           30, "n2 declared dead after the heartbeat time-out")
        assert state["nodes"]["n2"]["leases"] == 0  # its leases went back to the frontier
        assert cluster.wait(CRAWL_TIMEOUT), "the crawl did not finish"
    counts = assert_ground_truth(web)
    twice = [u for u, n in counts.items() if n > 1]
    # Only what n2 had in flight or fetched but not yet acked can be fetched again: bounded by
    # its queue target (leased and unacked at the kill), here far below that.
    assert len(twice) <= NODE_SETTINGS.get("DISPATCHER_QUEUE_TARGET", 512)
    print(f"kill -9 of a node: {len(twice)} URLs fetched twice")


def test_kill_9_of_the_dispatcher_then_restart(tmp_path, synthweb):
    web, cluster = start(tmp_path, synthweb)
    with cluster:
        cluster.start_node("n1")
        cluster.start_node("n2")
        wait_until(lambda: acked(cluster) > 800, 90, "about half of the crawl")
        cluster.dispatcher.kill()
        cluster.dispatcher.restart()
        assert cluster.wait(CRAWL_TIMEOUT), "the crawl did not finish after the restart"
        assert cluster.status()["finished"]
    counts = assert_ground_truth(web)
    twice = [u for u, n in counts.items() if n > 1]
    print(f"kill -9 of the dispatcher: {len(twice)} URLs fetched twice")


def test_revoked_partition_is_handed_off_when_a_callback_never_ends(tmp_path, synthweb, monkeypatch):
    """A node whose callback never returns still hands a revoked partition off after
    DISPATCHER_HANDOFF_TIMEOUT: the joining node gets it and crawls its keys."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    web = synthweb(SPEC, hold_seconds=4)
    # a host whose partition moves from n1 to n2 when n2 joins
    hang = next(h.name for h in web.web.hosts
                if rendezvous_owner(partition_of(politeness_key(web.url(h.name)), PARTITIONS),
                                    ["n1", "n2"]) == "n2")
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("\n".join(web.seed_urls()) + "\n")
    settings = {**NODE_SETTINGS, "SPIDER_MODULES": "crawlproj.spiders,observability_faults",
                "FAULT_HANG_HOST": hang, "DISPATCHER_HANDOFF_TIMEOUT": 3}
    with Cluster(tmp_path / "cluster", seeds, spider="hangs", settings=settings,
                 dispatcher_args=("--partitions", str(PARTITIONS))) as cluster:
        cluster.start_node("n1")
        wait_until(lambda: any(a.host == hang for a in web.accesses() if not a.is_robots), 60,
                   f"n1 to fetch a page of {hang}")
        cluster.start_node("n2")

        def handed_over() -> bool:
            state = cluster.status()
            n2 = state["nodes"].get("n2") or {}
            return state["pending_handoffs"] == 0 and bool(n2.get("partitions"))

        wait_until(handed_over, 60, "the revoked partitions to reach n2")
        # the hung page's lease went back to the dispatcher, and n2 fetches the host again
        wait_until(lambda: any(a.host == hang and a.node == "n2" for a in web.accesses()), 60,
                   f"n2 to fetch a page of {hang}")
        log = (tmp_path / "cluster" / "n1.log").read_text()
        assert "DISPATCHER_HANDOFF_TIMEOUT" in log
        cluster.kill_node("n1")
        cluster.kill_node("n2")
    assert_one_node_per_key_at_a_time(web)


def test_addons_given_to_a_node_keep_the_projects_addons(monkeypatch):
    """Scrapy replaces settings.py's ADDONS with a -s ADDONS=...: the runner passes the union."""
    import crawlproj.settings as project

    monkeypatch.setattr(project, "ADDONS", {"crawlproj.addons.Example": 10}, raising=False)

    def addons_of(settings: dict[str, Any]) -> dict[str, Any]:
        argv = crawl_argv("broad", settings)
        values = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-s" and argv[i + 1].startswith("ADDONS=")]
        return json.loads(values[0].partition("=")[2])

    assert addons_of(SYNTHWEB_SETTINGS) == {"crawlproj.addons.Example": 10, SYNTHWEB_ADDON: 900}
    # as `crawlproj cluster -s ADDONS=...` gives it: JSON; None turns a project add-on off
    assert addons_of({"ADDONS": '{"crawlproj.addons.Example": null}'}) == {"crawlproj.addons.Example": None}
    with pytest.raises(ValueError, match="ADDONS: expected a mapping .* got 'Example'"):
        crawl_argv("broad", {"ADDONS": "Example"})


def test_cluster_command_on_a_real_site_leaves_the_synthetic_web_off(tmp_path, synthweb):
    """`crawlproj cluster` never turns the synthetic-web add-on on: the SSRF guard refuses a seed
    on 127.0.0.1 (the add-on would allow it) and no request reaches the server."""
    web = synthweb(WebSpec(seed=1, hosts=1, min_pages=2, max_pages=2, robots_variants=False))
    seeds = tmp_path / "seeds.txt"
    seeds.write_text(f"http://127.0.0.1:{web.port}/\n")
    workdir = tmp_path / "cluster"
    proc = subprocess.run([sys.executable, "-m", "crawlproj.tools.cli", "cluster", "--nodes", "1",
                           "--seeds-file", str(seeds), "--workdir", str(workdir), "--partitions", "16"],
                          capture_output=True, text=True, timeout=CRAWL_TIMEOUT, stdin=subprocess.DEVNULL)
    # every seed refused: a non-zero exit, the refusals counted by reason
    assert proc.returncode == NOTHING_CRAWLED, proc.stdout + proc.stderr
    assert re.search(r"^refused +SSRF guard: loopback 1$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^nothing crawled +every seed was refused .*; exit code 3$", proc.stdout, re.M)
    stats = json.loads((workdir / "node1.stats.json").read_text())
    assert stats["finish_reason"] == "finished" and stats["ssrf/refused/loopback"] == 1
    assert "response_received_count" not in stats and web.accesses() == []
    assert "SyntheticWeb" not in (workdir / "node1.log").read_text()


def crawlproj(*args: str, timeout: float = CRAWL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crawlproj.tools.cli", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_cluster_command_passes_spider_arguments_dispatcher_options_and_serves_the_status_page(
        tmp_path, synthweb):
    """`-a max_depth=0` reaches the spider (only seeds are fetched), options after `--` reach
    the dispatcher (a seed given with --seeds), --http-port serves the page and prints its URL."""
    web = synthweb(WebSpec(seed=2, hosts=3, min_pages=5, max_pages=5, robots_variants=False))
    first, second = web.seed_urls()[:2]
    seeds = tmp_path / "seeds.txt"
    seeds.write_text(first + "\n")
    workdir = tmp_path / "cluster"
    proc = crawlproj("cluster", "--nodes", "1", "--seeds-file", str(seeds), "--workdir", str(workdir),
                     "--partitions", "16", "--http-port", "0",
                     "-s", "ADDONS=" + json.dumps({SYNTHWEB_ADDON: 900}), "-s", "BROAD_SCOPE=any",
                     "-a", "max_depth=0", "--", "--seeds", second)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^status page at http://127\.0\.0\.1:\d+/$", proc.stdout, re.M), proc.stdout
    fetched = {(a.host, a.path) for a in web.accesses() if not a.is_robots}
    assert fetched == {(u.split("/")[2].split(":")[0], "/" + u.split("/", 3)[3]) for u in (first, second)}
    assert re.search(r"^items scraped +2 ", proc.stdout, re.M), proc.stdout


def test_a_missing_seeds_file_is_file_not_found_and_a_path_is_no_seed_url(tmp_path):
    missing = tmp_path / "seeds.txt"
    proc = crawlproj("cluster", "--seeds-file", str(missing), "--workdir", str(tmp_path / "c"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"crawlproj cluster: dispatcher did not start (exit code 2): "
                                   f"--seeds-file: file not found: {missing}")
    proc = crawlproj("dispatcher", "--store", str(tmp_path / "store"), "--seeds", "seeds.txt")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("crawlproj dispatcher: --seeds: 'seeds.txt' is not a URL (no ://); "
                                   "a file of seeds goes to --seeds-file")


def test_seeds_file_lines_that_are_not_utf8_are_skipped_and_counted(tmp_path):
    seeds = tmp_path / "seeds.txt"
    seeds.write_bytes(b"http://a.example/\n\xff\xfe latin-1?\nhttp://b.example/\n\xc3\x28\n# done\n")
    with DispatcherProcess(tmp_path / "store", "--partitions", "16", "--seeds-file", str(seeds)) as d:
        assert d.status()["counters"]["seeds"] == 2
        warnings = [line for line in d.log_tail().splitlines() if "WARNING" in line]
    assert len(warnings) == 1
    assert warnings[0].endswith(f"Seeds file {seeds}: skipped 2 lines that are not UTF-8 (lines 2, 4)")


def test_standalone_dispatcher_exits_after_the_crawl_and_says_so(tmp_path, zmq_context):
    web = Web(WebSpec(seed=3, hosts=3, min_pages=2, max_pages=3))
    seeds = [f"http://{h}{p}" for h, p in web.seeds()]
    d = DispatcherProcess(tmp_path / "store", "--partitions", "16", "--seeds", ",".join(seeds),
                          "--heartbeat-interval", "0.2", "--heartbeat-timeout", "2", stay=False)
    node = SimNode(zmq_context, d.endpoint, "n1")
    try:
        node.register()
        drive([node], lambda: node.finished, 30, links_of=web_links(web), heartbeat_interval=0.2)
        assert d.running()  # finished, but a node is still there
        node.bye()
        assert d.wait(30) == 0
    finally:
        node.close()
        d.close()
    log = d.log_tail()
    assert "Exits when the crawl has finished and every node has left" in log
    assert "Crawl finished and every node left: exiting" in log


def test_every_option_of_every_subcommand_has_help_and_shows_its_default():
    parsers = {"dispatcher": dispatcher_parser()}
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers.update((name, p) for name, p in action.choices.items() if name not in SERVICES)
    assert {"demo", "cluster", "dispatcher", "top", "deploy", "keys"} <= set(parsers)
    for name, parser in parsers.items():
        assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter), name
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"crawlproj {name} {'/'.join(action.option_strings) or action.dest}: no help"
        assert "(default: " in parser.format_help(), name


def test_progress_lines_say_what_is_left_while_the_crawl_drains():
    state = {"frontier": 12, "available": 0, "leases": 12, "seen": 400,
             "nodes": {"n1": {"alive": True, "stats": {"response_received_count": 380}}},
             "drain": {"keys": 2, "pages": 12, "rate": 1.5,
                       "last": {"node": "n1", "key": "slow.test", "pages": 10, "period": 2.0,
                                "why": "crawl-delay", "eta": 20.0}}}
    watch = Watch()
    # pages fetched, but not yet two lines without a new URL (the seeds' links may be on their way)
    for t, pages in ((6, 300), (8, 340)):
        state["nodes"]["n1"]["stats"]["response_received_count"] = pages
        assert "draining" not in watch.line(state, now=watch.started + t)
    state["nodes"]["n1"]["stats"]["response_received_count"] = 380
    line = watch.line(state, now=watch.started + 10)
    assert line.splitlines()[1].split(None, 1)[1] == (
        "draining: 2 keys with 12 pages left allow 1.5 pages/s; about 20 s left; longest slow.test (n1): "
        "10 pages, one each 2.00 s, set by its robots.txt Crawl-delay")
    assert watch.last_key is not None and watch.last_key["key"] == "slow.test"
    # slower than the delays allow: the rate seen since the last line says how long
    state["nodes"]["n1"]["stats"]["response_received_count"] = 381
    state["drain"] = {**state["drain"], "pages": 10, "last": {**state["drain"]["last"], "eta": 5.0}}
    assert "; about 20 s left; " in watch.line(state, now=watch.started + 12)


def test_the_dispatcher_sums_up_the_nodes_drain_reports(tmp_path, zmq_context):
    with DispatcherProcess(tmp_path / "store", "--partitions", "16") as d:
        a, b = SimNode(zmq_context, d.endpoint, "a"), SimNode(zmq_context, d.endpoint, "b")
        try:
            for node in (a, b):
                node.register()
            drive([a, b], lambda: a.registered and b.registered, 10, crawl=False)
            a.send_stats(**{"drain/keys": 2, "drain/pages": 5, "drain/rate": 1.0, "drain/eta": 4.0,
                            "drain/last/pages": 4, "drain/last/period": 1.0,
                            "drain/last/key/a.test": 1, "drain/last/why/download-delay": 1})
            b.send_stats(**{"drain/keys": 1, "drain/pages": 3, "drain/rate": 0.5, "drain/eta": 6.0,
                            "drain/last/pages": 3, "drain/last/period": 2.0,
                            "drain/last/key/b.test": 1, "drain/last/why/crawl-delay": 1})
            drain = wait_until(lambda: (s := d.status()["drain"])["keys"] == 3 and s, 10, "both reports")
        finally:
            a.close()
            b.close()
    assert drain == {"keys": 3, "pages": 8, "rate": 1.5,
                     "last": {"node": "b", "eta": 6.0, "pages": 3, "period": 2.0, "key": "b.test",
                              "why": "crawl-delay"}}


def test_a_node_reports_its_keys_their_periods_and_the_one_that_needs_longest(tmp_path):
    settings = Settings()
    settings.setmodule("crawlproj.settings", priority="project")
    settings.update({"ROBOTS_STATE_FILE": str(tmp_path / "s.sqlite3"), "ROBOTS_THROTTLE_DELAY": 0.5,
                     "ROBOTS_THROTTLE_KEY_DELAYS": {"b.test": 2.0}}, priority="cmdline")
    wall = [1_000_000.0]
    gate = PolitenessGate(Politeness(PolitenessConfig.from_settings(settings), clock=lambda: wall[0]))
    try:
        now = time.monotonic()
        gate.started("a.test", now)
        gate.ended("a.test", now + 1.5)  # answers in 1.5 s: longer than its 0.5 s delay
        report = drain_stats(["a.test"] * 3 + ["b.test"] * 2 + ["c.test"], gate)
    finally:
        gate.state.close()
    assert report.pop("drain/rate") == pytest.approx(1 / 2.0 + 1 / 2.0 + 1 / 0.5, abs=0.01)
    assert report.pop("drain/eta") == pytest.approx(3 * 2.0, abs=0.01)
    assert report.pop("drain/last/period") == pytest.approx(2.0, abs=0.01)
    assert report == {"drain/keys": 3, "drain/pages": 6, "drain/last/pages": 3,
                      "drain/last/key/a.test": 1, "drain/last/why/answer-time": 1}
    assert drain_stats([], gate) == {"drain/keys": 0, "drain/pages": 0}
    assert drain_stats(["a.test"], None) == {"drain/keys": 1, "drain/pages": 1}
