"""A local cluster: one dispatcher and N nodes (`scrapy crawl` processes) on this machine.

    crawlproj cluster --nodes 2 --seeds-file seeds.txt      # your seeds, your settings
    crawlproj demo                                          # the bundled synthetic web

Shows live progress (pages/s, frontier, leases, nodes), stops everything cleanly on Ctrl-C and
prints a summary. :class:`Cluster` is also what the tests and benchmarks use.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from crawlproj.addons import combine, node_settings
from crawlproj.tools.dispatcher_process import DISPATCHER_MODULE, DispatcherProcess
from crawlproj.tools.runner import SYNTHWEB_SETTINGS, crawl_argv, crawl_env, stop_process

NODE_HEADER = "X-Crawlproj-Node"
STOP_GRACE_SECONDS = 30.0  # a node given SIGTERM gets this long to finish before SIGKILL
PROGRESS_INTERVAL = 2.0
# The demo's synthetic web (a crawlproj_testing.synthweb.model.WebSpec of these).
DEMO_SEED, DEMO_HOSTS, DEMO_MIN_PAGES, DEMO_MAX_PAGES = 1, 120, 15, 400


class Cluster:
    """Start, watch and stop a dispatcher and its nodes; every file lives under ``workdir``."""

    def __init__(self, workdir: Path, seeds_file: Path | None = None, spider: str = "broad",
                 settings: dict[str, Any] | None = None, spider_args: dict[str, Any] | None = None,
                 dispatcher_args: tuple[str, ...] = (), dispatcher_module: str = DISPATCHER_MODULE):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.spider = spider
        self.settings = dict(settings or {})
        self.spider_args = dict(spider_args or {})
        args = list(dispatcher_args)
        if seeds_file is not None:
            args += ["--seeds-file", str(seeds_file)]
        self.dispatcher = DispatcherProcess(self.workdir / "dispatcher-store", *args,
                                            log_path=self.workdir / "dispatcher.log",
                                            module=dispatcher_module)
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}

    def node_settings(self, name: str) -> dict[str, Any]:
        return combine(node_settings(), {
            "DISPATCHER_ENDPOINT": self.dispatcher.endpoint,
            "DISPATCHER_NODE_NAME": name, "DISPATCHER_NODE_HEADER": NODE_HEADER,
            "LOG_FILE": str(self.workdir / f"{name}.log"),
            "PROGRESS_STATS_FILE": str(self.workdir / f"{name}.stats.json"),
            "FEEDS": {str(self.workdir / f"{name}.items.jl"): {"format": "jsonlines"}},
        }, self.settings)

    def start_node(self, name: str) -> subprocess.Popen[bytes]:
        if name in self.nodes and self.nodes[name].poll() is None:
            raise RuntimeError(f"node {name} is already running")
        proc = subprocess.Popen(crawl_argv(self.spider, self.node_settings(name), self.spider_args),
                                env=crawl_env(), cwd=self.workdir, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.nodes[name] = proc
        return proc

    def stop_node(self, name: str, timeout: float = STOP_GRACE_SECONDS) -> int:
        """Graceful leave: SIGTERM makes Scrapy finish in-flight work; the node hands off and says bye."""
        return stop_process(self.nodes[name], timeout)

    def kill_node(self, name: str) -> None:
        proc = self.nodes[name]
        proc.kill()
        proc.wait()

    def running(self) -> list[str]:
        return [name for name, proc in self.nodes.items() if proc.poll() is None]

    def wait(self, timeout: float) -> bool:
        """Wait for every node to exit (the crawl finished); False on time-out."""
        deadline = time.monotonic() + timeout
        for proc in list(self.nodes.values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                proc.wait(remaining)
            except subprocess.TimeoutExpired:
                return False
        return True

    def status(self) -> dict[str, Any]:
        return self.dispatcher.status()

    def node_stats(self, name: str) -> dict[str, Any]:
        path = self.workdir / f"{name}.stats.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def items(self, name: str) -> list[dict[str, Any]]:
        path = self.workdir / f"{name}.items.jl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        for name in self.running():
            self.stop_node(name)
        self.dispatcher.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pages(state: dict[str, Any]) -> int:
    return sum(int((n.get("stats") or {}).get("response_received_count", 0))
               for n in state.get("nodes", {}).values())


def watch(cluster: Cluster, timeout: float | None = None) -> float:
    """Print a progress line every PROGRESS_INTERVAL until the nodes exit; returns wall seconds."""
    started = last_time = time.monotonic()
    last_pages = 0
    while cluster.running():
        if cluster.wait(PROGRESS_INTERVAL):
            break
        now = time.monotonic()
        try:
            state = cluster.status()
        except Exception as exc:  # the dispatcher may be restarting: say so and go on
            print(f"[cluster] {now - started:6.1f}s  dispatcher not answering: {exc}", flush=True)
            continue
        pages = _pages(state)
        rate = (pages - last_pages) / max(now - last_time, 1e-9)
        last_pages, last_time = pages, now
        alive = sum(1 for n in state["nodes"].values() if n["alive"])
        print(f"[cluster] {now - started:6.1f}s  pages {pages:7d}  {rate:7.1f} pages/s  "
              f"frontier {state['frontier']:7d}  leases {state['leases']:5d}  "
              f"seen {state['seen']:7d}  nodes {alive}", flush=True)
        if timeout is not None and now - started > timeout:
            print("[cluster] time-out: stopping the nodes", flush=True)
            break
    return time.monotonic() - started


def summary(cluster: Cluster, wall: float) -> dict[str, Any]:
    per_node = {name: cluster.node_stats(name) for name in cluster.nodes}
    pages = sum(s.get("response_received_count", 0) for s in per_node.values())
    items = sum(s.get("item_scraped_count", 0) for s in per_node.values())
    state = cluster.status()
    print("\n=== summary ===")
    print(f"wall time           {wall:.1f} s")
    print(f"pages fetched       {pages} ({pages / max(wall, 1e-9):.1f} pages/s overall)")
    for name, s in per_node.items():
        print(f"  {name:16s}  {s.get('response_received_count', 0):7d} pages  "
              f"{s.get('item_scraped_count', 0):7d} items  finish: {s.get('finish_reason', '?')}")
    print(f"items written       {items} (one JSON-lines file per node in {cluster.workdir})")
    print(f"dispatcher          frontier {state['frontier']}, seen {state['seen']}, "
          f"leases open {state['leases']}, finished {state['finished']}, "
          f"CPU {state['cpu_seconds']:.1f} s")
    return {"pages": pages, "items": items, "wall": wall, "state": state}


def demo(args: argparse.Namespace) -> int:
    """Crawl the bundled synthetic web with a local cluster, with progress and a summary."""
    # The test harness, imported here only: `crawlproj cluster` and the scrapyd nodes never need it.
    try:
        from crawlproj_testing.synthweb.model import RFC9309_OUTCOME, WebSpec
        from crawlproj_testing.synthweb.process import SynthWebProcess
    except ImportError as exc:
        print(f"crawlproj demo: needs the test harness of the checkout (pip install -e .): {exc}",
              file=sys.stderr)
        return 2

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="crawlproj-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    spec = WebSpec(seed=args.seed, hosts=args.hosts, min_pages=DEMO_MIN_PAGES, max_pages=DEMO_MAX_PAGES)
    print(f"crawlproj demo: {args.nodes} nodes, synthetic web of {spec.hosts} hosts "
          f"(seed {spec.seed}); work dir {workdir}", flush=True)
    with SynthWebProcess(spec, access_log=workdir / "access.log", hold_seconds=5) as web:
        seeds = workdir / "seeds.txt"
        seeds.write_text("\n".join(web.seed_urls()) + "\n")
        print(f"synthetic web on 127.0.0.1:{web.port}: {sum(h.pages for h in web.web.hosts)} pages",
              flush=True)
        # every host is a seed and the web is closed: follow cross-host links too; the
        # synthetic-web add-on resolves its names (merged with settings.py's ADDONS by crawl_argv)
        # its 5xx and time-out robots.txt never recover: their requests, postponed, end after 30 s
        settings = {**SYNTHWEB_SETTINGS, "DOWNLOAD_TIMEOUT": 3, "BROAD_SCOPE": "any",
                    "ROBOTS_POSTPONE_MAX": 30}
        with Cluster(workdir, seeds, settings=settings,
                     dispatcher_args=("--partitions", str(args.partitions))) as cluster:
            rc, result = run(cluster, args.nodes)
        accesses = web.accesses()
        server_cpu = web.stats()["cpu_seconds"]
        # the nodes obey robots.txt per RFC 9309 (RobotsThrottleMiddleware, on by default)
        truth = web.web.ground_truth(outcome=RFC9309_OUTCOME)
    pages = [(a.host, a.path) for a in accesses if not a.is_robots]
    fetched = set(pages)
    twice = sum(1 for n in Counter(pages).values() if n > 1)
    print(f"HTTP statuses       {dict(sorted(Counter(a.status for a in accesses if not a.is_robots).items()))}")
    print(f"ground truth        {len(truth & fetched)}/{len(truth)} pages reachable and allowed by "
          f"robots.txt (RFC 9309) crawled, "
          f"{len(fetched - truth)} outside it, {twice} fetched more than once (5xx retries)")
    print(f"server CPU          {server_cpu:.1f} s ({100 * server_cpu / max(result['wall'], 1e-9):.1f}% of one core)")
    print(f"logs                {workdir}/*.log, access log {workdir / 'access.log'}")
    if rc == 0 and truth - fetched:
        rc = 1
    return rc


def cluster_command(args: argparse.Namespace) -> int:
    """Run a dispatcher and N nodes on this machine for your seeds."""
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="crawlproj-cluster-"))
    settings = dict(s.split("=", 1) for s in args.set)
    with Cluster(workdir, Path(args.seeds_file) if args.seeds_file else None, spider=args.spider,
                 settings=settings,
                 dispatcher_args=("--partitions", str(args.partitions))) as cluster:
        print(f"work dir {workdir}", flush=True)
        rc, _ = run(cluster, args.nodes)
    return rc


def run(cluster: Cluster, nodes: int) -> tuple[int, dict[str, Any]]:
    """Start ``nodes`` nodes, show progress until they finish (or Ctrl-C stops them gracefully),
    print the summary; (exit code, summary)."""
    print(f"dispatcher at {cluster.dispatcher.endpoint}", flush=True)
    for i in range(nodes):
        cluster.start_node(f"node{i + 1}")
    rc = 0
    try:
        wall = watch(cluster)
    except KeyboardInterrupt:
        print("\n[cluster] Ctrl-C: stopping the nodes gracefully", flush=True)
        rc, wall = 130, 0.0
    for name in cluster.running():
        cluster.stop_node(name)
    return rc, summary(cluster, wall)


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("demo", help=demo.__doc__)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--hosts", type=int, default=DEMO_HOSTS)
    p.add_argument("--seed", type=int, default=DEMO_SEED)
    p.add_argument("--partitions", type=int, default=1024)
    p.add_argument("--workdir", default=None)
    p.set_defaults(func=demo)
    p = sub.add_parser("cluster", help=cluster_command.__doc__)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--seeds-file", default=None, help="one URL a line (else the dispatcher's Redis seeds)")
    p.add_argument("--spider", default="broad")
    p.add_argument("--partitions", type=int, default=1024)
    p.add_argument("--workdir", default=None)
    p.add_argument("-s", "--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a Scrapy setting for every node")
    p.set_defaults(func=cluster_command)

