"""robots.txt cache lookups with 1k, 100k and 1M hosts in the node's state file: latency stays flat.

    .venv/bin/python bench/bench_robots_cache.py [--sizes 1000,100000,1000000] [--lookups 20000]

For each size, a fresh state file is filled through the store's own batched writer (the rate is
reported), then lookups of random hosts (uniform: the worst case for the in-memory LRU, which
holds ROBOTS_CACHE_MEMORY = 10k entries) are timed one by one:

- ``store``: the SQLite primary-key read alone (``StateStore.get_robots``);
- ``verdict``: what the middleware does per request, ``Politeness.robots_verdict``: LRU, then
  SQLite on a miss, then parsing the stored body (small bodies parse on the calling thread);
- ``verdict_gc_off``: the same with Python's cycle collector paused: the maxima of ``verdict``
  are collector pauses (they grow with the objects alive in the process), not SQLite;
- ``verdict_hot``: the same on hosts already in the LRU (a crawl's working set);
- ``next_allowed``: a politeness key's next fetch time (LRU, then SQLite), as the scheduler asks.

Writes bench/results/robots_cache.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from scrapy.settings import Settings  # noqa: E402

from crawlproj.politeness.config import PolitenessConfig  # noqa: E402
from crawlproj.politeness.core import Politeness  # noqa: E402
from crawlproj.politeness.robots import RobotsRow  # noqa: E402
from crawlproj.politeness.store import KeyRow  # noqa: E402
from crawlproj.politeness.store import StateStore  # noqa: E402

INSERT_BATCH = 50_000
SEED = 7


def host(i: int) -> str:
    return f"site{i:07d}.test"


def robots_body(i: int) -> bytes:
    return (f"User-agent: *\nDisallow: /private/\nAllow: /private/{i % 97}\n"
            f"Disallow: /search?q=\nCrawl-delay: {i % 3}\nSitemap: http://{host(i)}/sitemap.xml\n").encode()


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """Microsecond figures of durations measured in seconds."""
    ordered = sorted(samples_s)

    def us(seconds: float) -> float:
        return round(seconds * 1e6, 1)

    def at(p: float) -> float:
        return us(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))])

    return {"p50_us": at(50), "p90_us": at(90), "p99_us": at(99), "max_us": us(ordered[-1]),
            "mean_us": us(sum(ordered) / len(ordered))}


def fill(path: str, size: int) -> dict[str, float]:
    """Insert ``size`` robots rows and ``size`` key rows through the batched writer."""
    store = StateStore(path, flush_interval=0.05)
    now = time.time()
    started = time.perf_counter()
    for first in range(0, size, INSERT_BATCH):
        batch = range(first, min(size, first + INSERT_BATCH))
        robots = [RobotsRow(f"http://{host(i)}", host(i), now, 200, "rules", robots_body(i), now)
                  for i in batch]
        keys = [KeyRow(host(i), now - 10.0, now - 9.9, {f"http://{host(i)}": float(i % 3)}) for i in batch]
        store.put_many(robots, keys)
        target = 2 * (first + len(batch))
        while store.rows_written < target:  # let the writer keep up: bounded pending memory
            time.sleep(0.01)
    elapsed = time.perf_counter() - started
    write = store.write_ms.summary()
    store.close()
    return {"rows": 2 * size, "seconds": round(elapsed, 2), "rows_per_second": round(2 * size / elapsed),
            "batch_write_p50_ms": write.get("p50", 0.0), "batch_write_max_ms": write.get("max", 0.0),
            "file_mb": round(os.path.getsize(path) / 1e6, 1)}


def make_politeness(path: str) -> Politeness:
    settings = Settings()
    settings.setmodule("crawlproj.settings", priority="project")
    settings.set("ROBOTS_STATE_FILE", path, priority="cmdline")
    return Politeness(PolitenessConfig.from_settings(settings))


async def measure(pol: Politeness, size: int, lookups: int) -> dict[str, Any]:
    rng = random.Random(SEED)
    perf = time.perf_counter
    result: dict[str, Any] = {}

    picks = [rng.randrange(size) for _ in range(lookups)]
    samples = []
    for i in picks:
        t = perf()
        pol.store.get_robots(f"http://{host(i)}")
        samples.append(perf() - t)
    result["store"] = percentiles(samples)

    for name in ("verdict", "verdict_gc_off"):
        picks = [rng.randrange(size) for _ in range(lookups)]
        samples = []
        if name == "verdict_gc_off":
            gc.disable()  # shows that the rare long lookups are the interpreter's cycle collector
        try:
            for i in picks:
                t = perf()
                verdict = await pol.robots_verdict(f"http://{host(i)}", count=False)
                samples.append(perf() - t)
                assert verdict.kind == "hit", verdict
        finally:
            gc.enable()
        result[name] = percentiles(samples)

    hot = picks[-min(len(picks), pol.config.robots_memory // 2):]  # certainly still in the LRU
    samples = []
    for i in (hot[rng.randrange(len(hot))] for _ in range(lookups)):
        t = perf()
        await pol.robots_verdict(f"http://{host(i)}", count=False)
        samples.append(perf() - t)
    result["verdict_hot"] = percentiles(samples)

    samples = []
    for i in (rng.randrange(size) for _ in range(lookups)):
        t = perf()
        pol.next_allowed(host(i))
        samples.append(perf() - t)
    result["next_allowed"] = percentiles(samples)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--lookups", type=int, default=20_000)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-robots-") as tmp:
        for size in sizes:
            path = os.path.join(tmp, f"state-{size}.sqlite3")
            print(f"== {size:,} hosts: filling the state file ...", flush=True)
            filled = fill(path, size)
            print(f"   {filled['rows']:,} rows in {filled['seconds']}s ({filled['rows_per_second']:,} rows/s, "
                  f"{filled['file_mb']} MB)", flush=True)
            pol = make_politeness(path)
            try:
                lookups = asyncio.run(measure(pol, size, args.lookups))
            finally:
                pol.close()
            for name, figures in lookups.items():
                print(f"   {name:15s} p50 {figures['p50_us']:8.1f} us   p99 {figures['p99_us']:8.1f} us   "
                      f"max {figures['max_us']:9.1f} us", flush=True)
            runs.append({"hosts": size, "fill": filled, "lookups": lookups})
            os.unlink(path)
    path = save("robots_cache", {"lookups_per_case": args.lookups, "lru_entries": 10_000, "runs": runs})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
