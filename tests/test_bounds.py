"""Per-key state stays bounded (docs/bounds.md): a million keys served through a node's
KeyQueues and its politeness state leave maps no bigger than their settings."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from scrapy.settings import Settings

from crawlproj.linkfilter import RecentSet
from crawlproj.politeness.config import PolitenessConfig
from crawlproj.politeness.core import Politeness
from crawlproj.politeness.gate import PolitenessGate
from crawlproj.scheduling.keyqueue import HEAP_SLACK, KeyQueues

KEYS = 1_000_000
KEYS_MEMORY = 10_000  # ROBOTS_THROTTLE_MEMORY
ROBOTS_MEMORY = 1_000  # ROBOTS_CACHE_MEMORY
ROBOTS_EVERY = 100  # one key in this many gets a robots.txt fetch recorded
RECENT = 50_000  # RECENT_LINKS_SIZE
QUEUED = 2_000  # keys with queued items at any time (a node's queue spread over keys)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def politeness(tmp_path: Path) -> Politeness:
    settings = Settings()
    settings.setmodule("crawlproj.settings", priority="project")
    settings.setdict({"ROBOTS_STATE_FILE": str(tmp_path / "politeness.sqlite3"), "DOWNLOAD_DELAY": 1.0,
                         "ROBOTS_THROTTLE_MEMORY": KEYS_MEMORY, "ROBOTS_CACHE_MEMORY": ROBOTS_MEMORY,
                      "ROBOTS_STORE_FLUSH_INTERVAL": 0.2})
    return Politeness(PolitenessConfig.from_settings(settings))


def test_a_million_keys_through_keyqueues_and_politeness_leave_bounded_maps(tmp_path):
    pol = politeness(tmp_path)
    gate = PolitenessGate(pol)
    queues: KeyQueues[int] = KeyQueues()
    recent = RecentSet(RECENT)
    rss_before = rss_mib()
    started = time.monotonic()
    largest = {"queues": 0, "heap": 0, "keys": 0, "store_pending": 0}

    async def crawl() -> None:
        now = time.monotonic()
        for i in range(KEYS + QUEUED):
            if i < KEYS:  # a request for a key never seen; QUEUED keys wait at any time
                key = f"k{i}.test"
                queues.push(key, i)
                queues.hold(key, gate.ready_at(key))
                recent.add(f"http://{key}/")
            if i >= QUEUED:  # serve the key that waited longest, as the scheduler does
                taken = queues.pop_ready(now)
                assert taken is not None
                key, _ = taken
                gate.started(key, now)
                queues.release(key, gate.ended(key, now))
                now += 0.001
                if i % ROBOTS_EVERY == 0:
                    await pol.record_robots_fetch(f"http://{key}", key, 200, b"User-agent: *\nCrawl-delay: 1\n")
            if i % 10_000 == 0:
                largest["queues"] = max(largest["queues"], queues.sizes()["queues"])
                largest["heap"] = max(largest["heap"], queues.sizes()["heap"])
                for name in ("keys", "store_pending"):
                    largest[name] = max(largest[name], pol.sizes()[name])

    asyncio.run(crawl())
    took = time.monotonic() - started
    sizes, pol_sizes = queues.sizes(), pol.sizes()
    rss_after = rss_mib()
    pol.close()
    rows = sqlite3.connect(tmp_path / "politeness.sqlite3").execute("SELECT count(*) FROM politeness").fetchone()[0]
    print(f"\n{KEYS} keys in {took:.1f} s; RSS {rss_before:.0f} MiB before, {rss_after:.0f} MiB after; "
          f"KeyQueues {sizes} (largest queues {largest['queues']}, heap {largest['heap']}); politeness "
          f"{pol_sizes} (largest keys {largest['keys']}, store pending {largest['store_pending']}); "
          f"recent links {len(recent)}; gate in flight {len(gate._in_flight)}; rows in the state file {rows}")
    # nothing queued: nothing kept per key
    assert sizes == {"queues": 0, "ready_at": 0, "busy": 0, "heap": sizes["heap"], "items": 0, "revisits": 0,
                     "front": 0}
    assert sizes["heap"] <= HEAP_SLACK
    assert largest["queues"] <= QUEUED and largest["heap"] <= 2 * QUEUED + HEAP_SLACK + 1
    # the politeness state in memory is bounded by its settings, the rest is in the state file
    assert pol_sizes["keys"] <= KEYS_MEMORY and pol_sizes["robots"] <= ROBOTS_MEMORY
    assert largest["keys"] <= KEYS_MEMORY
    assert rows == KEYS
    assert len(recent) <= RECENT
    assert not gate._in_flight
