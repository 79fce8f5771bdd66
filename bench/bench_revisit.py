"""Revisits on the changing synthetic web: freshness of adaptive against fixed, bytes of conditional GET.

    .venv/bin/python bench/bench_revisit.py                 # 3 crawls of 90 s each
    .venv/bin/python bench/bench_revisit.py --seconds 45    # shorter

A real dispatcher and one real node crawl a changing web (``--hosts`` x ``--pages`` pages: 20 %
change every 5 web minutes on average, 20 % every 30, the rest never) whose clock runs
``--scale`` web seconds per real second, three times for ``--seconds`` each:

1. ``adaptive`` (first interval ``--interval``, min ``--min``, max ``--max`` real seconds);
2. ``fixed`` at the same fetch budget: its interval is chosen so that it spends as many fetches
   as adaptive did (the pages' time since their first fetch / revisits of run 1, give or take
   half a fetch per page);
3. the same ``fixed`` with REVISIT_CONDITIONAL_GET off.

Freshness (``Changes.freshness``: share of the time the stored copy equals the live page,
averaged over pages) is measured from the access log, after the first ``--warmup`` seconds;
bytes are the node's ``downloader/response_bytes``. Reported: both freshness figures and their
ratio (adaptive must beat fixed), fetches of each run, bytes with and without conditional GET
and their ratio. Writes bench/results/revisit.json.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from crawlproj.tools.cluster import Cluster  # noqa: E402
from crawlproj.tools.runner import SYNTHWEB_SETTINGS  # noqa: E402
from crawlproj_testing.synthweb.changes import Changes  # noqa: E402
from crawlproj_testing.synthweb.model import RFC9309_OUTCOME, WebSpec  # noqa: E402
from crawlproj_testing.synthweb.process import SynthWebProcess  # noqa: E402

NODE_SETTINGS: dict[str, Any] = {
    **SYNTHWEB_SETTINGS, "BROAD_SCOPE": "any", "DOWNLOAD_TIMEOUT": 5, "DOWNLOAD_DELAY": 0.1,
    "LOG_LEVEL": "INFO", "DISPATCHER_HEARTBEAT_INTERVAL": 0.5, "DISPATCHER_STATS_INTERVAL": 0.5,
}


def spec_of(args: argparse.Namespace) -> WebSpec:
    return WebSpec(seed=11, hosts=args.hosts, min_pages=args.pages, max_pages=args.pages, base_latency_ms=5,
                   slow_host_share=0.0, special_share=0.0, subdomain_share=0.0, page_bytes=4000,
                   robots_variants=False, change_classes=((0.2, 300.0), (0.2, 1800.0)))


def crawl(workdir: Path, spec: WebSpec, scale: float, seconds: float, warmup: float,
          settings: dict[str, Any]) -> dict[str, Any]:
    """One crawl of ``seconds``: page fetches, freshness and bytes."""
    workdir.mkdir(parents=True)
    web = SynthWebProcess(spec, access_log=workdir / "access.log", time_scale=scale)
    try:
        seeds = workdir / "seeds.txt"
        seeds.write_text("\n".join(web.seed_urls()) + "\n")
        cluster = Cluster(workdir / "cluster", seeds, settings={**NODE_SETTINGS, **settings},
                          dispatcher_args=("--partitions", "16"))
        with cluster:
            r0, w0 = time.time(), web.clock()
            cluster.start_node("n1")
            time.sleep(seconds)  # a benchmark of a fixed duration, not a wait for a condition
            r1 = time.time()
            cluster.stop_nodes()
            stats = cluster.node_stats("n1")
        accesses = [a for a in web.accesses() if not a.is_robots and a.start_ms / 1000.0 <= r1]
    finally:
        web.stop()

    def web_time(real: float) -> float:
        return w0 + (real - r0) * scale

    truth = sorted(web.web.ground_truth(outcome=RFC9309_OUTCOME))
    fetches: dict[tuple[str, str], list[float]] = {page: [] for page in truth}
    first: dict[tuple[str, str], float] = {}
    for a in accesses:
        first.setdefault((a.host, a.path), a.start_ms / 1000.0)
        if a.status in (200, 304) and (a.host, a.path) in fetches:
            fetches[(a.host, a.path)].append(web_time(a.end_ms / 1000.0))  # the copy as answered
    changes = Changes(web.web)
    start, end = web_time(r0 + warmup), web_time(r1)
    fresh = {page: changes.freshness(web.web.resolve(*page), times, start, end) for page, times in fetches.items()}
    changing = [f for page, f in fresh.items() if changes.period(web.web.resolve(*page)) is not None]
    return {
        "pages": len(truth), "fetches": len(accesses), "revisits": len(accesses) - len(first),
        # real seconds from each page's first fetch to the end, summed: what a fixed interval
        # divides into revisits (a page gets about span / interval - 1/2 of them)
        "revisit_span": sum(r1 - t for t in first.values()),
        "not_modified": sum(a.status == 304 for a in accesses),
        "freshness": sum(fresh.values()) / len(fresh),
        "freshness_changing_pages": sum(changing) / len(changing) if changing else None,
        "response_bytes": stats.get("downloader/response_bytes"),
        "revisit_stats": {k: v for k, v in stats.items() if k.startswith("revisit/")},
    }


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--pages", type=int, default=10, help="pages per host")
    parser.add_argument("--scale", type=float, default=60.0, help="web seconds per real second")
    parser.add_argument("--seconds", type=float, default=90.0, help="real seconds per crawl")
    parser.add_argument("--warmup", type=float, default=10.0, help="real seconds before freshness counts")
    parser.add_argument("--interval", type=float, default=10.0, help="adaptive's first interval (real s)")
    parser.add_argument("--min", type=float, default=2.0, help="adaptive's minimum interval (real s)")
    parser.add_argument("--max", type=float, default=80.0, help="adaptive's maximum interval (real s)")
    return parser


def command(argv: list[str]) -> str:
    """The command line that runs this benchmark alone with ``argv``."""
    return " ".join(shlex.quote(a) for a in [sys.executable, str(Path(__file__).resolve()), *argv])


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """The three crawls under ``root``, their figures and both ratios."""
    spec = spec_of(args)
    adaptive = crawl(root / "adaptive", spec, args.scale, args.seconds, args.warmup, {
        "REVISIT_POLICY": "adaptive", "REVISIT_INTERVAL": args.interval,
        "REVISIT_MIN_INTERVAL": args.min, "REVISIT_MAX_INTERVAL": args.max})
    interval = adaptive["revisit_span"] / (adaptive["revisits"] + adaptive["pages"] / 2)
    fixed_settings = {"REVISIT_POLICY": "fixed", "REVISIT_INTERVAL": round(interval, 3)}
    fixed = crawl(root / "fixed", spec, args.scale, args.seconds, args.warmup, fixed_settings)
    plain = crawl(root / "fixed-no-conditional", spec, args.scale, args.seconds, args.warmup,
                  {**fixed_settings, "REVISIT_CONDITIONAL_GET": False})
    return {
        "args": vars(args), "fixed_interval": interval, "adaptive": adaptive, "fixed": fixed,
        "fixed_without_conditional_get": plain,
        "freshness_ratio_adaptive_to_fixed": adaptive["freshness"] / fixed["freshness"],
        "bytes_ratio_conditional_to_plain": (fixed["response_bytes"] or 0) / (plain["response_bytes"] or 1),
    }


def summary(result: dict[str, Any]) -> list[str]:
    adaptive, fixed, plain = result["adaptive"], result["fixed"], result["fixed_without_conditional_get"]
    return [
        f"adaptive: freshness {adaptive['freshness']:.3f} (changing pages "
        f"{adaptive['freshness_changing_pages']:.3f}), {adaptive['fetches']} fetches",
        f"fixed {result['fixed_interval']:.2f} s: freshness {fixed['freshness']:.3f} (changing pages "
        f"{fixed['freshness_changing_pages']:.3f}), {fixed['fetches']} fetches",
        f"freshness adaptive / fixed = {result['freshness_ratio_adaptive_to_fixed']:.3f}",
        f"bytes with / without conditional GET = {fixed['response_bytes']} / {plain['response_bytes']} = "
        f"{result['bytes_ratio_conditional_to_plain']:.3f} ({fixed['not_modified']} answers 304)",
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    print(f"command: {command(argv)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-revisit-") as tmp:
        result = run(args, Path(tmp))
    result["command"] = command(argv)
    path = save("revisit", result)
    print("\n".join(summary(result)))
    print(f"results: {path}")
    return 0 if result["freshness_ratio_adaptive_to_fixed"] > 1 else 1


if __name__ == "__main__":
    sys.exit(main())
