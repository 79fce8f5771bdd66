"""``python -m fault_web --spec JSON [--access-log PATH]``: the synthetic web with faults that
start at run time (test-only; tests/ on PYTHONPATH), for the observability drills.

``GET /_synthweb/fault?latency_ms=L&ramp_s=R`` (on any host): from now on every page answers up
to L ms later, the extra growing linearly over R seconds (sites answering slower and slower).
``GET /_synthweb/fault?robots_ms=M``: a robots.txt of a host first asked from now on answers
M ms late, every time (slow robots.txt on new hosts). ``GET /_synthweb/fault?robots_status=S``:
a robots.txt of a host first asked from now on answers status S, every time (503: robots.txt
unreachable on new hosts). Faults add up; nothing else changes.
:class:`FaultWeb` starts it like crawlproj_testing's SynthWebProcess.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from crawlproj_testing.synthweb.model import ROBOTS_PATHS, Web, WebSpec
from crawlproj_testing.synthweb.process import SynthWebProcess
from crawlproj_testing.synthweb.render import Rendered, http_bytes
from crawlproj_testing.synthweb.server import HTTPProtocol, SynthWeb
from crawlproj_testing.synthweb.server import serve as synthweb_serve

FAULT_PATH = "/_synthweb/fault"


class FaultySite(SynthWeb):
    def __init__(self, *args: object, **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.latency_ms = 0.0
        self.ramp_s = 0.0
        self.slow_since = 0.0
        self.robots_ms = 0.0
        self.robots_seen: set[str] = set()  # hosts asked for robots.txt before that fault
        self.slow_robots: set[str] = set()  # hosts first asked after
        self.robots_status = 0
        self.answered_robots: set[str] = set()  # hosts asked for robots.txt before that fault
        self.failing_robots: set[str] = set()  # hosts first asked after

    def control(self, path: str, target: str) -> tuple[int, bytes]:
        if path != FAULT_PATH:
            return super().control(path, target)
        query = parse_qs(urlsplit(target).query)
        if "latency_ms" in query:
            self.latency_ms = float(query["latency_ms"][0])
            self.ramp_s = float(query.get("ramp_s", ["0"])[0])
            self.slow_since = time.monotonic()
        if "robots_ms" in query:
            self.robots_ms = float(query["robots_ms"][0])
        if "robots_status" in query:
            self.robots_status = int(query["robots_status"][0])
        return 200, http_bytes(Rendered(200, (), b"ok"))

    def failed_robots(self, host: str, path: str) -> bytes | None:
        """The answer of a failing robots.txt, or None (the web's own answer)."""
        if path not in ROBOTS_PATHS:
            return None
        if not self.robots_status:
            self.answered_robots.add(host)
            return None
        if host not in self.answered_robots:
            self.failing_robots.add(host)
        if host not in self.failing_robots:
            return None
        return http_bytes(Rendered(self.robots_status, (("Content-Type", "text/plain"),), b"try later"))

    def extra_delay(self, host: str, path: str) -> float:
        """Seconds the fault adds to this answer."""
        if path in ROBOTS_PATHS:
            if not self.robots_ms:
                self.robots_seen.add(host)
                return 0.0
            if host not in self.robots_seen:
                self.slow_robots.add(host)
            return self.robots_ms / 1000.0 if host in self.slow_robots else 0.0
        if not self.latency_ms or path.startswith("/_synthweb/"):
            return 0.0
        grown = 1.0 if self.ramp_s <= 0 else min(1.0, (time.monotonic() - self.slow_since) / self.ramp_s)
        return self.latency_ms * grown / 1000.0


class FaultyProtocol(HTTPProtocol):
    site: FaultySite

    def _send(self, data: bytes, start: float, host: str, path: str, status: int, node: str,
              delayed: bool = False) -> None:
        if not delayed and (failed := self.site.failed_robots(host, path)) is not None:
            data, status = failed, self.site.robots_status
        extra = 0.0 if delayed else self.site.extra_delay(host, path)
        if extra > 0:
            self.busy = True
            asyncio.get_running_loop().call_later(extra, self._send, data, start, host, path, status,
                                                  node, True)
            return
        super()._send(data, start, host, path, status, node)


async def serve(web: Web, port: int, access_log: str | None) -> None:
    await synthweb_serve(web, "127.0.0.1", port, access_log, 2.0, site_class=FaultySite,
                         protocol=FaultyProtocol)


class FaultWeb(SynthWebProcess):
    """The faulty synthetic web as a child process (the SynthWebProcess API, plus faults)."""

    def __init__(self, spec: WebSpec, access_log: str | None = None, startup_timeout: float = 30.0):
        self.spec = spec
        self.web = Web(spec)
        self.access_log = Path(access_log) if access_log else None
        args = [sys.executable, "-m", "fault_web", "--spec", json.dumps(asdict(spec))]
        if access_log:
            args += ["--access-log", access_log]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        self.port = self._read_port(startup_timeout)

    def fault(self, **params: float) -> None:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{FAULT_PATH}?{query}", timeout=10) as resp:
            resp.read()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fault_web")
    parser.add_argument("--spec", required=True, help="the WebSpec as JSON")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--access-log", default=None)
    args = parser.parse_args(argv)
    asyncio.run(serve(Web(WebSpec(**json.loads(args.spec))), args.port, args.access_log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
