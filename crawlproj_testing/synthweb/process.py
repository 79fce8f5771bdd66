"""Run the synthetic web as a child process and read its access log.

Used by the test fixtures, the benchmarks and ``crawlproj demo``: one way to start it.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from crawlproj.tools.runner import stop_process

from .model import ROBOTS_PATHS, Web, WebSpec


@dataclass(frozen=True)
class Access:
    start_ms: float
    end_ms: float
    host: str
    path: str
    status: int
    node: str

    @property
    def is_robots(self) -> bool:
        return self.path in ROBOTS_PATHS


def read_access_log(path: str | os.PathLike[str]) -> list[Access]:
    entries = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 6:
                continue  # a line still being written
            start, end, host, p, status, node = parts
            entries.append(Access(float(start), float(end), host, p, int(status), node))
    return entries


class SynthWebProcess:
    """A running ``python -m crawlproj_testing.synthweb``; use as a context manager."""

    def __init__(self, spec: WebSpec, access_log: str | os.PathLike[str] | None = None,
                 hold_seconds: float = 30.0, port: int = 0, startup_timeout: float = 30.0,
                 time_scale: float = 0.0, new_session: bool = False):
        self.spec = spec
        self.web = Web(spec)
        self.access_log = Path(access_log) if access_log else None
        args = [sys.executable, "-m", "crawlproj_testing.synthweb", "--port", str(port),
                "--hold-seconds", str(hold_seconds), "--time-scale", str(time_scale)]
        if self.access_log is not None:
            args += ["--access-log", str(self.access_log)]
        args += ["--spec", json.dumps(asdict(spec))]
        # new_session: a terminal's Ctrl-C reaches the caller only, which stops it last
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, start_new_session=new_session)
        self.port = self._read_port(startup_timeout)

    def _read_port(self, timeout: float) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], deadline - time.monotonic())
            if not ready:
                break
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("SYNTHWEB LISTENING "):
                return int(line.rsplit(":", 1)[1])
        self.stop()
        raise RuntimeError(f"synthetic web did not start (exit code {self.proc.poll()})")

    def url(self, host: str, path: str = "/") -> str:
        return f"http://{host}:{self.port}{path}"

    def seed_urls(self, seeds: list[tuple[str, str]] | None = None) -> list[str]:
        return [self.url(h, p) for h, p in (seeds if seeds is not None else self.web.seeds())]

    def control(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as resp:
            return resp.read()

    def stats(self) -> dict[str, float]:
        return json.loads(self.control("/_synthweb/stats"))

    def set_robots(self, host: str, variant: str) -> None:
        self.control(f"/_synthweb/robots?host={host}&variant={variant}")

    def clock(self, set_to: float | None = None, advance: float | None = None) -> float:
        """Web time of a changing web, after setting or advancing it when asked."""
        query = f"?set={set_to}" if set_to is not None else f"?advance={advance}" if advance is not None else ""
        return float(json.loads(self.control(f"/_synthweb/clock{query}"))["now"])

    def history(self, host: str, path: str) -> dict[str, Any]:
        """A page's versions so far: {"period", "now", "versions": [[number, since], ...]}."""
        return json.loads(self.control(f"/_synthweb/history?host={host}&path={path}"))

    def accesses(self) -> list[Access]:
        if self.access_log is None:
            raise RuntimeError("started without an access log")
        return read_access_log(self.access_log)

    def fetched(self) -> Iterator[tuple[str, str]]:
        """(host, path) of every page request in the access log, robots.txt excluded."""
        return ((a.host, a.path) for a in self.accesses() if not a.is_robots)

    def stop(self) -> None:
        stop_process(self.proc, 10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> SynthWebProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
