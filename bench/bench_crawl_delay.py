"""A focused crawl with Crawl-delay: a few keys of many pages, leases held far past their time-out.

    .venv/bin/python bench/bench_crawl_delay.py                     # the drill: 3 x 1,000 pages, 2 s
    .venv/bin/python bench/bench_crawl_delay.py --pages 60          # shorter (the delay bounds it)

3 keys (``--keys``) of ``--pages`` pages each, every robots.txt with ``Crawl-delay: --delay``,
one node with DISPATCHER_QUEUE_TARGET at its default (it leases most of the crawl at once) and a
dispatcher with ``--lease-timeout`` (60 s). The crawl takes about pages x delay seconds (2,000 s
for the drill), so nearly every lease is held many times its time-out: the node must renew them
(docs/protocol.md, Lease renewal). Reported: wall time, pages, URLs fetched twice (must be 0),
leases the dispatcher expired (must be 0), renewals, the smallest gap between two fetches on a
key (must be >= 0.95 x delay). Writes bench/results/crawl_delay.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import save  # noqa: E402
from politeness_checks import politeness_violations  # noqa: E402

from crawlproj.tools.cluster import Cluster  # noqa: E402
from crawlproj.tools.runner import SYNTHWEB_SETTINGS  # noqa: E402
from crawlproj_testing.synthweb.model import RFC9309_OUTCOME, WebSpec  # noqa: E402
from crawlproj_testing.synthweb.process import SynthWebProcess  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--pages", type=int, default=1000, help="pages per key")
    parser.add_argument("--delay", type=float, default=2.0, help="Crawl-delay of every key")
    parser.add_argument("--lease-timeout", type=float, default=60.0)
    parser.add_argument("--partitions", type=int, default=64)
    args = parser.parse_args(argv)
    spec = WebSpec(seed=6, hosts=args.keys, min_pages=args.pages, max_pages=args.pages,
                   subdomain_share=0.0, special_share=0.0, private_share=0.0,
                   robots_variants=False, crawl_delay=args.delay)
    with tempfile.TemporaryDirectory(prefix="bench-crawl-delay-") as tmp:
        work = Path(tmp)
        with SynthWebProcess(spec, access_log=work / "access.log", hold_seconds=4) as web:
            for host in web.web.hosts:
                web.set_robots(host.name, "crawl_delay")
            seeds = work / "seeds.txt"
            seeds.write_text("\n".join(web.seed_urls()) + "\n")
            settings = {**SYNTHWEB_SETTINGS, "BROAD_SCOPE": "any", "DOWNLOAD_DELAY": 0.0,
                        "LOG_LEVEL": "INFO"}
            with Cluster(work / "cluster", seeds, settings=settings,
                         dispatcher_args=("--partitions", str(args.partitions),
                                          "--lease-timeout", str(args.lease_timeout))) as cluster:
                started = time.monotonic()
                cluster.start_node("n1")
                finished = cluster.wait(args.pages * args.delay * 3 + 300)
                wall = time.monotonic() - started
                counters = cluster.status()["counters"]
                stats = cluster.node_stats("n1")
            accesses = web.accesses()
            truth = web.web.ground_truth(outcome=RFC9309_OUTCOME)
    pages = [a for a in accesses if not a.is_robots]
    counts = Counter((a.host, a.path) for a in pages)
    problems, summary = politeness_violations(accesses, args.delay)
    gaps = [s.min_gap_s for s in summary.values() if s.min_gap_s is not None]
    result = {
        "keys": args.keys, "pages_per_key": args.pages, "crawl_delay": args.delay,
        "lease_timeout": args.lease_timeout, "finished": finished,
        "wall_seconds": round(wall, 1), "pages": len(pages),
        "missing": len(truth - set(counts)), "fetched_twice": sum(1 for n in counts.values() if n > 1),
        "expired_leases": counters.get("expired", 0), "renewed": counters.get("renewed", 0),
        "duplicate_leases": stats.get("dispatcher/duplicate_lease", 0),
        "min_gap_seconds": round(min(gaps), 3) if gaps else None,
        "politeness_violations": len(problems),
        "lease_held_over_timeout": round(wall / args.lease_timeout, 1),
    }
    print(result)
    print(f"saved {save('crawl_delay', result)}")
    ok = (finished and result["fetched_twice"] == 0 and result["expired_leases"] == 0
          and result["missing"] == 0 and not problems)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
