"""The ``crawlproj`` command."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from crawlproj.runner import SYNTHWEB_SETTINGS, crawl_argv, crawl_env
from crawlproj.synthweb.model import RFC9309_OUTCOME, WebSpec
from crawlproj.synthweb.process import SynthWebProcess

DEMO_SPEC = WebSpec(seed=1, hosts=120, min_pages=15, max_pages=400)


def demo(args: argparse.Namespace) -> int:
    """Crawl the bundled synthetic web on this machine, with progress and a summary."""
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="crawlproj-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    spec = WebSpec(seed=args.seed, hosts=args.hosts, min_pages=DEMO_SPEC.min_pages,
                   max_pages=DEMO_SPEC.max_pages)
    print(f"crawlproj demo: synthetic web of {spec.hosts} hosts (seed {spec.seed}); work dir {workdir}")
    with SynthWebProcess(spec, access_log=workdir / "access.log", hold_seconds=5) as web:
        truth = web.web.ground_truth(outcome=RFC9309_OUTCOME)
        print(f"synthetic web on 127.0.0.1:{web.port}: {sum(h.pages for h in web.web.hosts)} pages, "
              f"{len(truth)} reachable and allowed by robots.txt (RFC 9309)")
        seeds = workdir / "seeds.txt"
        seeds.write_text("\n".join(web.seed_urls()) + "\n")
        stats_file = workdir / "stats.json"
        settings = {**SYNTHWEB_SETTINGS, "PROGRESS_INTERVAL": 2, "PROGRESS_STATS_FILE": str(stats_file),
                    "LOG_FILE": str(workdir / "crawl.log"), "DOWNLOAD_TIMEOUT": 3,
                    "FEEDS": {str(workdir / "items.jl"): {"format": "jsonlines", "overwrite": True}}}
        started = time.monotonic()
        rc = subprocess.call(crawl_argv("broad", settings, {"seeds": str(seeds)}), env=crawl_env(),
                             cwd=workdir)
        elapsed = time.monotonic() - started
        accesses = web.accesses()
        server_cpu = web.stats()["cpu_seconds"]
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    fetched = {(a.host, a.path) for a in accesses if not a.is_robots}
    statuses = Counter(a.status for a in accesses if not a.is_robots)
    pages = stats.get("response_received_count", 0)
    print("\n=== summary ===")
    print(f"exit code           {rc}")
    print(f"wall time           {elapsed:.1f} s")
    print(f"pages fetched       {pages} ({pages / max(elapsed, 1e-9):.1f} pages/s overall)")
    print(f"items written       {stats.get('item_scraped_count', 0)} -> {workdir / 'items.jl'}")
    print(f"HTTP statuses       {dict(sorted(statuses.items()))}")
    print(f"robots forbidden    {stats.get('robotstxt/forbidden', 0)}")
    print(f"ground truth        {len(truth & fetched)}/{len(truth)} reachable allowed pages crawled; "
          f"{len(fetched - truth)} fetched outside it (Scrapy treats 5xx/unreachable robots.txt as allow-all)")
    print(f"server CPU          {server_cpu:.1f} s ({100 * server_cpu / max(elapsed, 1e-9):.1f}% of one core)")
    print(f"logs                {workdir / 'crawl.log'}, access log {workdir / 'access.log'}")
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crawlproj", description="Distributed broad crawling for Scrapy")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help=demo.__doc__)
    p.add_argument("--hosts", type=int, default=DEMO_SPEC.hosts)
    p.add_argument("--seed", type=int, default=DEMO_SPEC.seed)
    p.add_argument("--workdir", default=None)
    p.set_defaults(func=demo)
    # Services with their own argument parsers: the rest of the command line goes to them.
    services = {
        "synthweb": ("crawlproj.synthweb.server", "serve the synthetic web on 127.0.0.1"),
        "dispatcher": ("crawlproj.dispatcher.server", "run the ZeroMQ dispatcher"),
    }
    for name, (_module, help_text) in services.items():
        sub.add_parser(name, help=help_text, add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command in services:
        module = importlib.import_module(services[args.command][0])
        return int(module.main(rest) or 0)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
