"""``crawlproj top``: the cluster at a glance in the terminal, once or refreshed (``--watch``).

    crawlproj top --endpoint tcp://127.0.0.1:5570          # asks the dispatcher ("status")
    crawlproj top --http http://127.0.0.1:8080 --watch     # or its HTTP API

(``crawlproj status`` is taken by the scrapyd job status of ``crawlproj.tools.deploy``.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from typing import Any, TextIO

from crawlproj.dispatcher.errors import DispatcherError
from crawlproj.tools.dispatcher_process import request_state

from .timings import parse_report

CLEAR = "\x1b[H\x1b[2J"
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5570"
OPS_SHOWN = ("download", "parse", "item_write", "robots_lookup", "robots_fetch", "dispatcher_rtt")


def fetch_state(endpoint: str | None, http: str | None, timeout: float = 5.0) -> dict[str, Any]:
    if http:
        with urllib.request.urlopen(http.rstrip("/") + "/api/state", timeout=timeout) as resp:
            state: dict[str, Any] = json.load(resp)
        return state
    return request_state(endpoint or DEFAULT_ENDPOINT, timeout)


def _num(v: Any, digits: int = 0) -> str:
    if not isinstance(v, (int, float)):
        return "-"
    return f"{v:,.{digits}f}"


def render(state: dict[str, Any]) -> str:
    obs = state.get("observability") or {}
    nodes = state.get("nodes") or {}
    alive = sum(1 for n in nodes.values() if n.get("alive"))
    pages = sum(int((n.get("stats") or {}).get("response_received_count", 0)) for n in nodes.values())
    lines = [
        f"crawlproj  {state.get('endpoint', '')}  epoch {state.get('epoch')}  up {_num(state.get('uptime'))} s"
        f"{'  FINISHED' if state.get('finished') else ''}",
        f"pages {_num(pages)}  rate {_num(obs.get('rate'), 1)} pages/s  frontier {_num(state.get('frontier'))}"
        f"  leases {_num(state.get('leases'))}  seen {_num(state.get('seen'))}  nodes {alive}/{len(nodes)}"
        f"  dispatcher busy {_num(100 * obs.get('busy', 0))}% stalled {_num(100 * obs.get('stalled', 0))}%"
        f"  CPU {_num(state.get('cpu_seconds'), 1)} s",
        "",
        f"{'node':16s} {'alive':5s} {'pages':>8s} {'pages/s':>8s} {'queued':>7s} {'inflight':>8s} "
        f"{'leases':>6s} {'parts':>5s} {'cpu':>5s}  " + "  ".join(f"{op[:12]:>12s}" for op in OPS_SHOWN),
    ]
    rates = obs.get("node_rates") or {}
    for name, n in sorted(nodes.items()):
        stats = n.get("stats") or {}
        ops = parse_report(stats)["ops"]
        cpu = stats.get("node/cpu")
        cells = [f"{_num(ops.get(op, {}).get('p50'), 1)}/{_num(ops.get(op, {}).get('p99'), 0)}"
                 for op in OPS_SHOWN]
        lines.append(
            f"{name[:16]:16s} {'yes' if n.get('alive') else 'no':5s} "
            f"{_num(stats.get('response_received_count')):>8s} {_num(rates.get(name), 1):>8s} "
            f"{_num(stats.get('queued')):>7s} {_num(stats.get('inflight')):>8s} {_num(n.get('leases')):>6s} "
            f"{_num(n.get('owned')):>5s} {_num(100 * cpu if isinstance(cpu, (int, float)) else None):>4s}%  "
            + "  ".join(f"{c:>12s}" for c in cells))
    lines.append(f"{'':70s}(p50/p99 ms of each node's last report)")
    d_ops = obs.get("ops") or {}
    if d_ops:
        lines.append("dispatcher ms p50/p99: " + "  ".join(
            f"{op} {_num(s.get('p50'), 2)}/{_num(s.get('p99'), 1)}" for op, s in sorted(d_ops.items())))
    if state.get("bad_frames"):
        lines.append(f"bad frames: {state['bad_frames']}")
    return "\n".join(lines)


def command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """The cluster at a glance: rates, queues, leases and latencies per node (once, or --watch)."""
    out = out or sys.stdout
    shown = 0
    while True:
        try:
            screen = render(fetch_state(args.endpoint, args.http, args.timeout))
        except (OSError, DispatcherError) as exc:
            if not args.watch:
                print(f"crawlproj top: {exc}", file=sys.stderr)
                return 1
            screen = f"dispatcher not answering: {exc}"
        if args.watch and out.isatty():
            out.write(CLEAR)
        out.write(screen + "\n")
        out.flush()
        shown += 1
        if not args.watch or (args.count and shown >= args.count):
            return 0
        try:
            time.sleep(args.interval)  # the refresh period of a terminal view
        except KeyboardInterrupt:
            return 0


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("top", help=command.__doc__, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="the dispatcher's ZeroMQ endpoint")
    p.add_argument("--http", default=None, help="use the dispatcher's HTTP API instead")
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (--watch)")
    p.add_argument("--count", type=int, default=0, help="stop after this many refreshes (0: never)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the dispatcher's answer")
    p.set_defaults(func=command)
