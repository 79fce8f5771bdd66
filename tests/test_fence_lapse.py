"""A node whose fence lapsed registers again and keeps the leases it still has in flight
(docs/protocol.md, "Fenced ownership"): the dispatcher serves none of them again, and their
acks end them; what the node did not name goes back to the frontier and is served again."""

from __future__ import annotations

import os

from crawlproj.tools.dispatcher_process import DispatcherProcess
from crawlproj_testing.simnode import SimNode, drive

URLS = [f"http://site{i % 4}.test/p/{i}" for i in range(40)]


def test_a_register_after_a_lapsed_fence_keeps_what_is_in_flight(tmp_path, zmq_context):
    with DispatcherProcess(tmp_path / "store", "--partitions", "8", "--heartbeat-interval", "0.2",
                           "--heartbeat-timeout", "30") as d:
        node = SimNode(zmq_context, d.endpoint, "n1", capacity=len(URLS))
        try:
            node.register()
            drive([node], lambda: node.registered, 30, crawl=False)
            node.push([node.wire(u) for u in URLS])
            drive([node], lambda: len(node.leases) == len(URLS), 30, crawl=False)
            held = sorted(node.leases)
            in_flight, lost = held[::2], held[1::2]  # the fetches started / a queue it forgot
            lost_urls = {node.leases[rid]["u"] for rid in lost}
            node.leases = {rid: node.leases[rid] for rid in in_flight}
            node.registered = False
            node.send("register", node=node.name, pid=os.getpid(), host="sim",
                      capacity=node.capacity, keep=in_flight)
            # served again: exactly what the register did not keep
            again: dict[int, str] = {}

            def served_again() -> bool:
                again.update((rid, req["u"]) for rid, req in node.leases.items() if rid not in in_flight)
                return set(again.values()) == lost_urls

            drive([node], served_again, 30, crawl=False)
            assert len(again) == len(lost)
            # the kept fetches end with their acks; nothing else is left to serve
            node.ack(in_flight + sorted(again))
            drive([node], lambda: node.finished, 30, crawl=False)
            leased_urls = [url for _, url in node.leased]
            assert len(leased_urls) == len(URLS) + len(lost)
            assert sorted(leased_urls) == sorted(URLS + sorted(lost_urls))
            counters = d.status()["counters"]
            assert counters["returned_restart"] == len(lost)
        finally:
            node.close()
    log = d.log_tail()
    assert f"Node n1 registered again: returning {len(lost)} of its leases, {len(in_flight)} still " \
           "in flight there" in log
