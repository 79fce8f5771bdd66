"""CURVE on the dispatcher <-> node links, against a real dispatcher, simulated and Scrapy nodes.

Only clients whose public key is in the dispatcher's authorized directory get through: a plain
DEALER and a DEALER with an unlisted key can neither register, pull, push, ack nor ask for the
status, and the dispatcher's frontier and counters do not move; an allowed node crawls normally.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import wait_until
from zmq.utils.monitor import recv_monitor_message

from crawlproj.addons import combine, node_settings
from crawlproj.dispatcher.errors import StartError
from crawlproj.tools.dispatcher_process import DispatcherProcess
from crawlproj_testing.simnode import SimNode, drive, web_links, web_reachable
from crawlproj.wire.protocol import encode
from crawlproj.tools.runner import SYNTHWEB_SETTINGS, start_crawl
from crawlproj.security.curve import ClientKeys, generate
from crawlproj_testing.synthweb.model import RFC9309_OUTCOME, Web, WebSpec
from crawlproj.wire.urls import canonicalize, fingerprint, partition_of

PARTITIONS = 16
HEARTBEATS = ("--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.0")
SMALL_WEB = WebSpec(seed=5, hosts=12, min_pages=4, max_pages=20)
HANDSHAKE_TIMEOUT_MS = 10_000
HANDSHAKE_END = {zmq.EVENT_HANDSHAKE_SUCCEEDED: "ok", zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",
                 zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
                 zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "failed"}


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    out = subprocess.run([sys.executable, "-m", "crawlproj.tools.cli", "keys", str(directory), "n1", "monitor"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    generate(tmp_path / "elsewhere", ["rogue"])  # a valid key pair the dispatcher never heard of
    return directory


def client(keys: Path, name: str) -> ClientKeys:
    return ClientKeys.load(keys / "clients" / f"{name}.key_secret", keys / "dispatcher.key")


def curve_args(keys: Path) -> tuple[str, ...]:
    return ("--curve-secret-key", str(keys / "dispatcher.key_secret"),
            "--curve-authorized-dir", str(keys / "authorized"))


@pytest.fixture
def seeds_and_truth() -> tuple[Web, list[str], set[str]]:
    web = Web(SMALL_WEB)
    seeds = [f"http://{h}{p}" for h, p in web.seeds()]
    return web, seeds, web_reachable(web, seeds)


@pytest.fixture
def dispatcher(tmp_path: Path, keys: Path, seeds_and_truth: Any) -> Iterator[DispatcherProcess]:
    _, seeds, _ = seeds_and_truth
    with DispatcherProcess(tmp_path / "store", "--partitions", str(PARTITIONS), *HEARTBEATS,
                           "--seeds", ",".join(seeds), *curve_args(keys),
                           curve=client(keys, "monitor")) as d:
        yield d


def handshake(sock: zmq.Socket[Any], endpoint: str, *frames: bytes) -> str:
    """Connect ``sock``, queue ``frames`` and wait for the handshake's outcome: ok, auth,
    protocol or failed (the frames go out only after a successful handshake)."""
    monitor = sock.get_monitor_socket()
    try:
        sock.connect(endpoint)
        for frame in frames:
            sock.send(frame)
        while monitor.poll(HANDSHAKE_TIMEOUT_MS):
            event = recv_monitor_message(monitor)["event"]
            if event in HANDSHAKE_END:
                return HANDSHAKE_END[event]
        raise TimeoutError(f"no handshake outcome with {endpoint}")
    finally:
        sock.disable_monitor()
        monitor.close(0)


def unchanged(state: dict[str, Any]) -> dict[str, Any]:
    return {k: state[k] for k in ("frontier", "seen", "leases", "counters", "bad_frames", "nodes")}


def test_keys_command_writes_pairs_and_keeps_existing_ones(keys: Path) -> None:
    assert {p.name for p in keys.iterdir()} == {"dispatcher.key", "dispatcher.key_secret", "authorized", "clients"}
    assert {p.name for p in (keys / "authorized").iterdir()} == {"n1.key", "monitor.key"}
    assert {p.name for p in (keys / "clients").iterdir()} == {"n1.key_secret", "monitor.key_secret"}
    for secret in [keys / "dispatcher.key_secret", *(keys / "clients").iterdir()]:
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    before = (keys / "clients" / "n1.key_secret").read_bytes()
    out = subprocess.run([sys.executable, "-m", "crawlproj.tools.cli", "keys", str(keys), "n1", "n2"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "exists" in out.stdout and "created" in out.stdout
    assert (keys / "clients" / "n1.key_secret").read_bytes() == before
    assert (keys / "authorized" / "n2.key").exists()
    bad = subprocess.run([sys.executable, "-m", "crawlproj.tools.cli", "keys", str(keys), "../escape"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "'../escape'" in bad.stderr


@pytest.mark.parametrize("who", ["plain", "unlisted"])
def test_unauthenticated_peers_get_nothing_and_change_nothing(dispatcher, keys, zmq_context, who):
    d = dispatcher
    before = d.status()
    assert before["security"]["curve"] is True
    sock = zmq_context.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.ROUTING_ID, b"intruder")
        if who == "unlisted":
            ClientKeys.load(keys.parent / "elsewhere" / "clients" / "rogue.key_secret",
                            keys / "dispatcher.key").apply(sock)
        url = canonicalize("http://intruder.test/evil")
        key_part = partition_of("intruder.test", PARTITIONS)
        outcome = handshake(
            sock, d.endpoint,
            encode("register", node="intruder", pid=1, host="h", capacity=100),
            encode("pull", node="intruder", credit=100),
            encode("push", node="intruder", requests=[
                {"u": url, "f": fingerprint(url), "k": "intruder.test", "p": key_part}]),
            encode("ack", node="intruder", leases=list(range(1, 50))),
            encode("status"))
        # no CURVE: ZMTP mechanism mismatch (reported with or without detail); unlisted: ZAP 400
        assert outcome in (("protocol", "failed") if who == "plain" else ("auth",))
        assert not sock.poll(0), "an unauthenticated peer got an answer"
    finally:
        sock.close(0)
    after = d.status()
    assert unchanged(after) == unchanged(before)
    if who == "unlisted":
        assert after["security"]["handshakes_denied"] >= 1


def test_an_allowed_node_crawls_over_curve(dispatcher, keys, seeds_and_truth):
    web, _, truth = seeds_and_truth
    ctx: zmq.Context[Any] = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    n1 = client(keys, "n1")
    for option, value in ((zmq.CURVE_SECRETKEY, n1.secret), (zmq.CURVE_PUBLICKEY, n1.public),
                          (zmq.CURVE_SERVERKEY, n1.server)):
        ctx.setsockopt(option, value)  # every socket of this context is a CURVE client
    node = SimNode(ctx, dispatcher.endpoint, "n1", capacity=10)
    try:
        node.register()
        drive([node], lambda: node.finished, 30, links_of=web_links(web), heartbeat_interval=0.2)
    finally:
        node.close()
        ctx.term()
    assert set(node.acked) == truth
    state = dispatcher.status()
    assert state["finished"] and state["counters"]["acked"] == len(truth)


def test_sighup_reloads_the_authorized_keys(dispatcher, keys, zmq_context):
    generate(keys, ["late"])  # what `crawlproj keys DIR late` does: a new authorized/late.key
    late = client(keys, "late")
    first = zmq_context.socket(zmq.DEALER)
    try:
        late.apply(first)
        assert handshake(first, dispatcher.endpoint) == "auth"  # not read yet
    finally:
        first.close(0)
    os.kill(dispatcher.pid, signal.SIGHUP)
    wait_until(lambda: dispatcher.status()["security"]["authorized_keys"] == 3, 10, "the keys reloaded")
    second = zmq_context.socket(zmq.DEALER)
    try:
        late.apply(second)
        assert handshake(second, dispatcher.endpoint, encode("status")) == "ok"
        assert second.poll(5000)
    finally:
        second.close(0)


def test_bad_curve_options_stop_the_dispatcher_at_start(tmp_path, keys):
    for args, expected in (
            (("--curve-secret-key", str(keys / "dispatcher.key_secret")), "go together"),
            (("--curve-secret-key", str(keys / "dispatcher.key"), "--curve-authorized-dir",
              str(keys / "authorized")), "--curve-secret-key"),
            (("--curve-secret-key", str(keys / "missing"), "--curve-authorized-dir",
              str(keys / "authorized")), "--curve-secret-key"),
            (("--curve-secret-key", str(keys / "dispatcher.key_secret"), "--curve-authorized-dir",
              str(keys / "clients")), "--curve-authorized-dir")):
        with pytest.raises(StartError, match=expected):
            DispatcherProcess(tmp_path / "bad-store", *args, log_path=tmp_path / "bad.log")


def test_scrapy_node_crawls_the_synthetic_web_over_curve(tmp_path, keys, synthweb):
    spec = WebSpec(seed=3, hosts=8, min_pages=5, max_pages=25, robots_variants=False, slow_host_share=0.0)
    web = synthweb(spec)
    with DispatcherProcess(tmp_path / "store", "--partitions", str(PARTITIONS), *HEARTBEATS,
                           "--seeds", ",".join(web.seed_urls()), *curve_args(keys),
                           curve=client(keys, "monitor")) as d:
        node = start_crawl(settings={
            **combine(SYNTHWEB_SETTINGS, node_settings()),
            "DISPATCHER_ENDPOINT": d.endpoint, "DISPATCHER_NODE_NAME": "n1", "BROAD_SCOPE": "any",
            "DISPATCHER_CURVE_SECRET_KEY_FILE": str(keys / "clients" / "n1.key_secret"),
            "DISPATCHER_CURVE_SERVER_KEY_FILE": str(keys / "dispatcher.key"),
            "LOG_FILE": str(tmp_path / "n1.log"), "CRAWLPROJ_STATE_DIR": str(tmp_path / "state"),
        }, cwd=tmp_path)
        try:
            assert node.wait(120) == 0
        finally:
            if node.poll() is None:
                node.kill()
                node.wait()
        state = d.status()
    assert state["finished"] and state["nodes"]["n1"]["acked"] > 0
    pages = {(a.host, a.path) for a in web.accesses() if not a.is_robots}
    assert pages == web.web.ground_truth(outcome=RFC9309_OUTCOME)
