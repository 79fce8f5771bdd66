"""The dispatcher's HTTP server: a JSON API, Prometheus metrics and a live page.

    GET /                 the status page (charts of the series, a table of the nodes), with the
                          state and series of the moment embedded: data on first paint
    GET /api/state        the dispatcher's "state" (as the "status" message answers), last tick
    GET /api/series       the time series; ?since=<epoch seconds> for newer points only, ?limit=N
    GET /metrics          Prometheus text format (prometheus-client, a registry of its own)
    GET /healthz          "ok"

It runs in its own threads and reads only what the dispatcher's loop published at its last tick
(a :class:`Source`: the observer's ``snapshot()`` and series); it never touches the dispatcher's
state.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from crawlproj.politeness.timing import QUANTILES

from .series import Series
from .timings import parse_report

logger = logging.getLogger(__name__)

ASSETS = {"/": ("index.html", "text/html; charset=utf-8"),
          "/index.html": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8")}


INITIAL_MARK = b"<!--initial-state-->"  # where the page gets the data of its first paint


def _asset(name: str) -> bytes:
    return resources.files("crawlproj.observability").joinpath("assets", name).read_bytes()


def page_with_data(page: bytes, observer: Source) -> bytes:
    """The status page with the observer's state and series embedded as ``window.INITIAL``."""
    series = observer.series
    data = {"state": observer.snapshot(),
            "series": {"stride": series.stride, "interval": observer.interval, "points": series.since(0)}}
    text = json.dumps(data, default=str).replace("</", "<\\/")  # never ends the <script> early
    return page.replace(INITIAL_MARK, f"<script>window.INITIAL = {text};</script>".encode())


class Source(Protocol):
    """What the server reads (crawlproj.observability.dispatcher.DispatcherObserver)."""

    series: Series
    interval: float

    def snapshot(self) -> dict[str, Any]: ...


class ClusterCollector:
    """Prometheus metrics from the observer's last snapshot and series point."""

    def __init__(self, observer: Source):
        self.observer = observer

    def collect(self) -> Iterator[Metric]:
        state = self.observer.snapshot()
        last = self.observer.series.last() or {}
        gauges = {
            "frontier_requests": ("Requests waiting in the frontier", state.get("frontier")),
            "leases_open": ("Leased requests not yet acked", state.get("leases")),
            "seen_urls": ("Fingerprints in the seen set", state.get("seen")),
            "nodes_alive": ("Live nodes", last.get("nodes_alive")),
            "pages_per_second": ("Cluster crawl rate at the last tick", last.get("rate")),
            "dispatcher_busy_ratio": ("Share of wall time the dispatcher loop was busy", last.get("busy")),
            "dispatcher_stalled_ratio": ("Share of wall time the dispatcher loop stalled (wall gaps in "
                                         "its loop)", last.get("stalled")),
            "dispatcher_rss_kib": ("Dispatcher resident memory", state.get("rss_kib")),
        }
        for name, (doc, value) in gauges.items():
            if isinstance(value, (int, float)):
                yield GaugeMetricFamily(f"crawlproj_{name}", doc, value=value)
        cpu = state.get("cpu_seconds")
        if isinstance(cpu, (int, float)):
            yield CounterMetricFamily("crawlproj_dispatcher_cpu_seconds", "Dispatcher CPU time", value=cpu)
        counters = CounterMetricFamily("crawlproj_dispatcher_events", "Dispatcher counters", labels=["event"])
        for event, value in sorted((state.get("counters") or {}).items()):
            counters.add_metric([event], value)
        yield counters
        messages = CounterMetricFamily("crawlproj_dispatcher_messages", "Messages by type", labels=["type"])
        for mtype, value in sorted((state.get("messages") or {}).items()):
            messages.add_metric([mtype], value)
        yield messages
        per_node = {
            "pages": GaugeMetricFamily("crawlproj_node_pages", "Pages fetched by the node", labels=["node"]),
            "rate": GaugeMetricFamily("crawlproj_node_pages_per_second", "Node crawl rate", labels=["node"]),
            "queued": GaugeMetricFamily("crawlproj_node_queued", "Leased requests queued on the node", labels=["node"]),
            "inflight": GaugeMetricFamily("crawlproj_node_inflight", "Requests in Scrapy", labels=["node"]),
            "leases": GaugeMetricFamily("crawlproj_node_leases", "Open leases of the node", labels=["node"]),
        }
        timing = GaugeMetricFamily("crawlproj_timing_ms", "Operation latency percentiles over the last "
                                   "report window, milliseconds", labels=["source", "op", "quantile"])
        for name, node in sorted((last.get("nodes") or {}).items()):
            for field, family in per_node.items():
                value = node.get(field)
                if isinstance(value, (int, float)):
                    family.add_metric([name], value)
        account = GaugeMetricFamily("crawlproj_node_account", "The node's time account over the last "
                                    "report window (shares of the wall clock or of the download "
                                    "slots, lag in ms, backlog)", labels=["node", "part", "figure"])
        for name, node in sorted(((state.get("nodes") or {}).items())):
            report = parse_report(node.get("stats") or {})
            for op, summary in report["ops"].items():
                for q in QUANTILES:
                    if q in summary:
                        timing.add_metric([name, op, q], summary[q])
            for part, figures in sorted(report["account"].items()):
                for figure, value in sorted(figures.items()):
                    account.add_metric([name, part, figure], value)
        for op, summary in sorted((last.get("ops") or {}).items()):
            for q in QUANTILES:
                if q in summary:
                    timing.add_metric(["dispatcher", op, q], summary[q])
        yield from per_node.values()
        yield timing
        yield account


class StatusHTTPServer:
    def __init__(self, observer: Source, host: str, port: int):
        self.observer = observer
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ClusterCollector(observer))
        handler = type("Handler", (_Handler,), {"owner": self})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.5},
                                       name="dispatcher-http", daemon=True)

    def start(self) -> str:
        self.thread.start()
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    owner: StatusHTTPServer
    server_version = "crawlproj-dispatcher"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        observer = self.owner.observer
        try:
            if url.path in ASSETS:
                name, ctype = ASSETS[url.path]
                body = _asset(name)
                self._send(200, page_with_data(body, observer) if name == "index.html" else body, ctype)
            elif url.path == "/api/state":
                self._json(observer.snapshot())
            elif url.path == "/api/series":
                since = float(query.get("since", ["0"])[0])
                limit = int(query["limit"][0]) if "limit" in query else None
                series = observer.series
                self._json({"stride": series.stride, "interval": observer.interval,
                            "points": series.since(since, limit)})
            elif url.path == "/metrics":
                self._send(200, generate_latest(self.owner.registry), CONTENT_TYPE_LATEST)
            elif url.path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")
        except ValueError as exc:
            self._send(400, f"bad request: {exc}\n".encode(), "text/plain")

    def _json(self, value: Any) -> None:
        self._send(200, json.dumps(value, default=str).encode(), "application/json")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        logger.debug("HTTP %s", format % args)
