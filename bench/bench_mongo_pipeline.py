"""Items/s of the MongoDB pipeline alone, by batch size, against nx-27017 (or --uri).

    .venv/bin/python bench/bench_mongo_pipeline.py [--batch-sizes 1,100,1000] [--items 20000]
                                                   [--items-batch-1 2000] [--window 2000] [--uri URI]

No crawl: MongoPipeline is built from the project settings in this process under the asyncio
reactor, opened, fed broad-spider-shaped items (URL, headers, title, hash, ...; ~0.5 KB as BSON)
by ``--window`` concurrent ``process_item`` calls -- each completes only when its item is
acknowledged, as in a crawl -- and closed. Every batch size runs twice on a fresh collection:
"insert" (new URLs) and "update" (the same URLs again: a re-crawl, fetch_count 2). The clock runs
from the first process_item to the last acknowledgement. Without --uri the benchmark starts
nx-27017 (in memory) from .venv-mongo on a free port. Writes bench/results/mongo_pipeline.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REACTOR = "twisted.internet.asyncioreactor.AsyncioSelectorReactor"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nx(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = os.environ.get("NX27017_BIN") or str(ROOT / ".venv-mongo" / "bin" / "nx-27017")
    if not os.path.exists(binary):
        sys.exit(f"nx-27017 not found at {binary}: run ./dev setup, or pass --uri")
    port = free_port()
    proc = subprocess.Popen([binary, "--db", "memory", "--host", "127.0.0.1", "-p", str(port),
                             "--log-file", str(workdir / "nx.log"), "--pid-file", str(workdir / "nx.pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    uri = f"mongodb://127.0.0.1:{port}/"
    import pymongo

    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(uri, serverSelectionTimeoutMS=300)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.admin.command("ping")
            break
        except pymongo.errors.PyMongoError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                sys.exit("nx-27017 did not start")
            time.sleep(0.1)  # poll interval of a deadline-bound wait for the server
    client.close()
    return proc, uri


def make_item(i: int) -> dict[str, Any]:
    host = f"site{i % 500:04d}.test"
    url = f"http://{host}/p/{i}"
    return {"url": url, "final_url": url, "status": 200,
            "headers": {"Content-Type": "text/html; charset=utf-8", "Server": "synthweb",
                        "Last-Modified": "Wed, 01 Jan 2025 00:00:00 GMT", "ETag": f'"{i:016x}"'},
            "title": f"Page {i} of {host} - a title of a typical length for a web page",
            "content_length": 8600 + i % 1000, "content_hash": f"{i:040x}", "outlinks": 20, "depth": i % 7,
            "fetched_at": "2026-01-01T00:00:00.000+00:00"}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_once(uri: str, spill_dir: Path, db: str, batch_size: int, items: list[dict[str, Any]],
                   window: int) -> dict[str, Any]:
    from scrapy.utils.test import get_crawler

    import crawlproj.settings as module
    from crawlproj.pipelines.mongo import MongoPipeline

    project = {k: getattr(module, k) for k in dir(module) if k.isupper()}
    crawler = get_crawler(settings_dict={
        **project, "MONGO_URI": uri, "MONGO_DATABASE": db, "MONGO_BATCH_SIZE": batch_size,
        # batches fill from the window; the interval only flushes the last, partial one
        "MONGO_FLUSH_INTERVAL": 0.05, "MONGO_BUFFER_MAX_ITEMS": max(window, batch_size),
        "MONGO_SPILL_DIR": str(spill_dir), "LOG_LEVEL": "WARNING"})
    pipeline = MongoPipeline.from_crawler(crawler)
    await pipeline.open_spider()
    semaphore = asyncio.Semaphore(window)

    async def one(item: dict[str, Any]) -> None:
        async with semaphore:
            await pipeline.process_item(item)

    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(item) for item in items))
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    await pipeline.close_spider()
    stats = crawler.stats.get_stats()
    if stats.get("mongo/items_written") != len(items):
        raise RuntimeError(f"wrote {stats.get('mongo/items_written')} of {len(items)} items: {stats}")
    return {"batch_size": batch_size, "items": len(items), "seconds": elapsed, "items_per_s": len(items) / elapsed,
            "bulk_writes": stats.get("mongo/batches", 0),
            "write_latency_ms_p50": stats.get("mongo/write_latency_ms/p50"),
            "write_latency_ms_p99": stats.get("mongo/write_latency_ms/p99"),
            "item_wait_ms_p50": stats.get("mongo/item_wait_ms/p50"),
            "item_wait_ms_p99": stats.get("mongo/item_wait_ms/p99"),
            "pipeline_cpu_ms_per_item": 1000 * cpu / len(items)}


async def run_all(args: argparse.Namespace, uri: str, workdir: Path) -> list[dict[str, Any]]:
    results = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        count = args.items_batch_1 if batch_size == 1 else args.items
        items = [make_item(i) for i in range(count)]
        db = f"bench_{uuid.uuid4().hex[:8]}"
        for mode in ("insert", "update"):
            r = await run_once(uri, workdir / "spill", db, batch_size, items, args.window)
            r["mode"] = mode
            results.append(r)
            print(f"batch {batch_size:5d} {mode:6s} {r['items']:6d} items {r['items_per_s']:8.0f} items/s  "
                  f"write p50 {r['write_latency_ms_p50']} ms p99 {r['write_latency_ms_p99']} ms", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", default="1,100,1000")
    parser.add_argument("--items", type=int, default=20000, help="items per run (batch sizes > 1)")
    parser.add_argument("--items-batch-1", type=int, default=2000, help="items per run with batch size 1")
    parser.add_argument("--window", type=int, default=2000, help="process_item calls in flight")
    parser.add_argument("--uri", default="", help="a MongoDB server to use instead of nx-27017")
    args = parser.parse_args()

    from scrapy.utils.reactor import install_reactor

    import crawlproj.settings as project_settings

    install_reactor(REACTOR, project_settings.ASYNCIO_EVENT_LOOP)  # the loop the project's settings name
    from twisted.internet import defer, reactor

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server, uri = (None, args.uri) if args.uri else start_nx(workdir)
        outcome: dict[str, Any] = {}

        def done(value: Any) -> None:
            outcome["value"] = value
            reactor.stop()  # type: ignore[attr-defined]

        def start() -> None:
            future = asyncio.ensure_future(run_all(args, uri, workdir))
            defer.Deferred.fromFuture(future).addBoth(done)

        try:
            reactor.callWhenRunning(start)  # type: ignore[attr-defined]
            reactor.run()  # type: ignore[attr-defined]
        finally:
            if server is not None:
                server.terminate()
                server.wait(10)
    value = outcome.get("value")
    if not isinstance(value, list):
        raise SystemExit(f"benchmark failed: {value}")
    print("\n| batch size | run | items | items/s | bulk writes | write p50 ms | write p99 ms | "
          "item wait p50 ms | pipeline CPU ms/item |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in value:
        print(f"| {r['batch_size']} | {r['mode']} | {r['items']} | {r['items_per_s']:.0f} | {r['bulk_writes']} | "
              f"{r['write_latency_ms_p50']} | {r['write_latency_ms_p99']} | {r['item_wait_ms_p50']} | "
              f"{r['pipeline_cpu_ms_per_item']:.3f} |")
    server_name = "MONGO_URI" if args.uri else "nx-27017 0.8.1 (in memory)"
    path = save("mongo_pipeline", {"server": server_name, "window": args.window, "runs": value})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
