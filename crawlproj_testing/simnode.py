"""A synchronous simulated node: the dispatcher's protocol without Scrapy, for tests and benchmarks.

A :class:`SimNode` is one DEALER (routing id = node name) that registers, asks for credit,
receives batches, "crawls" a leased URL by computing its links with a function (for example
over the link structure of a :class:`crawlproj_testing.synthweb.model.Web`, no HTTP), pushes them as wire
requests built with :func:`crawlproj.wire.protocol.routed_request`, acks, and follows revoke / assign / finished. It
keeps a record of everything it saw so tests can check the dispatcher's guarantees.

:func:`drive` runs several nodes from one :class:`zmq.Poller` until a condition holds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import zmq

from crawlproj.dispatcher.errors import DispatcherError
from crawlproj.wire.protocol import UNKNOWN_NODE, ProtocolError, decode_from_dispatcher, encode, routed_request
from crawlproj.wire.urls import canonicalize
from crawlproj_testing.synthweb.model import Web

PUSH_CHUNK = 1000  # wire requests per push frame
DEFAULT_CAPACITY = 50
STATS_EVERY = 1.0  # seconds between two "stats" messages in drive()

LinksOf = Callable[[str], list[str]]


class SimNode:
    """One simulated node. Not thread-safe; drive it from one thread."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, name: str,
                 capacity: int = DEFAULT_CAPACITY, key_by: str = "domain") -> None:
        self.name = name
        self.capacity = capacity
        self.key_by = key_by
        self.sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTING_ID, name.encode("utf-8"))
        self.sock.connect(endpoint)
        self.partitions = 0
        self.epoch: int | None = None
        self.registered = False
        self.stopped = False  # a "dead" node: drive() leaves it alone
        self.finished = False
        self.owned: set[int] = set()
        self.leases: dict[int, dict[str, Any]] = {}  # held, not yet acked or released
        self.outstanding = 0  # credit asked for and not yet used by a batch
        self.last_heartbeat = 0.0
        self.last_stats = 0.0
        self.welcomes: list[dict[str, Any]] = []
        self.assigns: list[tuple[list[int], dict[Any, Any]]] = []
        self.revokes: list[list[int]] = []
        self.errors: list[str] = []  # the reasons of "error" messages
        self.error_codes: list[str] = []
        self.leased: list[tuple[int, str]] = []  # (lease id, url) of every request received
        self.acked: list[str] = []
        self.violations: list[tuple[int, int]] = []  # (lease id, partition) received unowned
        self.max_batch_over_credit = 0  # > 0 means the dispatcher sent more than asked
        self.state: dict[str, Any] = {"from": name}  # the "politeness state" handed off

    # -- sending -----------------------------------------------------------------------------------

    def send(self, mtype: str, **fields: Any) -> None:
        self.sock.send(encode(mtype, **fields))

    def register(self) -> None:
        self.send("register", node=self.name, pid=os.getpid(), host="sim", capacity=self.capacity)

    def heartbeat(self) -> None:
        self.last_heartbeat = time.monotonic()
        self.send("heartbeat", node=self.name)

    def pull(self, credit: int) -> None:
        self.outstanding += credit
        self.send("pull", node=self.name, credit=credit)

    def wire(self, url: str) -> dict[str, Any]:
        """The wire request of ``url``, as a node computes it (canonical URL, fp, key, partition)."""
        return routed_request(url, self.partitions, self.key_by)

    def push(self, requests: list[dict[str, Any]]) -> None:
        for start in range(0, len(requests), PUSH_CHUNK):
            self.send("push", node=self.name, requests=requests[start:start + PUSH_CHUNK])

    def ack(self, leases: list[int]) -> None:
        for lid in leases:
            req = self.leases.pop(lid, None)
            if req is not None:
                self.acked.append(req["u"])
        self.send("ack", node=self.name, leases=leases)

    def release(self, leases: list[int]) -> None:
        for lid in leases:
            self.leases.pop(lid, None)
        self.send("release", node=self.name, leases=leases)

    def send_stats(self, **stats: float) -> None:
        self.last_stats = time.monotonic()
        self.send("stats", node=self.name, stats={"leased": len(self.leased),
                                                  "acked": len(self.acked), **stats})

    def bye(self) -> None:
        """Graceful leave: give back queued leases, hand off every partition, then bye."""
        if self.leases:
            self.release(list(self.leases))
        if self.owned:
            parts = sorted(self.owned)
            self.owned.clear()
            self.send("handoff", node=self.name, partitions=parts, state=self.handoff_state(parts))
        self.send("bye", node=self.name)
        self.registered = False

    def handoff_state(self, partitions: list[int]) -> dict[str, Any]:
        return {**self.state, "partitions": partitions}

    # -- receiving ---------------------------------------------------------------------------------

    def receive(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """Handle every message waiting (waiting up to ``timeout`` for the first)."""
        handled: list[dict[str, Any]] = []
        if not self.sock.poll(int(timeout * 1000), zmq.POLLIN):
            return handled
        while True:
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return handled
            handled.append(self.handle(frame))

    def handle(self, frame: bytes) -> dict[str, Any]:
        try:
            msg = decode_from_dispatcher(frame)
        except ProtocolError as exc:
            raise DispatcherError(f"{self.name}: bad frame from the dispatcher: {exc}") from exc
        mtype = msg["t"]
        if mtype == "welcome":
            self.welcomes.append(msg)
            self.partitions = msg["partitions"]
            self.epoch = msg["epoch"]
            self.owned = set(msg["assigned"])
            self.outstanding = 0  # the dispatcher starts this node's credit from zero
            self.registered = True
        elif mtype == "batch":
            leases = msg["leases"]
            over = len(leases) - self.outstanding
            self.max_batch_over_credit = max(self.max_batch_over_credit, over)
            self.outstanding -= len(leases)
            for lid, req in leases:
                if req["p"] not in self.owned:
                    self.violations.append((lid, req["p"]))
                self.leases[lid] = req
                self.leased.append((lid, req["u"]))
        elif mtype == "assign":
            self.owned.update(msg["partitions"])
            self.assigns.append((msg["partitions"], msg["state"]))
        elif mtype == "revoke":
            parts = set(msg["partitions"])
            self.revokes.append(sorted(parts))
            self.owned -= parts
            queued = [lid for lid, req in self.leases.items() if req["p"] in parts]
            if queued:
                self.release(queued)
            self.send("handoff", node=self.name, partitions=sorted(parts),
                      state=self.handoff_state(sorted(parts)))
        elif mtype == "finished":
            self.finished = True
        elif mtype == "heartbeat":
            self.epoch = msg["epoch"]
        elif mtype == "error":
            self.errors.append(msg["reason"])
            self.error_codes.append(msg["code"])
            if msg["code"] == UNKNOWN_NODE and self.registered and not self.stopped:
                # The dispatcher restarted: forget partitions and leases, register again.
                self.owned.clear()
                self.leases.clear()
                self.outstanding = 0
                self.registered = False
                self.register()
        return msg

    # -- behaviour ---------------------------------------------------------------------------------

    def crawl(self, links_of: LinksOf, limit: int | None = None) -> int:
        """Crawl held leases: push each page's links first, then ack it. Returns how many."""
        done = list(self.leases.items())[:limit]
        if not done:
            return 0
        discovered: list[dict[str, Any]] = []
        for _, req in done:
            discovered.extend(self.wire(u) for u in links_of(req["u"]))
        if discovered:
            self.push(discovered)
        self.ack([lid for lid, _ in done])
        return len(done)

    def top_up(self) -> None:
        """Keep credit outstanding at ``capacity`` minus what is held."""
        room = self.capacity - self.outstanding - len(self.leases)
        if self.registered and room >= max(1, self.capacity // 2):
            self.pull(room)

    def close(self) -> None:
        self.sock.close(0)


def web_links(web: Web) -> LinksOf:
    """Links of a synthetic-web URL ``http://host/path`` (a redirect's target; none for leaves)."""

    def links_of(url: str) -> list[str]:
        rest = url.split("://", 1)[1]
        host, _, path = rest.partition("/")
        page = web.resolve(host, "/" + path)
        if page is None:
            return []
        if page.redirect_to is not None:
            return [f"http://{host}{page.redirect_to}"]
        return [f"http://{h}{p}" for h, p in page.links]

    return links_of


def web_reachable(web: Web, seeds: list[str]) -> set[str]:
    """Every canonical URL reachable from ``seeds`` through :func:`web_links` (robots ignored)."""
    links_of = web_links(web)
    seen = {canonicalize(u) for u in seeds}
    todo = list(seen)
    while todo:
        url = todo.pop()
        for nxt in links_of(url):
            c = canonicalize(nxt)
            if c not in seen:
                seen.add(c)
                todo.append(c)
    return seen


def drive(nodes: list[SimNode], until: Callable[[], bool], timeout: float,
          links_of: LinksOf | None = None, heartbeat_interval: float = 0.5,
          crawl: bool = True, exclusive: bool = True, poll: float = 0.05) -> None:
    """Run ``nodes`` (not stopped ones) until ``until()`` holds; TimeoutError after ``timeout``.

    Each round: handle what arrived, heartbeat when due, crawl held leases (when ``links_of`` is
    given and ``crawl``), top up credit. With ``exclusive``, fail as soon as two running nodes
    believe they own the same partition.
    """
    deadline = time.monotonic() + timeout
    poller = zmq.Poller()
    for node in nodes:
        poller.register(node.sock, zmq.POLLIN)
    while True:
        if until():
            return
        now = time.monotonic()
        if now >= deadline:
            raise TimeoutError(f"nodes did not reach the condition within {timeout} s")
        events = dict(poller.poll(int(poll * 1000)))
        running = [n for n in nodes if not n.stopped]
        for node in running:
            if node.sock in events:
                node.receive()
        if exclusive:
            check_exclusive(running)
        now = time.monotonic()
        for node in running:
            if not node.registered:
                continue
            if now - node.last_heartbeat >= heartbeat_interval:
                node.heartbeat()
            if now - node.last_stats >= STATS_EVERY:
                node.send_stats()
            if crawl and links_of is not None and node.registered:
                node.crawl(links_of)
            node.top_up()


def check_exclusive(nodes: list[SimNode]) -> None:
    owners: dict[int, str] = {}
    for node in nodes:
        for p in node.owned:
            other = owners.setdefault(p, node.name)
            if other != node.name:
                raise AssertionError(f"partition {p} owned by {other} and {node.name} at once")
