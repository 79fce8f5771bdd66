"""Every crawlproj setting is validated at start: a bad value stops `scrapy crawl broad` at once,
with the setting's name, the value and what is expected on stderr.

One table, one real ``scrapy crawl broad`` per row (a few at a time). Some components exist only
when enabled: DISPATCHER_* rows run with the DispatcherScheduler, MONGO_* rows with a MONGO_URI
(nothing listens there: validation comes before any connection).
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from crawlproj.addons import node_settings
from crawlproj.tools.runner import SYNTHWEB_SETTINGS, crawl_argv, crawl_env

SCHEDULER = {**node_settings(),
             "DISPATCHER_ENDPOINT": "tcp://127.0.0.1:9"}
MONGO = {"MONGO_URI": "mongodb://127.0.0.1:9/"}
START_TIMEOUT = 60  # seconds for a crawl to fail; they take about one
WORKERS = 3

# (setting, bad value, what the message shows of the value (default: the value), settings that
# bring its component to life)
Row = tuple[str, str, str | None, dict[str, Any]]
ROWS: list[Row] = [
    ("SYNTHWEB_RESOLVE_SUFFIXES", "te st", "'te st'", SYNTHWEB_SETTINGS),  # the test harness's add-on
    ("SYNTHWEB_RESOLVE_ADDRESS", "localhost", None, SYNTHWEB_SETTINGS),
    ("RECENT_LINKS_SIZE", "0", None, {}),
    ("RECENT_LINKS_SIZE", "lots", None, {}),
    ("BROAD_SCOPE", "everything", None, {}),
    ("BROAD_ALLOWED_DOMAINS", "http://a.example/", None, {}),
    ("BROAD_ALLOW", "(unclosed", None, {}),
    ("BROAD_DENY", "[z-a]", None, {}),
    ("BROAD_ITEM_HEADERS", "Content Type:", None, {}),
    ("BROAD_REDIS_URL", "http://127.0.0.1:6379/0", None, {}),
    ("BROAD_REDIS_START_URLS_KEY", "%(nope)s:start_urls", None, {}),
    ("PROGRESS_INTERVAL", "-1", None, {}),
    ("PROGRESS_INTERVAL", "often", None, {}),
    ("PROGRESS_STATS_FILE", "/dev/null/stats.json", None, {}),
    ("DISPATCHER_ENDPOINT", "dispatcher:5570", None, SCHEDULER),
    ("DISPATCHER_NODE_NAME", "a/b", None, SCHEDULER),
    ("DISPATCHER_NODE_HEADER", "X Node:", None, SCHEDULER),
    ("DISPATCHER_QUEUE_TARGET", "0", None, SCHEDULER),
    ("DISPATCHER_PUSH_BATCH", "many", None, SCHEDULER),
    ("DISPATCHER_FLUSH_INTERVAL", "0", None, SCHEDULER),
    ("DISPATCHER_HEARTBEAT_INTERVAL", "-1", None, SCHEDULER),
    ("DISPATCHER_TIMEOUT", "soon", None, SCHEDULER),
    ("DISPATCHER_STATS_INTERVAL", "0", None, SCHEDULER),
    ("DISPATCHER_REPLAY_SECONDS", "-5", None, SCHEDULER),
    ("DISPATCHER_HANDOFF_TIMEOUT", "0", None, SCHEDULER),
    ("DISPATCHER_CURVE_SECRET_KEY_FILE", "/nonexistent/n1.key_secret", None,
     {**SCHEDULER, "DISPATCHER_CURVE_SERVER_KEY_FILE": "/nonexistent/dispatcher.key"}),
    ("DISPATCHER_CURVE_SERVER_KEY_FILE", "/nonexistent/dispatcher.key", None, SCHEDULER),
    ("POLITENESS_KEY", "ip", None, {}),
    ("ROBOTS_THROTTLE_ENABLED", "maybe", None, {}),
    ("ROBOTS_THROTTLE_DELAY", "-1", None, {}),
    ("ROBOTS_THROTTLE_KEY_DELAYS", '{"a.test": -1}', "-1", {}),
    ("ROBOTS_THROTTLE_ADAPTIVE", "sometimes", None, {}),
    ("ROBOTS_THROTTLE_ADAPTIVE_FACTOR", "0", None, {}),
    ("ROBOTS_THROTTLE_ADAPTIVE_MAX_DELAY", "-1", None, {}),
    ("ROBOTS_THROTTLE_MEMORY", "0", None, {}),
    ("ROBOTS_CRAWL_DELAY_MAX", "-1", None, {}),
    ("ROBOTS_CACHE_TTL", "100000", None, {}),
    ("ROBOTS_CACHE_MEMORY", "none", None, {}),
    ("ROBOTS_RETRY_DELAY", "0", None, {}),
    ("ROBOTS_RETRY_MAX_DELAY", "1", None, {}),
    ("ROBOTS_HOLD_TIME", "-1", None, {}),
    ("ROBOTS_FALLBACK_AFTER", "-1", None, {}),
    ("ROBOTS_FETCH_TIMEOUT", "0", None, {}),
    ("ROBOTS_POSTPONE_MAX", "-1", None, {}),
    ("ROBOTS_STATE_FILE", "/dev/null/politeness.sqlite3", None, {}),
    ("ROBOTS_STORE_FLUSH_INTERVAL", "0", None, {}),
    ("CRAWLPROJ_STATE_DIR", "/dev/null/state", None, {}),
    ("SSRF_ENABLED", "perhaps", None, {}),
    ("SSRF_ALLOWED_NETWORKS", "10.0.0.0/33", None, {}),
    ("SSRF_BLOCKED_NETWORKS", "intranet", None, {}),
    ("TRAP_GUARD_ENABLED", "perhaps", None, {}),
    ("TRAP_MAX_DEPTH", "-1", None, {}),
    ("TRAP_MAX_SEGMENT_REPEATS", "few", None, {}),
    ("TRAP_MAX_PAGES_PER_HOST", "-5", None, {}),
    ("TRAP_HOSTS_TRACKED", "0", None, {}),
    ("MONGO_URI", "http://127.0.0.1:27017/", None, {}),
    ("MONGO_DATABASE", "a.b", None, MONGO),
    ("MONGO_COLLECTION", "$pages", None, MONGO),
    ("MONGO_COLLECTIONS", '{"no.such.Item": "c"}', "no.such.Item", MONGO),
    ("MONGO_BATCH_SIZE", "0", None, MONGO),
    ("MONGO_FLUSH_INTERVAL", "-1", None, MONGO),
    ("MONGO_WRITE_CONCERN", '{"w": 0}', "{'w': 0}", MONGO),
    ("MONGO_INDEXES", '[{"keys": [["url", 2]]}]', "[['url', 2]]", MONGO),
    ("MONGO_QUERY_PATHS", '[{"fields": []}]', "[]", MONGO),
    ("MONGO_ALLOW_UNINDEXED", "perhaps", None, MONGO),
    ("MONGO_SPILL_DIR", "/dev/null/spill", None, MONGO),
    ("MONGO_SPILL_MAX_BYTES", "-1", None, MONGO),
    ("MONGO_SPILL_AFTER", "-1", None, MONGO),
    ("MONGO_BUFFER_MAX_ITEMS", "1", None, MONGO),
    ("MONGO_RETRY_BACKOFF_MIN", "0", None, MONGO),
    ("MONGO_RETRY_BACKOFF_MAX", "0.1", None, MONGO),
    ("MONGO_CONNECT_TIMEOUT", "0", None, MONGO),
    ("MONGO_SOCKET_TIMEOUT", "never", None, MONGO),
    ("MONGO_STATS_INTERVAL", "0", None, MONGO),
    ("TIMINGS_ENABLED", "perhaps", None, {}),
    ("TIMINGS_LOG_INTERVAL", "0", None, {}),
    ("TIMINGS_LOG_SAMPLE_RATE", "2", None, {}),
    ("TIMINGS_LOG_SLOW_MS", "-1", None, {}),
    ("TIMINGS_LOG_FILE", "/dev/null/timings.jl", None, {}),
]


def run_row(row: Row, workdir: Path) -> str | None:
    """None if the crawl failed at start as it should; otherwise what went wrong."""
    name, value, shown, enable = row
    workdir.mkdir(parents=True, exist_ok=True)
    argv = crawl_argv("broad", {**enable, "LOG_LEVEL": "ERROR", name: value})
    try:
        out = subprocess.run(argv, env=crawl_env(), cwd=workdir, capture_output=True, text=True,
                             timeout=START_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"{name}={value!r}: still running after {START_TIMEOUT} s"
    if out.returncode == 0:
        return f"{name}={value!r}: exit code 0"
    lines = [line for line in out.stderr.splitlines() if name in line]
    shown = value if shown is None else shown
    if not any(shown in line and "expected" in line for line in lines):
        tail = "\n    ".join(out.stderr.strip().splitlines()[-3:])
        return f"{name}={value!r}: no line with the name, {shown!r} and 'expected' on stderr; tail:\n    {tail}"
    return None


def test_every_bad_setting_stops_the_crawl_at_start_with_name_and_value(tmp_path: Path) -> None:
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(lambda ir: run_row(ir[1], tmp_path / f"row{ir[0]}"), enumerate(ROWS)))
    failures = [r for r in results if r is not None]
    assert not failures, f"{len(failures)} of {len(ROWS)} bad settings not refused properly:\n" + "\n".join(failures)


def test_the_table_covers_every_crawlproj_setting() -> None:
    import crawlproj.settings as module

    prefixes = ("BROAD_", "DISPATCHER_", "ROBOTS_", "MONGO_", "PROGRESS_", "SYNTHWEB_", "SSRF_", "TRAP_",
                "TIMINGS_", "RECENT_LINKS_", "CRAWLPROJ_", "POLITENESS_")
    ours = {k for k in dir(module) if k.startswith(prefixes)}
    assert ours - {row[0] for row in ROWS} == set()
