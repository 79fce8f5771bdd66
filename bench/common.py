"""Shared benchmark plumbing: run a crawl process, measure its CPU and the server's, save results."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_measured(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
                 server: Any = None, timeout: float = 1800) -> dict[str, float]:
    """Run a process to completion; wall time, its CPU seconds and the synthweb server's."""
    server_cpu0 = server.stats()["cpu_seconds"] if server is not None else 0.0
    cpu0 = child_cpu()
    t0 = time.monotonic()
    subprocess.run(argv, env=env, cwd=cwd, check=True, timeout=timeout,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    result = {"wall_seconds": wall, "cpu_seconds": child_cpu() - cpu0}
    if server is not None:
        result["server_cpu_seconds"] = server.stats()["cpu_seconds"] - server_cpu0
    return result


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                        "platform": platform.platform()}, **data}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=1))
    return path
