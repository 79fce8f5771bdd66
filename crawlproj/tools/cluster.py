"""A local cluster: one dispatcher and N nodes (`scrapy crawl` processes) on this machine.

    crawlproj cluster --nodes 2 --seeds-file seeds.txt      # your seeds, your settings
    crawlproj demo                                          # the bundled synthetic web

Shows live progress (pages/s, frontier, leases, nodes; while the crawl drains, the keys left, the
rate their delays allow and the time left) and prints a summary (crawlproj.tools.report). Every
child runs in a process group of its own, so a Ctrl-C in the terminal reaches this process only:
it stops the nodes gracefully, once, then the dispatcher, and prints the summary with true
figures; a second Ctrl-C forces the nodes down. :class:`Cluster` is also what the tests and
benchmarks use.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from crawlproj.addons import combine, node_settings
from crawlproj.dispatcher.errors import DispatcherError, StartError
from crawlproj.tools.dispatcher_process import DISPATCHER_MODULE, DispatcherProcess
from crawlproj.tools.mongo_server import MongoServer, MongoServerError
from crawlproj.tools.report import Watch, summarize
from crawlproj.tools.runner import SYNTHWEB_SETTINGS, StopSignals, crawl_argv, crawl_env, stop_process

NODE_HEADER = "X-Crawlproj-Node"
STOP_GRACE_SECONDS = 30.0  # a node given SIGTERM gets this long to finish before SIGKILL
PROGRESS_INTERVAL = 2.0
# The demo's synthetic web (a crawlproj_testing.synthweb.model.WebSpec of these).
DEMO_SEED, DEMO_HOSTS, DEMO_MIN_PAGES, DEMO_MAX_PAGES = 1, 120, 15, 400
FORCE_GRACE_SECONDS = 5.0  # after a forced stop (a second Ctrl-C), SIGKILL after this long


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
        self.started = time.monotonic()

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
        # a process group of its own: a terminal's Ctrl-C reaches the runner, which stops it once
        proc = subprocess.Popen(crawl_argv(self.spider, self.node_settings(name), self.spider_args),
                                env=crawl_env(), cwd=self.workdir, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                process_group=0)
        self.nodes[name] = proc
        return proc

    def stop_node(self, name: str, timeout: float = STOP_GRACE_SECONDS) -> int:
        """Graceful leave: SIGTERM makes Scrapy finish in-flight work; the node hands off and says bye."""
        return stop_process(self.nodes[name], timeout)

    def stop_nodes(self, timeout: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM to every running node at once (each finishes its work and hands off), then
        wait; SIGKILL for any still running after ``timeout``. A KeyboardInterrupt while waiting
        (a second Ctrl-C) goes to the caller."""
        running = [self.nodes[name] for name in self.running()]
        for proc in running:
            proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def force_nodes(self) -> None:
        """A second SIGTERM (Scrapy's unclean shutdown), then SIGKILL after a short grace."""
        for name in self.running():
            self.nodes[name].terminate()
        for name in self.running():
            stop_process(self.nodes[name], FORCE_GRACE_SECONDS)

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
        """The node's final stats (its stats file, written when it closed), {} without one."""
        path = self.workdir / f"{name}.stats.json"
        try:
            stats: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return stats

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




def run_nodes(cluster: Cluster, nodes: int, watch: Watch, signals: StopSignals) -> int:
    """Start ``nodes`` nodes and print progress until they finish; on Ctrl-C (or SIGTERM) stop
    them gracefully, on a second one force them. 0, or 130 when interrupted."""
    try:
        for i in range(nodes):
            cluster.start_node(f"node{i + 1}")
        follow(cluster, watch)
        return 0
    except KeyboardInterrupt:
        print(f"\n[cluster] {watch.elapsed():6.1f}s  Ctrl-C: stopping the nodes gracefully "
              "(Ctrl-C again to force)", flush=True)
    try:
        cluster.stop_nodes()
    except KeyboardInterrupt:
        signals.wind_down()
        print(f"[cluster] {watch.elapsed():6.1f}s  second Ctrl-C: forcing the nodes down", flush=True)
        cluster.force_nodes()
    return 130


def follow(cluster: Cluster, watch: Watch) -> None:
    """A progress line every PROGRESS_INTERVAL until every node has exited."""
    while cluster.running():
        if cluster.wait(PROGRESS_INTERVAL):
            break
        try:
            state = cluster.status()
        except DispatcherError as exc:  # the dispatcher may be restarting: say so and go on
            print(f"[cluster] {watch.elapsed():6.1f}s  dispatcher not answering: {exc}", flush=True)
            continue
        print(watch.line(state), flush=True)


def final_figures(cluster: Cluster) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """Each node's final stats (a killed one: its last report) and the dispatcher's state (None
    if it does not answer)."""
    try:
        state: dict[str, Any] | None = cluster.status()
    except DispatcherError:
        state = None
    per_node = {}
    for name in cluster.nodes:
        stats = cluster.node_stats(name)
        if not stats and state is not None:
            stats = {**(state["nodes"].get(name, {}).get("stats") or {}),
                     "finish_reason": "killed (figures of its last report)"}
        per_node[name] = stats
    return per_node, state


def run(cluster: Cluster, nodes: int, mongo: MongoServer | None = None,
        signals: StopSignals | None = None) -> tuple[int, dict[str, Any]]:
    """Start ``nodes`` nodes, show progress until they finish (or Ctrl-C stops them), print the
    summary; (exit code, summary figures). ``signals``: the caller's StopSignals, wound down
    here (its own else)."""
    print(f"dispatcher at {cluster.dispatcher.endpoint}", flush=True)
    if cluster.dispatcher.http_url:
        print(f"status page at {cluster.dispatcher.http_url}/", flush=True)
    watch = Watch()
    with StopSignals() if signals is None else nullcontext(signals) as stops:
        rc = run_nodes(cluster, nodes, watch, stops)
        wall = watch.elapsed()
        stops.wind_down()
        per_node, state = final_figures(cluster)
        where = (f"through MongoPipeline to {mongo.uri}" if mongo is not None
                 else f"one JSON-lines file per node in {cluster.workdir}")
        return summarize(per_node, state, rc, watch, wall, where, mongo, cluster.settings)


def demo(args: argparse.Namespace) -> int:
    """Crawl the bundled synthetic web with a local cluster, items into MongoDB (an embedded
    nx-27017, or MONGO_URI), with progress and a summary."""
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
    with StopSignals() as signals:
        try:
            return _demo(args, workdir, signals, RFC9309_OUTCOME, WebSpec, SynthWebProcess)
        except KeyboardInterrupt:  # before the nodes ran: everything started is stopped again
            print("crawlproj demo: interrupted", file=sys.stderr)
            return 130


def _demo(args: argparse.Namespace, workdir: Path, signals: StopSignals, outcome: Any,
          web_spec: Any, synthweb: Any) -> int:
    spec = web_spec(seed=args.seed, hosts=args.hosts, min_pages=DEMO_MIN_PAGES, max_pages=DEMO_MAX_PAGES)
    print(f"crawlproj demo: {args.nodes} nodes, synthetic web of {spec.hosts} hosts "
          f"(seed {spec.seed}); work dir {workdir}", flush=True)
    try:
        mongo = MongoServer(workdir / "mongo.db", log_path=workdir / "mongo.log")
    except MongoServerError as exc:
        print(f"crawlproj demo: {exc}", file=sys.stderr)
        return 2
    with mongo, synthweb(spec, access_log=workdir / "access.log", hold_seconds=5,
                         new_session=True) as web:
        print(f"MongoDB at {mongo.uri} ({'nx-27017, data in ' + mongo.db if mongo.embedded else 'MONGO_URI'})",
              flush=True)
        seeds = workdir / "seeds.txt"
        seeds.write_text("\n".join(web.seed_urls()) + "\n")
        print(f"synthetic web on 127.0.0.1:{web.port}: {sum(h.pages for h in web.web.hosts)} pages",
              flush=True)
        # every host is a seed and the web is closed: follow cross-host links too; the
        # synthetic-web add-on resolves its names (merged with settings.py's ADDONS by crawl_argv)
        # its 5xx and time-out robots.txt never recover: their requests, postponed, end after 30 s
        settings = {**SYNTHWEB_SETTINGS, "DOWNLOAD_TIMEOUT": 3, "BROAD_SCOPE": "any",
                    "ROBOTS_POSTPONE_MAX": 30, "MONGO_URI": mongo.uri, **demo_collection(mongo)}
        with Cluster(workdir, seeds, settings=settings,
                     dispatcher_args=dispatcher_options(args)) as cluster:
            rc, result = run(cluster, args.nodes, mongo, signals)
        accesses = web.accesses()
        server_cpu = web.stats()["cpu_seconds"]
        # the nodes obey robots.txt per RFC 9309 (RobotsThrottleMiddleware, on by default)
        truth = web.web.ground_truth(outcome=outcome)
    pages = [(a.host, a.path) for a in accesses if not a.is_robots]
    fetched = set(pages)
    twice = sum(1 for n in Counter(pages).values() if n > 1)
    print(f"HTTP statuses       {dict(sorted(Counter(a.status for a in accesses if not a.is_robots).items()))}")
    print(f"ground truth        {len(truth & fetched)}/{len(truth)} pages reachable and allowed by "
          f"robots.txt (RFC 9309) crawled, "
          f"{len(fetched - truth)} outside it, {twice} fetched more than once (5xx retries)")
    if pages:
        last = max((a for a in accesses if not a.is_robots), key=lambda a: a.end_ms)
        print(f"last fetch          http://{last.host}{last.path} by {last.node}")
    print(f"server CPU          {server_cpu:.1f} s ({100 * server_cpu / max(result['wall'], 1e-3):.1f}% of one core)")
    print(f"logs                {workdir}/*.log, access log {workdir / 'access.log'}")
    if rc == 0 and truth - fetched:
        rc = 1
    return rc


def demo_collection(mongo: MongoServer) -> dict[str, str]:
    """A user's MongoDB (MONGO_URI) gets a collection of its own per demo, so that its count is
    this demo's items; the embedded server is new each time and keeps the project's names."""
    return {} if mongo.embedded else {"MONGO_DATABASE": "crawlproj_demo",
                                      "MONGO_COLLECTION": time.strftime("pages_%Y%m%d_%H%M%S")}


def dispatcher_options(args: argparse.Namespace) -> tuple[str, ...]:
    options = ["--partitions", str(args.partitions)]
    if args.http_port is not None:
        options += ["--http-port", str(args.http_port)]
    return (*options, *getattr(args, "dispatcher_options", ()))


def cluster_command(args: argparse.Namespace) -> int:
    """Run a dispatcher and N nodes on this machine for your seeds."""
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="crawlproj-cluster-"))
    settings: dict[str, Any] = dict(s.split("=", 1) for s in args.set)
    if os.environ.get("MONGO_URI") and "MONGO_URI" not in settings:
        settings["MONGO_URI"] = os.environ["MONGO_URI"]
    spider_args = dict(a.split("=", 1) for a in args.arg)
    try:
        mongo = MongoServer(uri=settings["MONGO_URI"]) if settings.get("MONGO_URI") else None
    except MongoServerError as exc:
        print(f"crawlproj cluster: MONGO_URI: {exc}", file=sys.stderr)
        return 2
    try:
        cluster = Cluster(workdir, Path(args.seeds_file) if args.seeds_file else None,
                          spider=args.spider, settings=settings, spider_args=spider_args,
                          dispatcher_args=dispatcher_options(args))
    except StartError as exc:
        if mongo is not None:
            mongo.close()
        print(f"crawlproj cluster: {exc}", file=sys.stderr)
        return 2
    with StopSignals() as signals, cluster:
        print(f"work dir {workdir}", flush=True)
        try:
            rc, _ = run(cluster, args.nodes, mongo, signals)
        finally:
            if mongo is not None:
                mongo.close()
    return rc


def _name_value(text: str) -> str:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return text


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("demo", help=demo.__doc__, description=demo.__doc__)
    p.add_argument("--nodes", type=int, default=2, help="nodes (scrapy crawl processes)")
    p.add_argument("--hosts", type=int, default=DEMO_HOSTS, help="hosts of the synthetic web")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help="random seed of the synthetic web")
    p.add_argument("--partitions", type=int, default=1024, help="the dispatcher's partitions")
    p.add_argument("--workdir", default=None, help="where logs, stats and the MongoDB file go "
                   "(None: a new temporary directory)")
    p.add_argument("--http-port", type=int, default=None,
                   help="serve the dispatcher's status page on this port (0: a free one; None: off)")
    p.set_defaults(func=demo)
    p = sub.add_parser("cluster", help=cluster_command.__doc__,
                       description=cluster_command.__doc__ + " Options after -- go to the "
                       "dispatcher (crawlproj dispatcher --help), e.g. -- --key-by host. "
                       "MONGO_URI in the environment turns the MongoDB pipeline on.")
    p.add_argument("--nodes", type=int, default=2, help="nodes (scrapy crawl processes)")
    p.add_argument("--seeds-file", default=None, metavar="PATH",
                   help="one URL a line (None: the dispatcher's other seeds, e.g. -- --seeds-redis URL)")
    p.add_argument("--spider", default="broad", help="the spider the nodes run")
    p.add_argument("--partitions", type=int, default=1024, help="the dispatcher's partitions")
    p.add_argument("--workdir", default=None,
                   help="where logs and stats go (None: a new temporary directory)")
    p.add_argument("--http-port", type=int, default=None,
                   help="serve the dispatcher's status page on this port (0: a free one; None: off)")
    p.add_argument("-s", "--set", action="append", default=[], metavar="NAME=VALUE", type=_name_value,
                   help="a Scrapy setting for every node (repeatable)")
    p.add_argument("-a", "--arg", action="append", default=[], metavar="NAME=VALUE", type=_name_value,
                   help="a spider argument for every node, e.g. -a scope=domain -a max_depth=3 (repeatable)")
    p.add_argument("dispatcher_options", nargs="*", metavar="-- DISPATCHER OPTION",
                   help="options for the dispatcher, after --")
    p.set_defaults(func=cluster_command)
