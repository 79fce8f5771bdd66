"""End-to-end pages/s: plain Scrapy beside crawlproj with 1 and 2 nodes, same web, one run.

    .venv/bin/python bench/bench_cluster.py [--hosts 200] [--pages 100] [--nodes 1,2]

The CPU-bound link-following crawl of the project's baseline (FACTS.md): hosts of ~9 KB pages
with 20 links each, 10% cross-host, served on 127.0.0.1 with no latency. Plain Scrapy runs with
Scrapy's default settings (a LinkExtractor spider, CONCURRENT_REQUESTS=64), then with
CONCURRENT_ITEMS=16; crawlproj runs its default settings (robots.txt per RFC 9309 and one fetch
per politeness key at a time) under the DispatcherScheduler. Rates use each crawler's own
spider-open-to-close time; CPU is the crawler processes' user+system time.
Writes bench/results/cluster.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import bench_spec, plain_scrapy  # noqa: E402
from common import child_cpu, save  # noqa: E402

from crawlproj.cluster import Cluster  # noqa: E402
from crawlproj.runner import SYNTHWEB_SETTINGS  # noqa: E402
from crawlproj.synthweb.process import SynthWebProcess  # noqa: E402

CRAWL_TIMEOUT = 1800


def crawlproj_run(server: SynthWebProcess, workdir: Path, nodes: int) -> dict[str, float]:
    seeds = workdir / "seeds.txt"
    seeds.write_text("\n".join(server.seed_urls()) + "\n")
    settings = {**SYNTHWEB_SETTINGS, "BROAD_SCOPE": "any", "LOG_LEVEL": "INFO"}
    server_cpu0 = server.stats()["cpu_seconds"]
    with Cluster(workdir / "cluster", seeds, settings=settings) as cluster:
        cpu0 = child_cpu()
        for i in range(nodes):
            cluster.start_node(f"n{i + 1}")
        if not cluster.wait(CRAWL_TIMEOUT):
            raise RuntimeError("crawl did not finish")
        cpu = child_cpu() - cpu0
        state = cluster.status()
        stats = [cluster.node_stats(f"n{i + 1}") for i in range(nodes)]
    pages = sum(s.get("response_received_count", 0) for s in stats)
    elapsed = max(s["elapsed_wall_seconds"] for s in stats)
    return {"nodes": nodes, "pages": pages, "pages_per_s": pages / elapsed, "crawl_seconds": elapsed,
            "crawler_cpu_s_per_page": cpu / max(pages, 1),
            "dispatcher_cpu_seconds": state["cpu_seconds"],
            "server_cpu_share": (server.stats()["cpu_seconds"] - server_cpu0) / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--nodes", default="1,2")
    args = parser.parse_args()
    spec = bench_spec(args.hosts, args.pages)
    results: dict[str, dict[str, float]] = {}
    runs = [("plain_scrapy_defaults", None, {}), ("plain_scrapy_concurrent_items_16", None,
                                                  {"CONCURRENT_ITEMS": "16"})]
    counts = [int(n) for n in args.nodes.split(",")]
    runs += [(f"crawlproj_{n}_node{'s' if n > 1 else ''}", n, {}) for n in counts]
    with tempfile.TemporaryDirectory() as tmp:
        for name, nodes, extra in runs:
            workdir = Path(tmp) / name
            workdir.mkdir()
            with SynthWebProcess(spec) as server:
                r = crawlproj_run(server, workdir, nodes) if nodes else plain_scrapy(server, workdir, extra)
            results[name] = r
            print(f"{name:34s} {r['pages']:6d} pages  {r['pages_per_s']:7.1f} pages/s  "
                  f"{1000 * r['crawler_cpu_s_per_page']:.2f} ms crawler CPU/page", flush=True)
    base = results["plain_scrapy_defaults"]["pages_per_s"]
    print("\n| run | pages | pages/s | x plain Scrapy (defaults) | crawler CPU ms/page |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['pages']} | {r['pages_per_s']:.1f} | {r['pages_per_s'] / base:.2f} | "
              f"{1000 * r['crawler_cpu_s_per_page']:.2f} |")
    print(f"results: {save('cluster', {'web': {'hosts': args.hosts, 'pages_per_host': args.pages}, **results})}")


if __name__ == "__main__":
    main()
