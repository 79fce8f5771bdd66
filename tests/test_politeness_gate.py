"""The one politeness gate: a request the DispatcherScheduler hands Scrapy never waits in a slot.

The scheduler asks the gate (crawlproj.politeness.gate) when a key may be fetched, and the
robots/throttle middleware configures the key's downloader slot from the same clock. So a
request given to Scrapy is sent at once instead of holding one of CONCURRENT_REQUESTS while its
slot waits out the delay; the only slot waits left are the first page after a robots.txt fetch
(that fetch counts against the key's politeness too), at most one per key.
"""

from __future__ import annotations

from pathlib import Path

from politeness_checks import assert_polite, key_of_host

from crawlproj.tools.cluster import Cluster
from crawlproj.tools.runner import SYNTHWEB_SETTINGS
from crawlproj_testing.synthweb.model import RFC9309_OUTCOME, WebSpec

SLOW_DELAY = 0.5  # seconds between fetches on the one slow key
DELAY = 0.05  # every other key
# every host answers in ~100 ms, so "delay from the answer" and "delay from the start" differ
SPEC = WebSpec(seed=21, hosts=6, min_pages=8, max_pages=20, base_latency_ms=100,
               slow_host_share=0.0, page_bytes=2000, robots_variants=False)
CRAWL_TIMEOUT = 180


def test_no_request_waits_in_a_downloader_slot_for_its_delay(tmp_path: Path, synthweb) -> None:
    web = synthweb(SPEC, hold_seconds=4)
    slow_key = key_of_host(web.web.hosts[0].name)
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("\n".join(web.seed_urls()) + "\n")
    settings = {**SYNTHWEB_SETTINGS, "BROAD_SCOPE": "any", "DOWNLOAD_TIMEOUT": 5, "DOWNLOAD_DELAY": DELAY,
                "ROBOTS_THROTTLE_KEY_DELAYS": {slow_key: SLOW_DELAY}, "LOG_LEVEL": "INFO",
                "DISPATCHER_HEARTBEAT_INTERVAL": 0.5, "DISPATCHER_STATS_INTERVAL": 0.5}
    with Cluster(tmp_path / "cluster", seeds, settings=settings,
                 dispatcher_args=("--partitions", "16")) as cluster:
        cluster.start_node("n1")
        assert cluster.wait(CRAWL_TIMEOUT), "the crawl did not finish"
        stats = cluster.node_stats("n1")
    accesses = web.accesses()
    pages = [a for a in accesses if not a.is_robots]
    assert {(a.host, a.path) for a in pages} == web.web.ground_truth(outcome=RFC9309_OUTCOME)
    slow_pages = [a for a in pages if key_of_host(a.host) == slow_key]
    assert len(slow_pages) >= 8  # enough fetches on the slow key for its gaps to mean something
    # the access log, as the server saw it: every gap on a key at least that key's delay
    assert_polite(pages, delay={slow_key: SLOW_DELAY}, default=DELAY)
    # and none of those gaps was waited out inside a Scrapy downloader slot
    assert stats.get("politeness/slot_wait/page", 0) == 0, stats
    robots_fetched = len({key_of_host(a.host) for a in accesses if a.is_robots})
    assert stats.get("politeness/slot_wait/after_robots", 0) <= robots_fetched, stats
