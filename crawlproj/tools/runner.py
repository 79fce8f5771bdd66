"""Start ``scrapy crawl`` processes: one way for the demo, the cluster, the benchmarks and tests;
and stop them: :func:`stop_process`, :class:`StopSignals` (Ctrl-C of a runner)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from crawlproj.addons import SETTINGS_MODULE, merged_addons

#: The test harness's add-on that makes a crawl of the synthetic web work (its names resolve to
#: 127.0.0.1, which the SSRF guard then allows). Named, never imported: the runtime does not
#: depend on crawlproj_testing, and `crawlproj cluster` on a real site never turns it on.
SYNTHWEB_ADDON = "crawlproj_testing.addons.SyntheticWeb"
SYNTHWEB_SETTINGS: dict[str, Any] = {"ADDONS": {SYNTHWEB_ADDON: 900}}


def setting_value(name: str, value: Any) -> str:
    """``value`` as a ``-s NAME=VALUE`` string (JSON for containers; ADDONS merged, see above)."""
    if name == "ADDONS":
        value = merged_addons(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def stop_process(proc: subprocess.Popen[Any], timeout: float) -> int:
    """SIGTERM (a clean shutdown), then SIGKILL if ``proc`` has not exited within ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def crawl_argv(spider: str = "broad", settings: Mapping[str, Any] | None = None,
               spider_args: Mapping[str, Any] | None = None) -> list[str]:
    argv = [sys.executable, "-m", "scrapy", "crawl", spider]
    for name, value in (settings or {}).items():
        argv += ["-s", f"{name}={setting_value(name, value)}"]
    for name, value in (spider_args or {}).items():
        argv += ["-a", f"{name}={value}"]
    return argv


def crawl_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["SCRAPY_SETTINGS_MODULE"] = SETTINGS_MODULE
    env.update(extra or {})
    return env


def start_crawl(spider: str = "broad", settings: Mapping[str, Any] | None = None,
                spider_args: Mapping[str, Any] | None = None, **popen: Any) -> subprocess.Popen[Any]:
    return subprocess.Popen(crawl_argv(spider, settings, spider_args), env=crawl_env(), **popen)


class StopSignals:
    """While installed, SIGINT and SIGTERM raise KeyboardInterrupt (run_nodes stops the nodes on
    the first, forces them on the second); after wind_down() they only say that the stop is under
    way, so the dispatcher, the servers and the summary still get their turn."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.winding = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.winding:
            raise KeyboardInterrupt
        print("[cluster] stopping already: the dispatcher, then the summary", flush=True)

    def wind_down(self) -> None:
        self.winding = True
