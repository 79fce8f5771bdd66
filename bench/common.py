"""Shared benchmark plumbing: run a crawl process, measure its CPU and the server's, save results."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
# Scrapy's own cost a page: its defaults, every page of the web as a start URL, one item a page,
# no link followed (bench_suite's CPU-bound web, bench_realhtml's corpus).
FLOOR_RUN = "scrapy_floor_every_page_no_links"


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


def names_arg(parser: argparse.ArgumentParser, option: str, value: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated choice among ``allowed`` (``--runs a,b``); another name stops with one line."""
    names = tuple(value.split(","))
    for name in names:
        if name not in allowed:
            parser.error(f"{option}: expected names among {', '.join(allowed)}, got {name!r}")
    return names


def run_and_save(name: str, run: Callable[[Path], dict[str, Any]], keep: Path | None,
                 markdown: Callable[[dict[str, Any]], str]) -> None:
    """A benchmark's main: print the command, ``run`` in ``keep`` (or a temp directory), save
    ``bench/results/NAME.json`` with the command, print the markdown table and the path."""
    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}", flush=True)
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
        results = run(keep)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            results = run(Path(tmp))
    results["command"] = command
    path = save(name, results)
    print(markdown(results))
    print(f"results: {path}")
