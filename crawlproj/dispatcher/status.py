"""Status: nodes' "stats" reports and the dispatcher's "state" map (the answer to "status").

The state map is the service's public snapshot: ``crawlproj top``, the HTTP API and its
Prometheus metrics (through the instrument's last tick) and the tests read it, nothing else.
"""

from __future__ import annotations

import itertools
import resource
import time
from typing import Any

from crawlproj.extensions.drain import DRAIN_LAST_KEY, DRAIN_LAST_WHY

from .core import Core
from .membership import FIELD_MAX_CHARS

STATS_MAX_KEYS = 256  # numbers kept from one node's latest "stats"


class StatusReport(Core):
    def _on_stats(self, identity: bytes, envelope: list[bytes], msg: dict[str, Any]) -> None:
        node = self._known(identity, envelope)
        if node is None:
            return
        stats = msg["stats"]
        if not isinstance(stats, dict):
            self._bad("stats", identity, envelope, "stats must be a map")
            return
        # numbers under short names only: a node's stats go into every "state" answer
        stats = {k: v for k, v in itertools.islice(stats.items(), STATS_MAX_KEYS)
                 if type(k) is str and len(k) <= FIELD_MAX_CHARS and type(v) in (int, float)}
        node.stats = stats
        node.stats_at = time.time()
        self.instrument.node_stats(node.name, stats)

    def _on_status(self, identity: bytes, envelope: list[bytes], msg: dict[str, Any]) -> None:
        self._reply(envelope, "state", state=self.state())

    def state(self) -> dict[str, Any]:
        """The public snapshot: nodes, frontier, leases, counters (what "status" answers)."""
        now_wall, now = time.time(), time.monotonic()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        nodes = {}
        for n in self.nodes.values():
            nodes[n.name] = {
                "alive": n.alive, "leaving": n.leaving, "pid": n.pid, "host": n.host,
                "capacity": n.capacity, "partitions": sorted(n.owned), "owned": len(n.owned),
                "leases": len(n.leases), "credit": n.credit, "leased": n.leased, "acked": n.acked,
                "pushed": n.pushed, "registrations": n.registrations,
                "last_heartbeat_ago": round(now_wall - n.last_heartbeat, 3),
                "last_seen_ago": round(now - n.last_seen, 3),
                "stats": n.stats, "stats_ago": round(now_wall - n.stats_at, 3) if n.stats_at else None,
            }
        fr = self.frontier.snapshot()
        return {
            "epoch": self.epoch, "endpoint": self.endpoint, "partitions": self.P,
            "uptime": round(now_wall - self.started, 3), "finished": self.finished,
            "keep_alive": self.config.keep_alive, "holding": self._holding,
            "frontier": fr["frontier"], "available": fr["available"],
            "memory_rows": fr["memory_rows"], "seen": fr["seen"], "hot_seen": fr["hot_seen"],
            "leases": len(self.leases), **self.postponed_state(),
            "pending_handoffs": len(self.pending),
            "unowned_partitions": sum(1 for o in self.owner if o is None),
            "drain": drain(nodes), "counters": dict(self.counters), "bad_frames": dict(self.bad_frames),
            "messages": dict(self.messages), "nodes": nodes,
            "store": fr["store"], "revisits": self.revisits.snapshot(),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
            "security": self.curve.summary() if self.curve is not None else {"curve": False},
            "observability": self.instrument.summary(),
            **memory_kib(),
        }


def drain(nodes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The live nodes' ``drain/*`` reports (crawlproj.extensions.drain.drain_stats) summed up:
    keys with work, pages, the rate their delays allow, and the key that needs longest
    (``last``: key, node, pages, period, why, eta; None when no node holds work)."""
    keys = pages = 0
    rate = 0.0
    last: dict[str, Any] | None = None
    for name, node in nodes.items():
        stats = node["stats"]
        if not node["alive"] or "drain/keys" not in stats:
            continue
        keys += int(stats["drain/keys"])
        pages += int(stats.get("drain/pages", 0))
        rate += float(stats.get("drain/rate", 0.0))
        eta = float(stats.get("drain/eta", -1.0))
        if eta >= 0 and (last is None or eta > last["eta"]):
            last = {"node": name, "eta": eta, "pages": int(stats.get("drain/last/pages", 0)),
                    "period": float(stats.get("drain/last/period", 0.0)),
                    "key": _named(stats, DRAIN_LAST_KEY), "why": _named(stats, DRAIN_LAST_WHY)}
    return {"keys": keys, "pages": pages, "rate": round(rate, 3), "last": last}


def _named(stats: dict[str, Any], prefix: str) -> str:
    return next((k[len(prefix):] for k in stats if k.startswith(prefix)), "")


def memory_kib() -> dict[str, int]:
    """Current and peak RSS. ru_maxrss would do on its own, but Linux carries it over exec from
    the parent (a benchmark's big parent would show as this process's peak)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return {"rss_kib": int(fields["VmRSS"].split()[0]), "max_rss_kib": int(fields["VmHWM"].split()[0])}
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"rss_kib": peak, "max_rss_kib": peak}
