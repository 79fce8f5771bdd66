"""Plain Scrapy on the synthetic web, and what the synthetic web costs.

    .venv/bin/python bench/bench_foundation.py [--hosts 200] [--pages 100] [--load-seconds 10]

1. Plain Scrapy (Scrapy's default settings, a LinkExtractor spider, CONCURRENT_REQUESTS=64, as in
   the project's baseline) crawls every page of the web: pages/s, crawler CPU, server CPU share.
   Once with defaults and once with CONCURRENT_ITEMS=16.
2. Load generator: several keep-alive client processes fetch pages as fast as they can, to show
   the server's CPU share at 500+ pages/s.
Writes bench/results/foundation.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_measured, save  # noqa: E402

from crawlproj.tools.runner import SYNTHWEB_SETTINGS  # noqa: E402
from crawlproj_testing.synthweb.model import WebSpec  # noqa: E402
from crawlproj_testing.synthweb.process import SynthWebProcess  # noqa: E402

HERE = Path(__file__).resolve().parent


def bench_spec(hosts: int, pages: int) -> WebSpec:
    return WebSpec(seed=1, hosts=hosts, min_pages=pages, max_pages=pages, links_per_page=20,
                   cross_host_share=0.1, private_share=0.0, special_share=0.0,
                   slow_host_share=0.0, robots_variants=False, page_bytes=9000)


def plain_scrapy(server: SynthWebProcess, workdir: Path, extra: dict[str, str],
                 every_page: bool = False) -> dict[str, float]:
    """Plain Scrapy from the web's seeds, following links; ``every_page``: every page of the
    ground truth as a seed and no link followed (what Scrapy itself costs a page)."""
    seeds = workdir / "seeds.txt"
    urls = server.seed_urls(sorted(server.web.ground_truth()) if every_page else None)
    seeds.write_text("\n".join(urls) + "\n")
    stats_file = workdir / "stats.json"
    # plain Scrapy (no project settings, so no ADDONS to merge) + the synthetic web's add-on
    settings = {"ADDONS": json.dumps(SYNTHWEB_SETTINGS["ADDONS"]), "CONCURRENT_REQUESTS": "64",
                "LOG_LEVEL": "INFO", "TELNETCONSOLE_ENABLED": "False",
                "REMOTE_CONTROL_ENABLED": "False",
                "EXTENSIONS": json.dumps({"crawlproj.extensions.progress.Progress": 500}),
                "PROGRESS_STATS_FILE": str(stats_file), **extra}
    argv = [sys.executable, "-m", "scrapy", "runspider", str(HERE / "plain_spider.py"),
            "-a", f"seeds={seeds}", *(["-a", "links=none"] if every_page else [])]
    for k, v in settings.items():
        argv += ["-s", f"{k}={v}"]
    env = {k: v for k, v in os.environ.items() if k != "SCRAPY_SETTINGS_MODULE"}
    m = run_measured(argv, env=env, cwd=str(workdir), server=server)
    stats = json.loads(stats_file.read_text())
    pages = stats.get("response_received_count", 0)
    elapsed = stats["elapsed_wall_seconds"]
    return {"pages": pages, "pages_per_s": pages / elapsed, "crawl_seconds": elapsed,
            "crawler_cpu_s_per_page": m["cpu_seconds"] / max(pages, 1),
            "crawler_cpu_share": m["cpu_seconds"] / m["wall_seconds"],
            "server_cpu_share": m["server_cpu_seconds"] / m["wall_seconds"]}


def _client(port: int, paths: list[tuple[str, str]], seconds: float, out: multiprocessing.Queue) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        host, path = paths[done % len(paths)]
        conn.request("GET", path, headers={"Host": f"{host}:{port}"})
        conn.getresponse().read()
        done += 1
    conn.close()
    out.put(done)


def load(server: SynthWebProcess, clients: int, seconds: float) -> dict[str, float]:
    paths = sorted(server.web.ground_truth())
    cpu0 = server.stats()["cpu_seconds"]
    out: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_client, args=(server.port, paths[i::clients], seconds, out))
             for i in range(clients)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    total = sum(out.get() for _ in procs)
    for p in procs:
        p.join()
    wall = time.monotonic() - t0
    cpu = server.stats()["cpu_seconds"] - cpu0
    return {"clients": clients, "pages": total, "pages_per_s": total / wall,
            "server_cpu_share": cpu / wall, "server_cpu_ms_per_page": 1000 * cpu / max(total, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--load-seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=3)
    args = parser.parse_args()
    spec = bench_spec(args.hosts, args.pages)
    results: dict[str, object] = {"web": {"hosts": args.hosts, "pages_per_host": args.pages,
                                          "links_per_page": 20, "page_bytes": 9000}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("plain_scrapy_defaults", {}),
                            ("plain_scrapy_concurrent_items_16", {"CONCURRENT_ITEMS": "16"})):
            with SynthWebProcess(spec) as server:
                workdir = Path(tmp) / name
                workdir.mkdir()
                r = plain_scrapy(server, workdir, extra)
            results[name] = r
            print(f"{name:34s} {r['pages']:6d} pages  {r['pages_per_s']:7.1f} pages/s  "
                  f"crawler CPU {100 * r['crawler_cpu_share']:5.1f}%  "
                  f"{1000 * r['crawler_cpu_s_per_page']:.2f} ms CPU/page  "
                  f"server CPU {100 * r['server_cpu_share']:4.1f}%", flush=True)
        with SynthWebProcess(spec) as server:
            r = load(server, args.clients, args.load_seconds)
        results["server_under_load"] = r
        print(f"{'server under load':34s} {r['pages']:6d} pages  {r['pages_per_s']:7.1f} pages/s  "
              f"server CPU {100 * r['server_cpu_share']:4.1f}% of one core "
              f"({r['server_cpu_ms_per_page']:.3f} ms/page, {r['clients']} client processes)")
    print(f"results: {save('foundation', results)}")


if __name__ == "__main__":
    main()
