"""What `crawlproj cluster` and `crawlproj demo` print: progress lines and the summary.

Progress lines read the dispatcher's "state" (pages, frontier, leases, nodes and the nodes'
drain reports: keys with work left, the rate their delays allow, the time left); the summary
reads the nodes' stats files (true figures after a graceful stop), the dispatcher's last state
and the MongoDB collection, and counts what was refused, by reason.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from crawlproj.extensions.drain import DELAY_REASONS
from crawlproj.tools.mongo_server import MongoServer, mongo_names, mongo_query

#: Stats of a node (and counters of the dispatcher) that count refused requests or seeds:
#: (prefix, what refused it). A prefix ending in "/" is followed by the reason.
NODE_REFUSALS = (
    ("ssrf/refused/", "SSRF guard"),
    ("traps/refused/", "trap guard"),
    ("robots/forbidden/", "robots.txt"),
    ("offsite/filtered", "scope (OffsiteMiddleware)"),
    ("broad/seeds/invalid", "bad seed (spider)"),
    ("dispatcher/bad_url", "bad URL"),
)
DISPATCHER_REFUSALS = (
    ("seeds_invalid", "bad seed (dispatcher)"),
    ("bad_requests", "bad pushed request (dispatcher)"),
)
NOTHING_CRAWLED = 3  # the exit code of a crawl that finished without one item


def refusals(per_node: dict[str, dict[str, Any]], counters: dict[str, Any]) -> Counter[str]:
    """Refused requests and seeds of the whole crawl by "<refused by>: <reason>"."""
    out: Counter[str] = Counter()
    for stats in per_node.values():
        for name, value in stats.items():
            for prefix, who in NODE_REFUSALS:
                if prefix.endswith("/") and name.startswith(prefix):
                    out[f"{who}: {name[len(prefix):]}"] += int(value)
                elif name == prefix:
                    out[who] += int(value)
    for name, who in DISPATCHER_REFUSALS:
        if counters.get(name):
            out[who] += int(counters[name])
    return +out


def pages_of(state: dict[str, Any]) -> int:
    return sum(int((n.get("stats") or {}).get("response_received_count", 0))
               for n in state.get("nodes", {}).values())


def describe_last(last: dict[str, Any]) -> str:
    """The key that needs longest: "KEY (node N): P pages, one each S s, set by WHY"."""
    why = DELAY_REASONS.get(last.get("why", ""), last.get("why") or "?")
    return (f"{last['key']} ({last['node']}): {last['pages']} pages, one each "
            f"{last['period']:.2f} s, set by {why}")


DRAIN_STEADY_LINES = 2


@dataclass
class Watch:
    """Progress lines from successive states; remembers the last key the nodes reported."""

    started: float = field(default_factory=time.monotonic)
    last_time: float = 0.0
    last_pages: int = 0
    last_key: dict[str, Any] | None = None  # the latest drain "last" with work left
    last_key_at: float = 0.0  # seconds into the crawl
    last_seen: int = -1
    steady: int = 0  # lines in a row with pages fetched and no URL discovered

    def line(self, state: dict[str, Any], now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        pages = pages_of(state)
        since = self.last_time or self.started
        rate = (pages - self.last_pages) / max(now - since, 1e-3)
        # pages fetched without a new URL for DRAIN_STEADY_LINES lines: the links are all in (at
        # the start, the seeds' pages are fetched before their links reach the dispatcher)
        self.steady = self.steady + 1 if state["seen"] == self.last_seen and pages > self.last_pages else 0
        self.last_pages, self.last_time, self.last_seen = pages, now, state["seen"]
        alive = sum(1 for n in state["nodes"].values() if n["alive"])
        text = (f"[cluster] {now - self.started:6.1f}s  pages {pages:7d}  {rate:7.1f} pages/s  "
                f"frontier {state['frontier']:7d}  leases {state['leases']:5d}  "
                f"seen {state['seen']:7d}  nodes {alive}")
        drain = state.get("drain") or {}
        last = drain.get("last")
        if last and drain.get("pages"):
            self.last_key, self.last_key_at = last, now - self.started
        if (state.get("available", state["frontier"]) == 0 and drain.get("pages")
                and self.steady >= DRAIN_STEADY_LINES):
            # the dispatcher has nothing left to lease: what the nodes hold is the rest
            allowed = f"{drain['rate']:.1f} pages/s" if drain.get("rate") else "no limit"
            left = max(last["eta"] if last else 0.0, drain["pages"] / rate if rate > 0 else 0.0)
            text += (f"\n[cluster]          draining: {drain['keys']} keys with {drain['pages']} "
                     f"pages left allow {allowed}; about {left:.0f} s left")
            if last:
                text += f"; longest {describe_last(last)}"
        return text

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def node_figures(per_node: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """(pages fetched, items scraped) of all nodes."""
    pages = sum(int(s.get("response_received_count", 0)) for s in per_node.values())
    items = sum(int(s.get("item_scraped_count", 0)) for s in per_node.values())
    return pages, items


def print_summary(per_node: dict[str, dict[str, Any]], state: dict[str, Any] | None, wall: float,
                  watch: Watch, items_where: str, interrupted: bool = False) -> Counter[str]:
    """The summary's common part; returns the refusals counted."""
    pages, items = node_figures(per_node)
    print("\n=== summary ===")
    print(f"wall time           {wall:.1f} s")
    print(f"pages fetched       {pages} ({pages / max(wall, 1e-3):.1f} pages/s overall)")
    for name, s in per_node.items():
        print(f"  {name:16s}  {s.get('response_received_count', 0):7d} pages  "
              f"{s.get('item_scraped_count', 0):7d} items  finish: {s.get('finish_reason', '?')}")
    print(f"items scraped       {items} ({items_where})")
    if state is not None:
        print(f"dispatcher          frontier {state['frontier']}, seen {state['seen']}, "
              f"leases open {state['leases']}, finished {state['finished']}, "
              f"CPU {state['cpu_seconds']:.1f} s")
    else:
        print("dispatcher          not answering: its figures are missing")
    if watch.last_key is not None:
        label = "slowest key left   " if interrupted else "finished last      "
        print(f"{label} {describe_last(watch.last_key)} "
              f"(reported {watch.last_key_at:.0f} s in, {wall - watch.last_key_at:.0f} s before the end)")
    refused = refusals(per_node, (state or {}).get("counters", {}))
    if refused:
        print("refused             " + ", ".join(f"{why} {n}" for why, n in refused.most_common()))
    return refused


def summarize(per_node: dict[str, dict[str, Any]], state: dict[str, Any] | None, rc: int,
              watch: Watch, wall: float, items_where: str, mongo: MongoServer | None,
              settings: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Print the summary; the exit code (``rc``, else NOTHING_CRAWLED when no item was scraped,
    else 1 when MongoDB holds another number of documents than items were scraped)."""
    refused = print_summary(per_node, state, wall, watch, items_where, interrupted=rc == 130)
    pages, items = node_figures(per_node)
    result = {"pages": pages, "items": items, "wall": wall, "state": state,
              "refused": dict(refused), "documents": None}
    if mongo is not None:
        database, collection = mongo_names(settings)
        docs = result["documents"] = mongo.count(database, collection)
        same = "=" if docs == items else "!="
        print(f"MongoDB             {docs} documents in {database}.{collection} {same} {items} items "
              f"scraped ({pages} pages fetched)")
        for line in mongo_query(mongo, database, collection):
            print(f"query it            {line}")
        if docs != items and rc == 0:
            rc = 1
    if rc == 0 and items == 0:
        why = ("every seed was refused (the nodes' WARNING lines name the setting that allows it)"
               if refused else "no seed reached a node")
        print(f"nothing crawled     {why}; exit code {NOTHING_CRAWLED}")
        rc = NOTHING_CRAWLED
    return rc, result
