"""Dispatcher capacity: URLs routed and deduplicated per second, with 1, 8 and 64 simulated nodes.

    .venv/bin/python bench/bench_dispatcher.py [--nodes 1,8,64] [--seconds 6] [--dup 0.9,0.0]

1. Push path in-process (no sockets): decode + validate + dedup + store of push frames of 1000
   wire requests, on one core: all new, all duplicates found in the hot set, all duplicates
   settled by SQLite; with a cProfile of the all-new case (where the time goes).
2. The real service (``python -m crawlproj.dispatcher``) under simulated nodes living in a few
   worker processes (several DEALER sockets each): every leased page pushes LINKS discovered
   links, a share ``dup`` of them already seen (a broad crawl re-discovers most links), then
   acks. Reported: pushed URLs/s (routed + deduplicated), leases/s, the dispatcher's CPU share
   and URLs per dispatcher CPU-second (its one-core capacity; the load generators share the
   machine's cores with it).
Writes bench/results/dispatcher.json.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import os
import pstats
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

import zmq  # noqa: E402

from crawlproj.tools.dispatcher_process import DispatcherProcess  # noqa: E402
from crawlproj.dispatcher.cli import tune_gc  # noqa: E402
from crawlproj.dispatcher.config import Config  # noqa: E402
from crawlproj.dispatcher.core import Node  # noqa: E402
from crawlproj.dispatcher.service import Dispatcher  # noqa: E402
from crawlproj.observability.dispatcher import DispatcherObserver  # noqa: E402
from crawlproj.wire.protocol import UNKNOWN_NODE, decode_from_dispatcher, encode, push_fields  # noqa: E402
from crawlproj.wire.urls import canonicalize, partition_of, politeness_key  # noqa: E402

P = 1024
HOSTS = 20_000
LINKS = 20  # links pushed per leased page
CREDIT = 200  # credit each simulated node keeps outstanding
PUSH_CHUNK = 1000
SEEDS = 2000
WARMUP = 1.5  # seconds before the measured window
WORKERS = 2  # load-generator processes (the machine has few cores)
MICRO_URLS = 200_000
HEARTBEAT = 1.0


class UrlSpace:
    """Synthetic canonical URLs ``http://hN.test/p/M`` with their wire requests, cheaply."""

    def __init__(self, salt: str) -> None:
        self.salt = salt
        self.keys = [f"h{i}.test" for i in range(HOSTS)]
        self.parts = [partition_of(k, P) for k in self.keys]
        self.counter = 0
        self.recent: list[dict[str, Any]] = []
        sample = f"http://{self.keys[7]}/p/{salt}-1"
        assert canonicalize(sample) == sample and politeness_key(sample) == self.keys[7]

    def new(self) -> dict[str, Any]:
        self.counter += 1
        h = self.counter % HOSTS
        url = f"http://{self.keys[h]}/p/{self.salt}-{self.counter}"
        req = {"u": url, "f": hashlib.sha1(url.encode()).digest(), "k": self.keys[h],
               "p": self.parts[h], "d": 2}
        if len(self.recent) < 100_000:
            self.recent.append(req)
        else:
            self.recent[self.counter % 100_000] = req
        return req

    def links(self, n: int, dup: float) -> list[dict[str, Any]]:
        out = []
        rnd = random.random
        recent = self.recent
        for _ in range(n):
            if recent and rnd() < dup:
                out.append(recent[int(rnd() * len(recent))])
            else:
                out.append(self.new())
        return out


# -- worker: simulated nodes ------------------------------------------------------------------------


def worker(endpoint: str, first: int, count: int, dup: float, salt: str) -> None:
    stop = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    space = UrlSpace(salt)
    ctx = zmq.Context()
    socks = []
    poller = zmq.Poller()
    for i in range(first, first + count):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        name = f"bench-{i}"
        s.setsockopt(zmq.ROUTING_ID, name.encode())
        s.connect(endpoint)
        s.send(encode("register", node=name, pid=os.getpid(), host="bench", capacity=CREDIT))
        poller.register(s, zmq.POLLIN)
        socks.append((s, name))
    names = {s: name for s, name in socks}
    last_hb = time.monotonic()
    while not stop:
        for s, _ in poller.poll(100):
            name = names[s]
            while True:
                try:
                    msg = decode_from_dispatcher(s.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
                t = msg["t"]
                if t == "welcome":
                    s.send(encode("pull", node=name, credit=CREDIT))
                elif t == "batch":
                    lids = [lease[0] for lease in msg["leases"]]
                    links = space.links(len(lids) * LINKS, dup)
                    for i in range(0, len(links), PUSH_CHUNK):
                        s.send(encode("push", node=name, **push_fields(links[i:i + PUSH_CHUNK])))
                    s.send(encode("ack", node=name, leases=lids))
                    s.send(encode("pull", node=name, credit=len(lids)))
                elif t == "revoke":
                    s.send(encode("handoff", node=name, partitions=msg["partitions"], state={}))
                elif t == "error" and msg["code"] == UNKNOWN_NODE:
                    s.send(encode("register", node=name, pid=os.getpid(), host="bench",
                                  capacity=CREDIT))
        now = time.monotonic()
        if now - last_hb >= HEARTBEAT:
            last_hb = now
            for s, name in socks:
                s.send(encode("heartbeat", node=name))
    for s, _ in socks:
        s.close(0)
    ctx.term()


# -- measurements ------------------------------------------------------------------------------------


def run_service(nodes: int, dup: float, seconds: float, workdir: Path) -> dict[str, Any]:
    space = UrlSpace("seed")
    seeds = workdir / f"seeds-{nodes}-{dup}.txt"
    seeds.write_text("\n".join(space.new()["u"] for _ in range(SEEDS)) + "\n")
    store = workdir / f"store-{nodes}-{dup}"
    with DispatcherProcess(store, "--partitions", str(P), "--seeds-file", str(seeds),
                           "--heartbeat-interval", "2", "--heartbeat-timeout", "60",
                           "--log-level", "WARNING") as d:
        workers = []
        n_workers = min(WORKERS, nodes)
        per = [nodes // n_workers + (1 if i < nodes % n_workers else 0) for i in range(n_workers)]
        first = 0
        for i, count in enumerate(per):
            workers.append(subprocess.Popen([sys.executable, __file__, "--worker", d.endpoint,
                                             str(first), str(count), str(dup), f"w{nodes}-{i}"]))
            first += count
        try:
            deadline = time.monotonic() + 30
            while sum(1 for n in d.status()["nodes"].values() if n["alive"]) < nodes:
                if time.monotonic() > deadline:
                    raise RuntimeError("simulated nodes did not all register")
                time.sleep(0.1)  # not synchronisation: the poll interval of a deadline-bound wait
            time.sleep(WARMUP)  # let the crawl reach its steady state before measuring
            s0, t0 = d.status(), time.monotonic()
            time.sleep(seconds)  # the measured window
            s1, t1 = d.status(), time.monotonic()
        finally:
            for w in workers:
                w.send_signal(signal.SIGTERM)
            for w in workers:
                w.wait(30)
    wall = t1 - t0
    c0, c1 = s0["counters"], s1["counters"]

    def rate(name: str) -> float:
        return (c1.get(name, 0) - c0.get(name, 0)) / wall

    cpu = s1["cpu_seconds"] - s0["cpu_seconds"]
    pushed = c1.get("pushed", 0) - c0.get("pushed", 0)
    return {
        "nodes": nodes, "dup_share_asked": dup, "seconds": round(wall, 2),
        "pushed_per_s": round(rate("pushed")), "new_per_s": round(rate("new")),
        "duplicates_per_s": round(rate("duplicates")), "leased_per_s": round(rate("leased")),
        "acked_per_s": round(rate("acked")), "dispatcher_cpu_share": round(cpu / wall, 3),
        "pushed_per_cpu_second": round(pushed / cpu) if cpu else None,
        "frontier_end": s1["frontier"], "seen_end": s1["seen"], "memory_rows": s1["memory_rows"],
        "max_rss_mib": round(s1["max_rss_kib"] / 1024, 1),
        "commit_max_ms": round(1000 * s1["store"]["commit_max_seconds"], 1),
        "bad_frames": s1["bad_frames"],
    }


def micro(workdir: Path, urls: int = MICRO_URLS) -> dict[str, Any]:
    """The push path on one core, in-process: handle() of push frames, then commit."""
    space = UrlSpace("micro")
    reqs = [space.new() for _ in range(urls)]
    frames = [encode("push", node="n", **push_fields(reqs[i:i + PUSH_CHUNK]))
              for i in range(0, len(reqs), PUSH_CHUNK)]
    tune_gc()  # as the service process does
    # with the instrument the service runs with (crawlproj dispatcher): its timings are in the path
    disp = Dispatcher(Config(store=str(workdir / "micro-store"), partitions=P),
                      instrument=DispatcherObserver())
    disp.nodes["n"] = Node(name="n", identity=b"n")

    def run() -> float:
        c = time.process_time()
        for f in frames:
            disp._handle([b"n", f])
            disp.frontier.maybe_commit()
        disp.frontier.commit()
        return urls / (time.process_time() - c)

    out: dict[str, Any] = {"urls": urls}
    out["all_new_per_cpu_s"] = round(run())
    out["all_dup_hot_per_cpu_s"] = round(run())
    disp.frontier.seen.clear_hot()
    out["all_dup_sqlite_per_cpu_s"] = round(run())
    # Where the time of the all-new path goes.
    reqs = [space.new() for _ in range(urls)]
    frames = [encode("push", node="n", **push_fields(reqs[i:i + PUSH_CHUNK]))
              for i in range(0, len(reqs), PUSH_CHUNK)]
    prof = cProfile.Profile()
    prof.enable()
    run()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(8)
    out["all_new_profile"] = buf.getvalue().strip().splitlines()[-10:]
    disp.close()
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        endpoint, first, count, dup_share, salt = sys.argv[2:7]
        worker(endpoint, int(first), int(count), float(dup_share), salt)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", default="1,8,64")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--dup", default="0.9,0.0", help="shares of pushed links already seen")
    ap.add_argument("--micro-urls", type=int, default=MICRO_URLS,
                    help="URLs of the in-process push path (each of its passes)")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-dispatcher-"))
    print("push path in-process (one core) ...", flush=True)
    m = micro(workdir, args.micro_urls)
    print(f"  all new            {m['all_new_per_cpu_s']:>10,} URLs per CPU-second")
    print(f"  all dup (hot set)  {m['all_dup_hot_per_cpu_s']:>10,} URLs per CPU-second")
    print(f"  all dup (SQLite)   {m['all_dup_sqlite_per_cpu_s']:>10,} URLs per CPU-second")
    print("  profile of all new (tottime):")
    for line in m["all_new_profile"]:
        print("   ", line)
    runs = []
    header = (f"{'nodes':>5} {'dup':>4} {'pushed/s':>10} {'new/s':>9} {'leased/s':>9} "
              f"{'disp CPU':>8} {'pushed/CPU-s':>12} {'RSS MiB':>8}")
    print("\nservice with simulated nodes:\n" + header, flush=True)
    for dup in [float(x) for x in args.dup.split(",")]:
        for n in [int(x) for x in args.nodes.split(",")]:
            r = run_service(n, dup, args.seconds, workdir)
            runs.append(r)
            print(f"{r['nodes']:>5} {dup:>4} {r['pushed_per_s']:>10,} {r['new_per_s']:>9,} "
                  f"{r['leased_per_s']:>9,} {100 * r['dispatcher_cpu_share']:>7.0f}% "
                  f"{r['pushed_per_cpu_second'] or 0:>12,} {r['max_rss_mib']:>8}", flush=True)
    path = save("dispatcher", {"command": " ".join(sys.argv), "partitions": P, "links": LINKS,
                               "credit": CREDIT, "workers": WORKERS, "micro": m, "runs": runs})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
