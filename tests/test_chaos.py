"""The chaos soak, short (bench/bench_chaos.py runs it at full size): a crawl of a few thousand
pages by two nodes while a node and the dispatcher are killed with -9 and restarted, MongoDB is
stopped, and (separately) a node is paused past the dead-node time-out. Checked against the
ground truth, MongoDB and the access log (crawlproj_testing.chaos)."""

from __future__ import annotations


from crawlproj_testing.chaos import DEAD_TIMEOUT, ChaosRun, Step
from crawlproj_testing.synthweb.model import Web, WebSpec

# ~2,500 pages on 40 hosts, every page an html page (one MongoDB document per URL)
SPEC = WebSpec(seed=21, hosts=40, min_pages=25, max_pages=250, special_share=0.0, page_bytes=3000,
               base_latency_ms=15, slow_host_share=0.0)
TIMEOUT = 240


def at(share: float) -> int:
    return int(share * len(Web(SPEC).ground_truth()))


def test_kill_9_of_a_node_and_of_the_dispatcher_and_a_mongodb_outage_lose_nothing(tmp_path):
    run = ChaosRun(tmp_path, SPEC)
    report = run.run([Step("kill_node", at_pages=at(0.15)), Step("mongo_down", at_pages=at(0.3), seconds=8),
                      Step("kill_dispatcher", at_pages=at(0.5))], timeout=TIMEOUT)
    print(f"\nchaos: {report.summary()}")
    assert report.counts() == {"kill_node": 1, "mongo_down": 1, "kill_dispatcher": 1}, "the crawl ended too early"
    assert not report.violations, "\n".join(report.violations[:30])


def test_a_node_paused_past_the_dead_node_timeout_starts_no_fetch_on_keys_it_lost(tmp_path):
    run = ChaosRun(tmp_path, SPEC)
    report = run.run([Step("pause", at_pages=at(0.3), seconds=2 * DEAD_TIMEOUT)], timeout=TIMEOUT)
    print(f"\nchaos: {report.summary()}")
    assert report.counts() == {"pause": 1}, "the crawl ended too early"
    assert not report.violations, "\n".join(report.violations[:30])
