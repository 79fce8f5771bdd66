"""The benchmark suite: every system side by side on the same synthetic web, one run.

    .venv/bin/python bench/bench_suite.py                  # everything (about 60 minutes)
    .venv/bin/python bench/bench_suite.py --only cpu,politeness --long-pages 50000

Sections (``--only`` picks some):
  cpu         CPU-bound link-following crawl (200 hosts x 100 pages of ~9 KB, 20 links, no
              latency): plain Scrapy with defaults and tuned (CONCURRENT_ITEMS=16), scrapy-redis
              (its scheduler + dupefilter, FifoQueue), crawlproj with 1 and 2 nodes. pages/s,
              crawler CPU ms per page, ratios to plain Scrapy.
  politeness  D hosts, delay d, ~5 ms latency, one node: pages/s against the D/d limit.
  latency     100-200 ms responses, CONCURRENT_REQUESTS=16 per node: 1, 2 and 4 nodes.
  long        200k pages (--long-pages) of a web of heavy-tailed hosts about 1.5x as big, 2 nodes:
              rate per 10% window of pages, hosts fetched per window, node RSS over time.
              --long-to-end crawls the whole web, its drain to the biggest hosts included.
  realhtml    real HTML (Debian documentation on nginx, ~8,600 pages; bench/bench_realhtml.py,
              sets itself up with apt-get): plain Scrapy defaults and with fast link extraction,
              crawlproj 1 and 2 nodes; CPU ms per page, pages/s, the crawl against the ground truth.
  dispatcher  dispatcher capacity with simulated nodes (bench/bench_dispatcher.py).
  endofcrawl  the end of a crawl (bench/bench_endofcrawl.py): `crawlproj demo --hosts 300` and the
              real-HTML corpus, wall time against the per-key lower bound, the key that finished last.
  revisit     continuous crawling on the changing web (bench/bench_revisit.py; its own command is
              printed): freshness of adaptive against fixed at the same fetch budget, bytes with
              and without conditional GET. 3 crawls of --revisit-seconds each.
Writes bench/results/suite.json, bench/results/suite.md and PNG charts beside them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_foundation import bench_spec, plain_scrapy  # noqa: E402
from bench_realhtml import markdown as realhtml_markdown  # noqa: E402
from bench_realhtml import realhtml  # noqa: E402
from bench_endofcrawl import endofcrawl  # noqa: E402
from bench_endofcrawl import markdown as endofcrawl_markdown  # noqa: E402
import bench_revisit  # noqa: E402
from common import FLOOR_RUN, RESULTS, child_cpu, save  # noqa: E402

from crawlproj.tools.cluster import Cluster  # noqa: E402
from crawlproj.tools.runner import SYNTHWEB_SETTINGS  # noqa: E402
from crawlproj_testing.synthweb.model import WebSpec  # noqa: E402
from crawlproj_testing.synthweb.process import SynthWebProcess  # noqa: E402

CRAWL_TIMEOUT = 3600
RSS_SAMPLE_SECONDS = 2.0


def _line(name: str, r: dict[str, Any]) -> None:
    print(f"  {name:36s} " + "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in r.items() if not isinstance(v, (list, dict))),
          flush=True)


# -- cpu ----------------------------------------------------------------------------------------


def _redis_server(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # poll interval of a deadline-bound wait for the server to start
    client.close()
    return proc


def crawlproj_run(server: SynthWebProcess, workdir: Path, nodes: int) -> dict[str, float]:
    """crawlproj with its default settings (robots.txt per RFC 9309, one fetch per politeness
    key at a time) on ``nodes`` nodes; the rate uses the nodes' spider-open-to-close time."""
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


def cpu(workdir: Path, hosts: int, pages: int) -> dict[str, Any]:
    spec = bench_spec(hosts, pages)
    results: dict[str, Any] = {}
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        redis_port = s.getsockname()[1]
    redis_proc = _redis_server(redis_port, workdir)
    scrapy_redis = {"SCHEDULER": "scrapy_redis.scheduler.Scheduler",
                    "DUPEFILTER_CLASS": "scrapy_redis.dupefilter.RFPDupeFilter",
                    "SCHEDULER_QUEUE_CLASS": "scrapy_redis.queue.FifoQueue",
                    "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
    runs: list[tuple[str, int | None, dict[str, str]]] = [
        ("plain_scrapy_defaults", None, {}),
        ("plain_scrapy_concurrent_items_16", None, {"CONCURRENT_ITEMS": "16"}),
        ("scrapy_redis_defaults", None, scrapy_redis),
        ("crawlproj_1_node", 1, {}),
        ("crawlproj_2_nodes", 2, {}),
        (FLOOR_RUN, None, {}),
    ]
    try:
        for name, nodes, extra in runs:
            run_dir = workdir / name
            run_dir.mkdir()
            with SynthWebProcess(spec) as server:
                r = crawlproj_run(server, run_dir, nodes) if nodes else plain_scrapy(
                    server, run_dir, extra, every_page=name == FLOOR_RUN)
            results[name] = r
            _line(name, r)
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
    base = results["plain_scrapy_defaults"]["pages_per_s"]
    for r in results.values():
        r["x_plain_scrapy"] = r["pages_per_s"] / base
    return results


# -- politeness ---------------------------------------------------------------------------------


def steady_rate(times_ms: list[float], trim: float = 0.1) -> float:
    """Pages/s between the first and last ``trim`` share of fetches (start-up and tail cut)."""
    times = sorted(times_ms)
    lo, hi = int(len(times) * trim), int(len(times) * (1 - trim)) - 1
    if hi <= lo:
        return 0.0
    return (hi - lo) / ((times[hi] - times[lo]) / 1000.0)


def politeness(workdir: Path, hosts: int, delay: float, pages: int) -> dict[str, Any]:
    spec = WebSpec(seed=3, hosts=hosts, min_pages=pages, max_pages=pages, robots_variants=False,
                   special_share=0.0, slow_host_share=0.0, base_latency_ms=5, page_bytes=3000,
                   cross_host_share=0.0, private_share=0.0, subdomain_share=0.0)  # D hosts = D keys
    with SynthWebProcess(spec, access_log=workdir / "access.log") as web:
        seeds = workdir / "seeds.txt"
        seeds.write_text("\n".join(web.seed_urls()) + "\n")
        settings = {**SYNTHWEB_SETTINGS, "BROAD_SCOPE": "any", "DOWNLOAD_DELAY": delay}
        with Cluster(workdir / "cluster", seeds, settings=settings) as cluster:
            cluster.start_node("n1")
            if not cluster.wait(CRAWL_TIMEOUT):
                raise RuntimeError("politeness crawl did not finish")
        pages_fetched = [a.start_ms for a in web.accesses() if not a.is_robots]
    limit = hosts / delay
    rate = steady_rate(pages_fetched)
    r = {"hosts": hosts, "delay_s": delay, "pages": len(pages_fetched), "limit_pages_per_s": limit,
         "pages_per_s": rate, "x_limit": rate / limit}
    _line("politeness_bound", r)
    return r


# -- latency ------------------------------------------------------------------------------------


def latency(workdir: Path, node_counts: list[int], hosts: int, pages: int) -> dict[str, Any]:
    spec = WebSpec(seed=4, hosts=hosts, min_pages=pages, max_pages=pages, robots_variants=False,
                   special_share=0.0, slow_host_share=1.0, base_latency_ms=100, slow_latency_ms=50,
                   page_bytes=3000, cross_host_share=0.1)
    results: dict[str, Any] = {}
    for nodes in node_counts:
        run_dir = workdir / f"latency_{nodes}"
        run_dir.mkdir()
        with SynthWebProcess(spec, access_log=run_dir / "access.log") as web:
            seeds = run_dir / "seeds.txt"
            seeds.write_text("\n".join(web.seed_urls()) + "\n")
            settings = {**SYNTHWEB_SETTINGS, "BROAD_SCOPE": "any", "CONCURRENT_REQUESTS": 16}
            with Cluster(run_dir / "cluster", seeds, settings=settings) as cluster:
                for i in range(nodes):
                    cluster.start_node(f"n{i + 1}")
                if not cluster.wait(CRAWL_TIMEOUT):
                    raise RuntimeError("latency crawl did not finish")
            times = [a.start_ms for a in web.accesses() if not a.is_robots]
        r = {"nodes": nodes, "pages": len(times), "pages_per_s": steady_rate(times)}
        results[f"{nodes}_nodes"] = r
        _line(f"latency_bound_{nodes}_nodes", r)
    one = results[f"{node_counts[0]}_nodes"]["pages_per_s"]
    for r in results.values():
        r["x_one_node"] = r["pages_per_s"] / one
    return results


# -- long ---------------------------------------------------------------------------------------


def _rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def window_rates(pages: list[tuple[float, str]]) -> tuple[list[float], list[dict[str, Any]]]:
    """pages/s per 10% window of (start ms, host) sorted by time, and who was fetched in each.

    A window's profile: distinct hosts fetched, the busiest host's share of its pages, and the
    median gap between two fetches of one host (ms). When few hosts are left, a polite crawl is
    bound by hosts x (1 / gap), whatever the crawler's speed.
    """
    rates, profile = [], []
    n = len(pages)
    for w in range(10):
        lo, hi = n * w // 10, n * (w + 1) // 10 - 1
        secs = (pages[hi][0] - pages[lo][0]) / 1000.0
        rates.append((hi - lo) / secs if secs > 0 else 0.0)
        per_host: dict[str, list[float]] = {}
        for t, host in pages[lo:hi + 1]:
            per_host.setdefault(host, []).append(t)
        gaps = sorted(b - a for ts in per_host.values() for a, b in zip(ts, ts[1:]))
        profile.append({"hosts": len(per_host),
                        "top_host_share": max(len(ts) for ts in per_host.values()) / (hi - lo + 1),
                        "median_gap_ms": gaps[len(gaps) // 2] if gaps else 0.0})
    return rates, profile


def long_crawl(workdir: Path, target_pages: int, nodes: int, to_end: bool = False) -> dict[str, Any]:
    """A crawl of ``target_pages`` pages of a web about 1.5x that size, then stopped.

    The web is bigger than the crawl so that work stays plentiful to the last window, as in a
    crawl that runs for hours: a slowdown then comes from the crawler (state growing, caches
    filling), not from the web running out. ``to_end`` crawls the whole web instead; its last
    windows are then the drain, when only the biggest hosts are left and each is fetched one
    request at a time (the window profile shows how many hosts were left).
    """
    hosts = max(200, target_pages // 150)
    spec = WebSpec(seed=5, hosts=hosts, min_pages=60, max_pages=20000, pareto_alpha=1.3,
                   robots_variants=False, slow_host_share=0.0, page_bytes=5000)
    samples: list[dict[str, Any]] = []
    with SynthWebProcess(spec, access_log=workdir / "access.log") as web:
        total = sum(h.pages for h in web.web.hosts)
        if not to_end and total < 1.4 * target_pages:
            raise ValueError(f"the long-crawl web has {total} pages, too few for {target_pages}")
        seeds = workdir / "seeds.txt"
        seeds.write_text("\n".join(web.seed_urls()) + "\n")
        settings = {**SYNTHWEB_SETTINGS, "BROAD_SCOPE": "any", "LOG_LEVEL": "INFO"}
        with Cluster(workdir / "cluster", seeds, settings=settings) as cluster:
            for i in range(nodes):
                cluster.start_node(f"n{i + 1}")
            # served requests include at most one robots.txt per host (this web has no errors)
            enough = None if to_end else target_pages + hosts
            t0 = time.monotonic()
            while not cluster.wait(RSS_SAMPLE_SECONDS):
                row: dict[str, Any] = {"t": time.monotonic() - t0}
                for name, proc in cluster.nodes.items():
                    row[name] = _rss_kib(proc.pid)
                samples.append(row)
                if enough is not None and web.stats()["requests"] >= enough:
                    break
                if time.monotonic() - t0 > CRAWL_TIMEOUT:
                    raise RuntimeError("long crawl did not finish")
        pages = sorted((a.start_ms, a.host) for a in web.accesses() if not a.is_robots)
    if not to_end:
        if len(pages) < target_pages:
            raise RuntimeError(f"the crawl ended after {len(pages)} pages, before {target_pages}")
        pages = pages[:target_pages]
    windows, profile = window_rates(pages)
    rss = {name: [s[name] for s in samples if s.get(name)] for name in (f"n{i + 1}" for i in range(nodes))}
    # Growth from the second tenth of the run (the first is start-up: imports, caches filling)
    # to the last tenth.
    growth = {}
    for name, values in rss.items():
        tenth = len(values) // 10
        if tenth:
            second = sum(values[tenth: 2 * tenth]) / tenth
            last = sum(values[-tenth:]) / tenth
            growth[name] = last / second - 1.0
    n = len(pages)
    r = {"hosts": hosts, "pages_in_web": total, "pages": n, "to_end": to_end,
         "rate_per_10pct_window": windows, "window_profile": profile,
         "last_over_first_window": windows[-1] / windows[0] if windows[0] else 0.0,
         "rss_growth": growth, "rss_samples": samples}
    print(f"  long crawl: {n} of {total} pages; rate per 10% window: "
          + ", ".join(f"{w:.0f}" for w in windows)
          + f"; last/first {r['last_over_first_window']:.2f}; RSS growth "
          + ", ".join(f"{k} {100 * v:+.1f}%" for k, v in growth.items()), flush=True)
    print("  hosts per window: " + ", ".join(str(p["hosts"]) for p in profile)
          + "; median gap between fetches of a host (ms): "
          + ", ".join(f"{p['median_gap_ms']:.0f}" for p in profile), flush=True)
    return r


# -- dispatcher ---------------------------------------------------------------------------------


def dispatcher() -> dict[str, Any]:
    subprocess.run([sys.executable, str(HERE / "bench_dispatcher.py")], check=True)
    return json.loads((RESULTS / "dispatcher.json").read_text())


# -- revisit ------------------------------------------------------------------------------------


def revisit(workdir: Path, seconds: float) -> dict[str, Any]:
    argv = ["--seconds", f"{seconds:g}"]
    command = bench_revisit.command(argv)
    print(f"  command: {command}", flush=True)
    result = bench_revisit.run(bench_revisit.parser().parse_args(argv), workdir)
    result["command"] = command
    for line in bench_revisit.summary(result):
        print(f"  {line}", flush=True)
    return result


# -- report -------------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    out = ["# crawlproj benchmark suite", "", f"Run {results['when']} on {results['machine']}", ""]
    if "cpu" in results:
        out += ["## CPU-bound crawl", "", "| run | pages | pages/s | x plain Scrapy | crawler CPU ms/page |",
                "|---|---|---|---|---|"]
        for name, r in results["cpu"].items():
            out.append(f"| {name} | {r['pages']} | {r['pages_per_s']:.1f} | {r['x_plain_scrapy']:.2f} | "
                       f"{1000 * r['crawler_cpu_s_per_page']:.2f} |")
        out.append("")
    if "politeness" in results:
        r = results["politeness"]
        out += ["## Politeness-bound crawl", "",
                f"{r['hosts']} hosts, delay {r['delay_s']} s: {r['pages_per_s']:.2f} pages/s against a "
                f"limit of {r['limit_pages_per_s']:.2f} (x{r['x_limit']:.3f}).", ""]
    if "latency" in results:
        out += ["## Latency-bound scaling (100-150 ms responses)", "", "| nodes | pages/s | x 1 node |",
                "|---|---|---|"]
        for r in results["latency"].values():
            out.append(f"| {r['nodes']} | {r['pages_per_s']:.1f} | {r['x_one_node']:.2f} |")
        out.append("")
    if "realhtml" in results:
        out += ["## Real HTML (Debian documentation on nginx)", "", realhtml_markdown(results["realhtml"])]
    if "endofcrawl" in results:
        out += ["## The end of a crawl (wall time against the per-key lower bound)", "",
                endofcrawl_markdown(results["endofcrawl"])]
    if "long" in results:
        r = results["long"]
        scope = "the whole web" if r.get("to_end") else "then stopped"
        out += ["## Long crawl", "",
                f"{r['pages']} pages of a web of {r['pages_in_web']} pages on {r['hosts']} hosts "
                f"(heavy-tailed sizes), {scope}.",
                "Rate per 10% window (pages/s): " + ", ".join(f"{w:.0f}" for w in r["rate_per_10pct_window"]),
                "Hosts fetched per window: " + ", ".join(str(p["hosts"]) for p in r["window_profile"]),
                f"Last / first window: {r['last_over_first_window']:.2f}. Node RSS growth (second to last "
                f"tenth of the run): "
                + ", ".join(f"{k} {100 * v:+.1f}%" for k, v in r["rss_growth"].items()), ""]
    if "revisit" in results:
        r = results["revisit"]
        out += ["## Revisits on the changing web", "", f"`{r['command']}`", "",
                *(f"- {line}" for line in bench_revisit.summary(r)), ""]
    return "\n".join(out) + "\n"


def charts(results: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    if "cpu" in results:
        fig, ax = plt.subplots(figsize=(8, 4))
        names = list(results["cpu"])
        ax.barh(names, [results["cpu"][n]["pages_per_s"] for n in names])
        ax.set_xlabel("pages/s")
        ax.set_title("CPU-bound crawl")
        fig.tight_layout()
        path = RESULTS / "suite_cpu.png"
        fig.savefig(path)
        made.append(path)
    if "latency" in results:
        runs = sorted(results["latency"].values(), key=lambda r: r["nodes"])
        fig, ax = plt.subplots(figsize=(6, 4))
        nodes = [r["nodes"] for r in runs]
        ax.plot(nodes, [r["pages_per_s"] for r in runs], marker="o", label="measured")
        ax.plot(nodes, [runs[0]["pages_per_s"] * n / nodes[0] for n in nodes], linestyle="--",
                color="tab:gray", label="linear from 1 node")
        ax.set_xticks(nodes)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("nodes")
        ax.set_ylabel("pages/s")
        ax.set_title("Latency-bound crawl: scaling")
        ax.legend()
        fig.tight_layout()
        path = RESULTS / "suite_latency.png"
        fig.savefig(path)
        made.append(path)
    if "long" in results:
        r = results["long"]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        a1.plot(range(1, 11), r["rate_per_10pct_window"], marker="o", label="pages/s")
        a1.set_ylim(bottom=0)
        a1.set_xlabel("10% window of pages")
        a1.set_ylabel("pages/s")
        a1.set_title("Long crawl: rate, and hosts fetched per window")
        hosts = a1.twinx()
        hosts.plot(range(1, 11), [p["hosts"] for p in r["window_profile"]], color="tab:gray",
                   linestyle="--", label="hosts")
        hosts.set_ylim(bottom=0)
        hosts.set_ylabel("hosts fetched in the window")
        for name in r["rss_growth"]:
            pts = [(s["t"], s[name] / 1024) for s in r["rss_samples"] if s.get(name)]
            a2.plot([p[0] for p in pts], [p[1] for p in pts], label=name)
        a2.set_xlabel("s")
        a2.set_ylabel("RSS MiB")
        a2.legend()
        a2.set_title("Long crawl: node RSS")
        fig.tight_layout()
        path = RESULTS / "suite_long.png"
        fig.savefig(path)
        made.append(path)
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="cpu,politeness,latency,long,realhtml,dispatcher,revisit")
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--politeness-hosts", type=int, default=20)
    parser.add_argument("--politeness-delay", type=float, default=0.5)
    parser.add_argument("--latency-nodes", default="1,2,4")
    parser.add_argument("--long-pages", type=int, default=200_000)
    parser.add_argument("--long-nodes", type=int, default=2)
    parser.add_argument("--long-to-end", action="store_true",
                        help="crawl the whole long-crawl web (its drain included), not --long-pages")
    parser.add_argument("--revisit-seconds", type=float, default=90.0, help="real seconds per revisit crawl")
    args = parser.parse_args()
    print("command: " + " ".join([sys.executable, *sys.argv]), flush=True)
    only = set(args.only.split(","))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sections = (
            ("cpu", lambda d: cpu(d, args.hosts, args.pages)),
            ("politeness", lambda d: politeness(d, args.politeness_hosts, args.politeness_delay, 40)),
            ("latency", lambda d: latency(d, [int(n) for n in args.latency_nodes.split(",")], 300, 20)),
            ("long", lambda d: long_crawl(d, args.long_pages, args.long_nodes, args.long_to_end)),
            ("realhtml", realhtml),
            ("revisit", lambda d: revisit(d, args.revisit_seconds)),
            ("endofcrawl", endofcrawl),
        )
        for name, run in sections:
            if name in only:
                print(f"== {name}", flush=True)
                (work / name).mkdir()
                results[name] = run(work / name)
    if "dispatcher" in only:
        print("== dispatcher", flush=True)
        results["dispatcher"] = dispatcher()
    path = save("suite", results)
    saved = json.loads(path.read_text())
    (RESULTS / "suite.md").write_text(markdown(saved))
    made = charts(saved)
    print(markdown(saved))
    print(f"results: {path}, {RESULTS / 'suite.md'}, " + ", ".join(str(p) for p in made))


if __name__ == "__main__":
    main()
