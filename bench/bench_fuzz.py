"""The long fuzz run: many more hostile frames than the tests send, with memory over time.

    .venv/bin/python bench/bench_fuzz.py [--frames 200000] [--decoder-frames 1000000] [--seed 1]

1. Decoders in-process: ``decode_from_node`` and ``decode_from_dispatcher`` on ``--decoder-frames``
   seeded frames each (mutated valid messages of every type, type confusion, random bytes, deep
   nesting, huge declared lengths). Anything but ProtocolError is a failure. Frames/s.
2. The real dispatcher (``python -m crawlproj.dispatcher``): ``--frames`` frames from one DEALER,
   its RSS read every tenth of the run (a leak shows as a line that keeps climbing), then a status
   round trip and an honest simulated node that registers and gets work.

Exit code 1 if a decoder raised something else or the dispatcher died, stopped answering or kept
growing. Writes bench/results/fuzz.json.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

import zmq  # noqa: E402

from crawlproj.tools.dispatcher_process import DispatcherProcess  # noqa: E402
from crawlproj_testing.simnode import SimNode, drive  # noqa: E402
from crawlproj.wire.protocol import ProtocolError, decode_from_dispatcher, decode_from_node, encode  # noqa: E402
from crawlproj_testing.fuzz import (  # noqa: E402
    FrameFuzzer,
    dispatcher_messages,
    fuzz_dispatcher,
    node_messages,
    read_answers,
)

PARTITIONS = 64
SAMPLES = 10  # RSS readings over the dispatcher run
GROWTH_LIMIT_KIB = 128 * 1024  # between the first reading and the last


def bench_decoders(frames: int, seed: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, templates, decode in (
            ("decode_from_node", node_messages("bench", PARTITIONS), decode_from_node),
            ("decode_from_dispatcher", dispatcher_messages("bench", PARTITIONS), decode_from_dispatcher)):
        refused: Counter[str] = Counter()
        crashes: list[str] = []
        started = time.perf_counter()
        for kind, frame in itertools.islice(FrameFuzzer(templates, seed=seed), frames):
            try:
                decode(frame)
            except ProtocolError:
                refused[kind] += 1
            except Exception as exc:  # the finding this benchmark exists for
                crashes.append(f"{kind}: {type(exc).__name__}: {exc}"[:300])
        seconds = time.perf_counter() - started
        results[name] = {"frames": frames, "frames_per_s": round(frames / seconds), "refused": dict(refused),
                         "crashes": crashes[:20], "crash_count": len(crashes)}
        print(f"{name:24s} {frames} frames, {frames / seconds:9.0f} frames/s, refused {sum(refused.values())}, "
              f"other exceptions {len(crashes)}", flush=True)
    return results


def bench_dispatcher(frames: int, seed: int, workdir: Path) -> dict[str, Any]:
    ctx: zmq.Context[Any] = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    states: list[dict[str, Any]] = []

    def keep_state(msg: dict[str, Any]) -> None:
        if msg["t"] == "state":
            states.append(msg["state"])

    with DispatcherProcess(workdir / "store", "--partitions", str(PARTITIONS), "--seeds",
                           "http://seed.fuzz.test/", "--heartbeat-interval", "0.2", "--heartbeat-timeout", "1") as d:
        rss = [d.status()["rss_kib"]]
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, b"fuzzer")
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.connect(d.endpoint)
        stream = iter(FrameFuzzer(node_messages("fuzzer", PARTITIONS), seed=seed))
        started = time.perf_counter()
        sent = refused = statuses = 0
        try:
            for _ in range(SAMPLES):
                run = fuzz_dispatcher(sock, stream, frames // SAMPLES, keep_state)
                sent += run.sent
                refused += run.refused
                statuses += run.decoded["status"] + 1
                sock.send(encode("status"))  # answered after every frame before it
                deadline = time.monotonic() + 120
                while len(states) < statuses and time.monotonic() < deadline:
                    read_answers(sock, keep_state, 1000)
                if len(states) < statuses or not d.running():
                    raise RuntimeError("the dispatcher stopped answering")
                rss.append(states[-1]["rss_kib"])
                print(f"  {sent:8d} frames  RSS {rss[-1]:8d} KiB  bad frames "
                      f"{sum(states[-1]['bad_frames'].values())}", flush=True)
            seconds = time.perf_counter() - started
        finally:
            sock.close(0)
        node = SimNode(ctx, d.endpoint, "honest", capacity=10)
        try:
            node.register()
            drive([node], lambda: node.registered and bool(node.leased), 30, crawl=False, heartbeat_interval=0.2)
        finally:
            node.close()
        final = d.status()
    ctx.term()
    result = {"frames": sent, "frames_per_s": round(sent / seconds), "refused_by_protocol": refused,
              "bad_frames": final["bad_frames"], "rss_kib": rss, "alive": True}
    print(f"dispatcher               {sent} frames, {sent / seconds:9.0f} frames/s, RSS {rss[0]} -> "
          f"{max(rss)} (max) -> {rss[-1]} KiB; an honest node still served", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--decoder-frames", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    decoders = bench_decoders(args.decoder_frames, args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmp:
        dispatcher = bench_dispatcher(args.frames, args.seed, Path(tmp))
    path = save("fuzz", {"seed": args.seed, "decoders": decoders, "dispatcher": dispatcher})
    print(f"results: {path}")
    ok = (all(r["crash_count"] == 0 for r in decoders.values())
          and dispatcher["rss_kib"][-1] - dispatcher["rss_kib"][1] < GROWTH_LIMIT_KIB)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
