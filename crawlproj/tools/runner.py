"""Start ``scrapy crawl`` processes: one way for the demo, the cluster, the benchmarks and tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Mapping

SETTINGS_MODULE = "crawlproj.settings"

#: Settings that make a crawl of the synthetic web work: its names resolve to 127.0.0.1, which
#: the SSRF guard then allows (SYNTHWEB_RESOLVE_ADDRESS is allowed whenever the suffixes are set).
SYNTHWEB_SETTINGS: dict[str, Any] = {"SYNTHWEB_RESOLVE_SUFFIXES": "test"}


def _setting_value(value: Any) -> str:
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
        argv += ["-s", f"{name}={_setting_value(value)}"]
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
