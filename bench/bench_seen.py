"""The dispatcher's seen-set alone as it grows: new fingerprints per CPU-second, window by window.

    .venv/bin/python bench/bench_seen.py [--fingerprints 40000000] [--window 2000000] [--filter-mib 32]

Pushes of 1,000 random (all new) fingerprints are looked up and recorded in the frontier's
seen-set; every 20 pushes the transaction commits and, when due, the log is merged into the
buckets (every 200,000 fingerprints by default). Reported per window: fingerprints per
CPU-second and the seconds its merges took: how the cost of dedup grows with the crawl (the
merges' compaction, the Bloom filter's fill). Writes bench/results/seen.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from crawlproj.dispatcher.cli import tune_gc  # noqa: E402
from crawlproj.dispatcher.frontier import Frontier  # noqa: E402
from crawlproj.dispatcher.seen import DEFAULT_FILTER_MIB  # noqa: E402

PUSH = 1000
COMMIT_EVERY = 20  # pushes per transaction


def run(total: int, window: int, filter_mib: int, workdir: Path) -> list[dict[str, float]]:
    tune_gc()  # as the service process does
    fr = Frontier(workdir / "store", 1, filter_mib=filter_mib)
    seen, conn = fr.seen, fr.conn
    windows: list[dict[str, float]] = []
    cpu0, merge0, done, pushes = time.process_time(), 0.0, 0, 0
    conn.execute("BEGIN")
    while done < total:
        fps = [os.urandom(20) for _ in range(PUSH)]
        unknown = seen.unknown(set(fps))
        seen.record([f for f in fps if f in unknown])
        done += PUSH
        pushes += 1
        if pushes % COMMIT_EVERY == 0:
            if seen.merge_due():
                seen.merge()
            conn.execute("COMMIT")
            conn.execute("BEGIN")
        if done % window == 0:
            cpu, merge = time.process_time(), seen.timings.get("merge_seconds", 0.0)
            windows.append({"fingerprints": done, "per_cpu_s": round(window / (cpu - cpu0)),
                            "merge_seconds": round(merge - merge0, 3)})
            print(f"{done / 1e6:6.1f}M  {windows[-1]['per_cpu_s']:>9,} per CPU-second  "
                  f"merges {windows[-1]['merge_seconds']:6.2f} s", flush=True)
            cpu0, merge0 = cpu, merge
    conn.execute("COMMIT")
    fr.close()
    return windows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fingerprints", type=int, default=40_000_000)
    ap.add_argument("--window", type=int, default=2_000_000, help="fingerprints per reported window")
    ap.add_argument("--filter-mib", type=int, default=DEFAULT_FILTER_MIB,
                    help="the Bloom filter's size (the dispatcher's --seen-filter-mib)")
    args = ap.parse_args()
    if args.window % PUSH or args.window <= 0:
        ap.error(f"--window must be a positive multiple of {PUSH}, got {args.window}")
    with tempfile.TemporaryDirectory(prefix="bench-seen-") as tmp:
        windows = run(args.fingerprints, args.window, args.filter_mib, Path(tmp))
    path = save("seen", {"fingerprints": args.fingerprints, "window": args.window,
                         "filter_mib": args.filter_mib, "windows": windows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
