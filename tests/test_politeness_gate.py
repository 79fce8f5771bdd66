"""The one politeness gate: a request the DispatcherScheduler hands Scrapy never waits in a slot.

The scheduler asks the gate (crawlproj.politeness.gate) when a key may be fetched, and the
robots/throttle middleware configures the key's downloader slot from the same clock. So a
request given to Scrapy is sent at once instead of holding one of CONCURRENT_REQUESTS while its
slot waits out the delay; the only slot waits left are the first page after a robots.txt fetch
(that fetch counts against the key's politeness too), at most one per key.
"""

from __future__ import annotations

import time
from pathlib import Path

from politeness_checks import assert_polite, key_of_host
from scrapy import Request
from scrapy.settings import Settings

from crawlproj.meta import DOWNLOAD_SLOT, KEY
from crawlproj.politeness.config import PolitenessConfig
from crawlproj.politeness.core import Politeness
from crawlproj.politeness.gate import HANDOFF_LEAD, PolitenessGate

from crawlproj.tools.cluster import Cluster
from crawlproj.tools.runner import SYNTHWEB_SETTINGS
from crawlproj_testing.synthweb.model import RFC9309_OUTCOME, WebSpec

SLOW_DELAY = 0.5  # seconds between fetches on the one slow key
DELAY = 0.05  # every other key
# every host answers in ~100 ms, so "delay from the answer" and "delay from the start" differ
SPEC = WebSpec(seed=21, hosts=6, min_pages=8, max_pages=20, base_latency_ms=100,
               slow_host_share=0.0, page_bytes=2000, robots_variants=False)
CRAWL_TIMEOUT = 180


def test_gate_one_key_one_fetch_one_clock(tmp_path: Path) -> None:
    """The gate's contract without Scrapy: key once, one fetch in flight, the delay from the
    end on the monotonic clock, even when the wall clock steps back."""
    settings = Settings()
    settings.setmodule("crawlproj.settings", priority="project")
    settings.update({"ROBOTS_STATE_FILE": str(tmp_path / "s.sqlite3"), "ROBOTS_THROTTLE_DELAY": 0.5,
                     "ROBOTS_STORE_FLUSH_INTERVAL": 0.02}, priority="cmdline")
    wall = [1_000_000.0]
    gate = PolitenessGate(Politeness(PolitenessConfig.from_settings(settings), clock=lambda: wall[0]))
    try:
        request = Request("http://blog.site1.test/a")
        key = gate.key_of(request)
        assert key == "site1.test" and request.meta[KEY] == key and request.meta[DOWNLOAD_SLOT] == key
        redirected = request.replace(url="http://other.test/b")  # meta copied: the key is not
        assert gate.key_of(redirected) == "other.test"

        now = time.monotonic()
        assert gate.ready_at(key) == 0.0 and gate.may_start(key, now)
        gate.started(key, now)
        assert not gate.may_start(key, now + 10)  # one fetch in flight per key
        ready = gate.ended(key, now + 0.1)
        assert abs(ready - (now + 0.1 + 0.5 - HANDOFF_LEAD)) < 1e-3  # from the end
        assert not gate.may_start(key, ready - 0.01) and gate.may_start(key, ready)
        wall[0] -= 3600.0  # the wall clock steps back an hour: the next end is "older" on it
        gate.started(key, now + 1.0)
        ready = gate.ended(key, now + 1.1)
        assert abs(ready - (now + 1.1 + 0.5 - HANDOFF_LEAD)) < 1e-3  # the monotonic clock rules
        gate.hold(key, now + 5.0)  # a fetch this node can no longer see end
        assert gate.ready_at(key) > now + 5.0
    finally:
        gate.state.close()


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
