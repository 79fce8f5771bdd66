"""Real HTML: Debian documentation on nginx, crawled by plain Scrapy and by crawlproj, same run.

    .venv/bin/python bench/bench_realhtml.py                 # sets itself up (apt-get), ~10 minutes
    .venv/bin/python bench/bench_realhtml.py --runs crawlproj_1_node,plain_scrapy_defaults
    .venv/bin/python bench/bench_suite.py --only realhtml     # the same, as a suite section

The corpus (bench/realhtml_corpus.py): eight hosts, each one Debian documentation package
(Python, PostgreSQL, CMake, Git, Django, SQLite, the Debian Reference, libstdc++'s Doxygen
pages), about 9,000 HTML files, robots.txt of ours (some hostile). Missing packages and nginx
are installed with apt-get; nginx runs from a config in a temp directory, one server block per
host name on one loopback port; the names resolve through crawlproj_testing's resolver.

Runs: plain Scrapy with its defaults (LinkExtractor spider, CONCURRENT_REQUESTS=64, the offsite
filter set to the corpus's hosts), plain Scrapy with link extraction as fast as Scrapy allows
(``a/@href`` through ``response.urljoin``), crawlproj with 1 and 2 nodes (its defaults), and
Scrapy's floor: its defaults with every page crawlproj fetches as a start URL and no link
followed (what Scrapy itself costs a page of this corpus).
Per run: pages, pages/s, CPU ms per page of every crawler process (crawlproj: dispatcher and
nodes), and the requested set (nginx's access log) against the ground truth walked from the
files: which URLs are reachable from the seeds by links on the corpus's hosts, allowed by
robots.txt (crawlproj; plain Scrapy's defaults do not read it). Writes bench/results/realhtml.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from urllib.parse import urlsplit
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import FLOOR_RUN, RESULTS, child_cpu, names_arg, run_and_save  # noqa: E402
from realhtml_corpus import (SITES, Corpus, Nginx, corpus_files, crawled_set, crawlproj_links,  # noqa: E402
                             ensure_installed, free_port, ground_truth, link_extractor_links, packages_versions)

from crawlproj.tools.cluster import Cluster  # noqa: E402
from crawlproj.tools.runner import SYNTHWEB_SETTINGS  # noqa: E402

CRAWL_TIMEOUT = 3600
RUNS = ("plain_scrapy_defaults", "plain_scrapy_fast_links", "crawlproj_1_node", "crawlproj_2_nodes", FLOOR_RUN)
#: what each run should request: (link extraction, robots.txt obeyed)
TRUTH: dict[str, tuple[Callable[[str, bytes], list[str]], bool]] = {
    "plain_scrapy_defaults": (link_extractor_links, False),
    "plain_scrapy_fast_links": (crawlproj_links, False),
    "crawlproj_1_node": (crawlproj_links, True),
    "crawlproj_2_nodes": (crawlproj_links, True),
    FLOOR_RUN: (crawlproj_links, True),
}


def plain_run(nginx: Nginx, workdir: Path, links: str, urls: list[str] | None = None) -> dict[str, Any]:
    """Plain Scrapy from the corpus's seeds (or ``urls``), following links as ``links`` says."""
    import subprocess

    seeds = workdir / "seeds.txt"
    seeds.write_text("\n".join(nginx.seeds() if urls is None else urls) + "\n")
    stats_file = workdir / "stats.json"
    settings = {"ADDONS": json.dumps(SYNTHWEB_SETTINGS["ADDONS"]), "CONCURRENT_REQUESTS": "64",
                "LOG_LEVEL": "INFO", "TELNETCONSOLE_ENABLED": "False", "REMOTE_CONTROL_ENABLED": "False",
                "EXTENSIONS": json.dumps({"crawlproj.extensions.progress.Progress": 500}),
                "PROGRESS_STATS_FILE": str(stats_file), "LOG_FILE": str(workdir / "scrapy.log")}
    argv = [sys.executable, "-m", "scrapy", "runspider", str(HERE / "plain_spider.py"),
            "-a", f"seeds={seeds}", "-a", "allowed=" + ",".join(s.host for s in SITES), "-a", f"links={links}"]
    for k, v in settings.items():
        argv += ["-s", f"{k}={v}"]
    env = {k: v for k, v in os.environ.items() if k != "SCRAPY_SETTINGS_MODULE"}
    cpu0 = child_cpu()
    subprocess.run(argv, env=env, cwd=str(workdir), check=True, timeout=CRAWL_TIMEOUT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpu = child_cpu() - cpu0
    stats = json.loads(stats_file.read_text())
    pages = stats.get("response_received_count", 0)
    return {"pages": pages, "crawl_seconds": stats["elapsed_wall_seconds"], "cpu_seconds": cpu}


def crawlproj_run(nginx: Nginx, workdir: Path, nodes: int) -> dict[str, Any]:
    seeds = workdir / "seeds.txt"
    seeds.write_text("\n".join(nginx.seeds()) + "\n")
    settings = {**SYNTHWEB_SETTINGS, "LOG_LEVEL": "INFO"}
    cpu0 = child_cpu()
    with Cluster(workdir / "cluster", seeds, settings=settings) as cluster:
        for i in range(nodes):
            cluster.start_node(f"n{i + 1}")
        if not cluster.wait(CRAWL_TIMEOUT):
            raise RuntimeError("crawl did not finish")
        state = cluster.status()
        stats = [cluster.node_stats(f"n{i + 1}") for i in range(nodes)]
    cpu = child_cpu() - cpu0  # nodes and the dispatcher, all exited
    return {"nodes": nodes, "pages": sum(s.get("response_received_count", 0) for s in stats),
            "crawl_seconds": max(s["elapsed_wall_seconds"] for s in stats), "cpu_seconds": cpu,
            "dispatcher_cpu_seconds": state["cpu_seconds"]}


def cached_truth(corpus: Corpus, seeds: list[str], links: Callable[[str, bytes], list[str]],
                 obey_robots: bool) -> dict[str, int]:
    """:func:`ground_truth`, kept in bench/results/ for the same packages, sites and code."""
    import gzip
    import hashlib

    import crawlproj.pagelinks
    import crawlproj.wire.urls

    source = b"".join(Path(p).read_bytes() for p in (HERE / "realhtml_corpus.py", crawlproj.wire.urls.__file__,
                                                     crawlproj.pagelinks.__file__))
    ident = json.dumps([packages_versions(), repr(SITES), links.__name__, obey_robots]).encode()
    digest = hashlib.sha256(ident + source).hexdigest()[:16]
    path = RESULTS / f"realhtml-truth-{digest}.json.gz"
    port = f":{corpus.port}/"
    if path.exists():
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return {url.replace(":{port}/", port, 1): status for url, status in json.load(f).items()}
    truth = ground_truth(corpus, seeds, links, obey_robots)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump({url.replace(port, ":{port}/", 1): status for url, status in truth.items()}, f)
    return truth


def check(name: str, crawled: set[str], truth: dict[str, int]) -> dict[str, Any]:
    missing = sorted(set(truth) - crawled)
    extra = sorted(crawled - set(truth))
    by_host: dict[str, list[int]] = {}
    for i, urls in enumerate((missing, extra)):
        for url in urls:
            by_host.setdefault(urlsplit(url).hostname or "", [0, 0])[i] += 1
    return {"missing_extra_by_host": by_host, "truth_urls": len(truth), "requested_urls": len(crawled), "missing": len(missing),
            "extra": len(extra), "equals_truth": not missing and not extra,
            "missing_sample": missing[:10], "extra_sample": extra[:10]}


def realhtml(workdir: Path, runs: tuple[str, ...] = RUNS) -> dict[str, Any]:
    ensure_installed()
    results: dict[str, Any] = {"corpus": {"hosts": [s.host for s in SITES], "packages": packages_versions(),
                                          "html_files": corpus_files()}}
    truths: dict[tuple[Any, bool], dict[str, int]] = {}
    port = free_port()  # one port for every run: the truth's URLs hold it
    corpus = Corpus(port)

    def truth_of(name: str, seeds: list[str]) -> dict[str, int]:
        key = TRUTH[name]
        if key not in truths:
            t0 = time.monotonic()
            truths[key] = cached_truth(corpus, seeds, *key)
            print(f"  (ground truth for {name}: {len(truths[key])} URLs, {time.monotonic() - t0:.0f} s)",
                  flush=True)
        return truths[key]

    for name in runs:
        run_dir = workdir / name
        run_dir.mkdir()
        with Nginx(run_dir, port) as nginx:
            if name == FLOOR_RUN:
                r = plain_run(nginx, run_dir, "none", sorted(truth_of(name, nginx.seeds())))
            elif name.startswith("plain_scrapy"):
                r = plain_run(nginx, run_dir, "fast" if name.endswith("fast_links") else "extractor")
            else:
                r = crawlproj_run(nginx, run_dir, int(name.split("_")[1]))
        crawled = crawled_set(nginx)
        r.update(check(name, crawled, truth_of(name, nginx.seeds())))
        r["pages_per_s"] = r["pages"] / r["crawl_seconds"]
        r["cpu_ms_per_page"] = 1000 * r["cpu_seconds"] / max(r["pages"], 1)
        results[name] = r
        print(f"  {name:26s} pages {r['pages']:6d}  {r['pages_per_s']:7.1f} pages/s  "
              f"{r['cpu_ms_per_page']:6.2f} ms CPU/page  truth {r['truth_urls']}: missing {r['missing']} "
              f"extra {r['extra']}", flush=True)
    base = results.get("plain_scrapy_defaults")
    if base:
        for name in runs:
            r = results[name]
            r["x_plain_scrapy_pages_per_s"] = r["pages_per_s"] / base["pages_per_s"]
            r["plain_scrapy_cpu_over_this"] = base["cpu_ms_per_page"] / r["cpu_ms_per_page"]
    return results


def markdown(results: dict[str, Any]) -> str:
    out = ["| run | pages | pages/s | CPU ms/page | plain CPU / this | requested = truth (missing, extra) |",
           "|---|---|---|---|---|---|"]
    for name in RUNS:
        r = results.get(name)
        if r:
            out.append(f"| {name} | {r['pages']} | {r['pages_per_s']:.1f} | {r['cpu_ms_per_page']:.2f} | "
                       f"{r.get('plain_scrapy_cpu_over_this', 0):.2f} | {r['equals_truth']} "
                       f"({r['missing']}, {r['extra']}) |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of {', '.join(RUNS)}")
    parser.add_argument("--keep", type=Path, help="keep each run's files (nginx log, node logs) in this directory")
    args = parser.parse_args()
    runs = names_arg(parser, "--runs", args.runs, RUNS)
    run_and_save("realhtml", lambda d: realhtml(d, runs), args.keep, markdown)

if __name__ == "__main__":
    main()
