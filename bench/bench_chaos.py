"""The chaos soak: a crawl of a synthetic web of >= 100k pages by 2 nodes while a driver, every
20-40 s, kills -9 a random node or the dispatcher and restarts it, pauses a node (SIGSTOP) past
the dead-node time-out once and continues it, and stops MongoDB for 20 s twice. Then the checks
of :mod:`crawlproj_testing.chaos` (MongoDB == ground truth, no robots.txt or politeness
violation, every refetch explained by a fault and within what it held).

    .venv/bin/python bench/bench_chaos.py                          # full size (~111k pages; long)
    .venv/bin/python bench/bench_chaos.py --hosts 30 --max-pages 200 --interval 5 10 --outage 5

Prints the figures and saves them to bench/results/chaos.json; exit 1 on any violation.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save  # noqa: E402

from crawlproj_testing.chaos import DEAD_TIMEOUT, ChaosRun, Step  # noqa: E402
from crawlproj_testing.synthweb.model import WebSpec  # noqa: E402


def schedule(rng: random.Random, interval: tuple[float, float], faults: int, outage: float) -> list[Step]:
    """Kills every ``interval`` seconds; the pause third and the two MongoDB outages second and
    fifth (they run beside the crawl like the kills, one step at a time)."""
    steps = [Step(rng.choice(("kill_node", "kill_dispatcher")), after_s=rng.uniform(*interval))
             for _ in range(faults)]
    steps.insert(1, Step("mongo_down", after_s=rng.uniform(*interval), seconds=outage))
    steps.insert(2, Step("pause", after_s=rng.uniform(*interval), seconds=2 * DEAD_TIMEOUT))
    steps.insert(4, Step("mongo_down", after_s=rng.uniform(*interval), seconds=outage))
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=400)
    parser.add_argument("--min-pages", type=int, default=100)
    parser.add_argument("--max-pages", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--interval", type=float, nargs=2, default=(20.0, 40.0), metavar=("MIN", "MAX"),
                        help="seconds between two faults (default 20 40)")
    parser.add_argument("--faults", type=int, default=200, help="kills at most (the crawl's end stops them)")
    parser.add_argument("--outage", type=float, default=20.0, help="seconds MongoDB stays down, twice")
    parser.add_argument("--timeout", type=float, default=6 * 3600.0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    spec = WebSpec(seed=args.seed, hosts=args.hosts, min_pages=args.min_pages, max_pages=args.max_pages,
                   special_share=0.0, page_bytes=3000, base_latency_ms=15, slow_host_share=0.0)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crawlproj-chaos-"))
    rng = random.Random(args.seed)
    run = ChaosRun(workdir, spec, nodes=args.nodes, seed=args.seed)
    print(f"chaos soak: {len(run.truth)} pages on {args.hosts} hosts, {args.nodes} nodes, faults every "
          f"{args.interval[0]:g}-{args.interval[1]:g} s, workdir {workdir}", flush=True)
    report = run.run(schedule(rng, tuple(args.interval), args.faults, args.outage), timeout=args.timeout)
    summary = report.summary()
    print(json.dumps(summary, indent=1))
    for line in report.violations[:50]:
        print("VIOLATION", line)
    save("chaos", {"spec": vars(spec), "summary": summary, "violations": report.violations[:200]})
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
