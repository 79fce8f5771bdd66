"""Fuzzing of every decoder, against real processes: the dispatcher and a Scrapy node.

Each run sends >= 10k seeded frames (mutations of valid messages of every type, type confusion,
random bytes, deep nesting, huge declared lengths) and then checks that the receiver still
serves, counted what it refused and kept its memory bounded. ``bench/bench_fuzz.py`` runs the
same for longer.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import zmq
from conftest import wait_until
from hostile_web import HostileWeb

from crawlproj.addons import combine, node_settings
from crawlproj.tools.dispatcher_process import DispatcherProcess
from crawlproj_testing.simnode import SimNode, drive
from crawlproj.wire.protocol import ProtocolError, decode_from_dispatcher, decode_from_node, encode
from crawlproj.tools.runner import SYNTHWEB_SETTINGS, start_crawl
from crawlproj_testing.fuzz import (
    FrameFuzzer,
    dispatcher_messages,
    fuzz_dispatcher,
    node_messages,
    read_answers,
    wire_request,
)

FRAMES = 10_000
PARTITIONS = 16
SEED = 20240601
RSS_GROWTH_LIMIT_KIB = 64 * 1024  # what 10k frames may leave behind (caches fill up; no more)
HEARTBEATS = ("--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.0")
NODE_EXIT_TIMEOUT = 60
BURSTS = 3  # the node's RSS is read after each


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


@pytest.fixture
def dispatcher(tmp_path: Path) -> Iterator[DispatcherProcess]:
    with DispatcherProcess(tmp_path / "store", "--partitions", str(PARTITIONS), *HEARTBEATS,
                           "--seeds", "http://seed.fuzz.test/,http://seed.fuzz.test/a") as d:
        yield d


def test_dispatcher_survives_10k_hostile_frames(dispatcher, zmq_context):
    d = dispatcher
    before = d.status()
    rss_before = before["rss_kib"]
    states: list[dict[str, Any]] = []

    def keep_state(msg: dict[str, Any]) -> None:
        if msg["t"] == "state":
            states.append(msg["state"])

    sock = zmq_context.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.ROUTING_ID, b"fuzzer")
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.connect(d.endpoint)
        run = fuzz_dispatcher(sock, iter(FrameFuzzer(node_messages("fuzzer", PARTITIONS), seed=SEED)),
                              FRAMES, keep_state)
        sock.send(encode("status"))  # the last frame: its answer means every frame was handled
        wait_until(lambda: read_answers(sock, keep_state, 1000) or len(states) > run.decoded["status"],
                   120, "the dispatcher to answer every status after the fuzz")
        state = states[-1]
    finally:
        sock.close(0)
    assert d.running(), "the dispatcher died"
    assert set(run.kinds) == {"mutated", "confused", "random", "deep", "huge"}
    # every frame the protocol refuses is counted as a bad frame (handlers refuse some more)
    refused = sum(state["bad_frames"].values())
    assert refused >= run.refused, (refused, run.refused, state["bad_frames"])
    assert {"undecodable", "oversized"} & set(state["bad_frames"])
    assert state["rss_kib"] - rss_before < RSS_GROWTH_LIMIT_KIB, (rss_before, state["rss_kib"])
    print(f"dispatcher fuzz: {FRAMES} frames, {refused} refused {dict(state['bad_frames'])}, "
          f"RSS {rss_before} -> {state['rss_kib']} KiB")

    # ... and it still serves an honest node to the end of the crawl.
    node = SimNode(zmq_context, d.endpoint, "honest", capacity=10)
    try:
        node.register()
        drive([node], lambda: node.registered, 10, crawl=False, heartbeat_interval=0.2)
        drive([node], lambda: node.finished, 30, links_of=lambda url: [], heartbeat_interval=0.2)
    finally:
        node.close()
    state = d.status()
    assert state["finished"] and state["frontier"] == 0 and state["leases"] == 0


def _local(msg: dict[str, Any], allowed_suffix: str) -> bool:
    """A batch whose every URL is on the test web (a mutated host would mean a real DNS query)."""
    try:
        return all((urlsplit(w["u"]).hostname or "").endswith(allowed_suffix) for _, w in msg["leases"])
    except (TypeError, ValueError, KeyError, AttributeError):
        return False


def hostile_batches(port: int, partitions: int) -> list[dict[str, Any]]:
    """Batches that decode but carry requests a node must refuse or survive (ids 500000+)."""
    good = wire_request(f"http://leaf.hostile.test:{port}/hostile-ok", partitions)
    variants = [
        {"u": 5}, {"k": ["list"]}, {"p": partitions + 7}, {"p": -1}, {"f": b"short"},
        {"cb": "no_such_method"}, {"eb": "__init__x"}, {"m": 42}, {"h": {"X": 5}}, {"h": "headers"},
        {"meta": ["not", "a", "map"]}, {"kw": "not a map"}, {"d": "deep"}, {"pr": "high"},
        {"u": "not a url"}, {"u": "ftp://leaf.hostile.test/x"}, {"b": 12},
    ]
    return [{"t": "batch", "leases": [[500_000 + i, {**good, **v}]]} for i, v in enumerate(variants)]


def test_node_survives_10k_hostile_frames_then_crawls(tmp_path, zmq_context):
    """A real `scrapy crawl` node against a fake dispatcher that sends garbage, then a crawl."""
    router = zmq_context.socket(zmq.ROUTER)
    router.setsockopt(zmq.SNDHWM, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stats_file = tmp_path / "node.stats.json"
    with HostileWeb(tmp_path / "access.jl") as web:
        node = start_crawl(settings={
            **combine(SYNTHWEB_SETTINGS, node_settings()),
            "DISPATCHER_ENDPOINT": f"tcp://127.0.0.1:{port}", "DISPATCHER_NODE_NAME": "fuzzed",
            "DISPATCHER_TIMEOUT": 120, "DISPATCHER_HEARTBEAT_INTERVAL": 0.5,
            "PROGRESS_STATS_FILE": str(stats_file), "LOG_FILE": str(tmp_path / "node.log"),
            "CRAWLPROJ_STATE_DIR": str(tmp_path / "state"), "DOWNLOAD_TIMEOUT": 5,
        }, cwd=tmp_path)
        try:
            assert router.poll(30_000), "the node did not register"
            identity, first = router.recv_multipart()
            assert decode_from_node(first)["t"] == "register"

            def send(mtype: str, **fields: Any) -> None:
                router.send_multipart([identity, encode(mtype, **fields)])

            received: Counter[str] = Counter()
            acked: set[int] = set()

            def receive() -> None:
                while True:
                    try:
                        _, frame = router.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        return
                    msg = decode_from_node(frame)  # what a node sends always decodes
                    received[msg["t"]] += 1
                    if msg["t"] == "ack":
                        acked.update(msg["leases"])

            def pulled() -> bool:
                router.poll(500)
                receive()
                return received["pull"] > 0

            def welcome(epoch: int) -> None:
                # clock: the node's monotonic clock (one per machine) as a fresh heartbeat echo
                send("welcome", node="fuzzed", partitions=PARTITIONS, assigned=list(range(PARTITIONS)),
                     heartbeat_interval=0.5, lease_timeout=600.0, renew_interval=150.0,
                     fence=3600.0, epoch=epoch, clock=time.monotonic())

            def crawl_one(lease_id: int, path: str, epoch: int) -> None:
                """An honest welcome and one page: its ack means every earlier frame was handled."""
                welcome(epoch)
                send("batch", leases=[[lease_id, wire_request(f"http://www.hostile.test:{web.port}{path}",
                                                              PARTITIONS)]])

                def page_acked() -> bool:
                    router.poll(500)
                    receive()
                    return lease_id in acked

                wait_until(page_acked, 60, f"the node to crawl and ack {path}")

            welcome(1)
            wait_until(pulled, 30, "the node to take the welcome and ask for work")
            rss = [rss_kib(node.pid)]

            templates = dispatcher_messages("fuzzed", PARTITIONS, host=f"leaf.hostile.test:{web.port}")
            frames = iter(FrameFuzzer(templates, seed=SEED))
            invalid = sent = 0
            for burst in range(BURSTS):
                for kind, frame in frames:
                    try:
                        msg = decode_from_dispatcher(frame)
                    except ProtocolError:
                        invalid += 1
                    else:
                        # valid after mutation: harmless unless it ends the crawl or leaves the test web
                        if msg["t"] == "finished" or (msg["t"] == "batch" and not _local(msg, ".hostile.test")):
                            continue
                    router.send_multipart([identity, frame])
                    sent += 1
                    if sent % 500 == 0:
                        receive()
                    if sent >= FRAMES * (burst + 1) // BURSTS:
                        break
                for msg in hostile_batches(web.port, PARTITIONS):
                    send("batch", **{k: v for k, v in msg.items() if k != "t"})
                crawl_one(900_000 + burst, f"/sync-{burst}", epoch=1)
                rss.append(rss_kib(node.pid))
            # the honest dispatcher restarted (a new epoch), one more page, then the end
            crawl_one(999_999, "/after-the-fuzz", epoch=2)
            send("finished")
            assert node.wait(NODE_EXIT_TIMEOUT) == 0
        finally:
            if node.poll() is None:
                node.kill()
                node.wait()
            router.close(0)
        requested = {r["path"] for r in web.requests()}
    stats = json.loads(stats_file.read_text())
    assert stats["finish_reason"] == "finished"
    assert "/after-the-fuzz" in requested
    assert stats["dispatcher/bad_frames"] >= invalid
    # hostile leased requests are refused one by one (acked as final), never crash the node
    assert stats["dispatcher/undecodable"] >= 10
    assert {500_000, 500_001} <= acked and {"/sync-0", "/sync-1", "/sync-2"} <= requested
    # bounded: buffers and caches fill during the first burst, later ones only move it up and
    # down (40k frames in 8 bursts measured: +25 MB, then between +27 and +55 MB, not growing)
    assert max(rss) - rss[0] < RSS_GROWTH_LIMIT_KIB, rss
    print(f"node fuzz: {sent} frames ({invalid} invalid), RSS after each burst {rss} KiB")


def test_oversized_node_fields_cannot_break_status(dispatcher, zmq_context):
    """Register and stats fields go into every "state" answer: two nodes with 5 MB host names
    once made it exceed the frame limit, and status failed for everyone."""
    socks = []
    try:
        for name in ("big1", "big2"):
            sock = zmq_context.socket(zmq.DEALER)
            socks.append(sock)
            sock.setsockopt(zmq.ROUTING_ID, name.encode())
            sock.connect(dispatcher.endpoint)
            sock.send(encode("register", node=name, pid={"a": 1}, host="h" * 5_000_000, capacity="c" * 1000))
            sock.send(encode("stats", node=name, stats={
                **{f"s{i}": "v" * 20_000 for i in range(200)}, "x" * 10_000: 1, "pages": 7, "ok": 1.5}))
            assert sock.poll(5000)
            assert decode_from_dispatcher(sock.recv())["t"] == "welcome"
        nodes = wait_until(lambda: (n := dispatcher.status()["nodes"])["big2"]["stats"] and n,
                           10, "the stats to be applied")
    finally:
        for sock in socks:
            sock.close(0)
    assert nodes["big1"]["host"] == "h" * 256 and nodes["big1"]["pid"] is None
    assert nodes["big1"]["capacity"] == "c" * 256
    assert nodes["big2"]["stats"] == {"pages": 7, "ok": 1.5}
