"""Every crawlproj setting and every typed Scrapy setting is validated at start: a bad value
stops `scrapy crawl broad` at once with one line naming the setting, the value and what is
expected (no traceback unless LOG_LEVEL=DEBUG), and exit code 1.

One table, each row checked in process: the crawler is built as `scrapy crawl` builds it
(spider, add-ons, extensions, engine with downloader, pipelines and scheduler) and must fail
with a ValueError whose message names the setting (so crawlproj.commands.crawl prints it as one
line). A few rows run as real `scrapy crawl` processes, for what the user sees on the terminal.
Some components exist only when enabled: DISPATCHER_* rows run with the DispatcherScheduler,
MONGO_* rows with a MONGO_URI (nothing listens there: validation comes before any connection).
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.reactor import is_reactor_installed
from scrapy.utils.test import get_reactor_settings

from crawlproj.addons import combine, node_settings
from crawlproj.commands.crawl import NOT_STARTED, names_a_setting
from crawlproj.politeness.gate import PolitenessGate
from crawlproj.spiders.broad import BroadSpider
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
    ("BOT_CONTACT", "nobody", None, {}),
    ("REVISIT_CONDITIONAL_GET", "perhaps", None, {}),
    ("REVISIT_POLICY", "weekly", None, SCHEDULER),  # the node's lease book reads the schedule's settings
    ("REVISIT_INTERVAL", "0", None, SCHEDULER),
    ("REVISIT_INTERVAL", "1", None, {**SCHEDULER, "REVISIT_POLICY": "adaptive"}),  # below the minimum
    ("REVISIT_MIN_INTERVAL", "-1", None, SCHEDULER),
    ("REVISIT_MAX_INTERVAL", "never", None, SCHEDULER),
    ("REVISIT_KEY_POLICIES", '{"a.test": "weekly"}', "weekly", SCHEDULER),
    ("REVISIT_SHARE", "1.5", None, SCHEDULER),
    ("REVISIT_SHARE", "-0.1", None, SCHEDULER),
    ("REVISIT_RETRY_BASE", "0", None, SCHEDULER),
    ("REVISIT_RETIRE_AFTER", "0", None, SCHEDULER),
    ("REVISIT_RETIRE_AFTER", "2.5", None, SCHEDULER),
    # Scrapy's own settings, read by Scrapy's components: named by crawlproj's check
    ("CONCURRENT_REQUESTS", "lots", None, {}),
    ("DOWNLOAD_TIMEOUT", "soon", None, {}),
    ("DEPTH_LIMIT", "deep", None, {}),
    ("RETRY_ENABLED", "perhaps", None, {}),
    ("LOG_LEVEL", "LOUD", None, {}),
    ("LOG_FILE", "/dev/null/crawl.log", None, {}),
    ("DUPEFILTER_CLASS", "scrapy.dupefilters.NoSuchFilter", None, {}),
]




def project_settings() -> dict[str, Any]:
    import crawlproj.settings as module

    return {k: getattr(module, k) for k in dir(module) if k.isupper()}  # as `scrapy crawl` has them


def start_failure(settings: dict[str, Any]) -> BaseException | None:
    """The exception that stops a crawl with ``settings`` from starting (None: it would start);
    the crawler built in process as Scrapy's ``Crawler.crawl_async`` and ``open_spider`` build it."""
    from scrapy.crawler import AsyncCrawlerRunner, CrawlerRunner

    merged = combine(project_settings(), get_reactor_settings(), settings)
    try:  # the runner applies the add-ons' pre-crawler settings
        runner = CrawlerRunner(merged) if is_reactor_installed() else AsyncCrawlerRunner(merged)
    except Exception as exc:  # noqa: BLE001 - the test reports what it was
        return exc
    crawler = runner.create_crawler(BroadSpider)
    try:
        crawler.spider = crawler._create_spider()
        crawler._apply_settings()
        crawler.engine = crawler._create_engine()
        build_from_crawler(crawler.engine.scheduler_cls, crawler)
    except Exception as exc:  # noqa: BLE001 - the test reports what it was
        return exc
    finally:
        try:
            gate = crawler.get_extension(PolitenessGate)
        except RuntimeError:  # the extensions were not built
            gate = None
        if gate is not None:
            gate.state.close()  # its store's writer thread
    return None


def check_row(row: Row) -> str | None:
    """None if the crawl fails at start with one line naming the setting; else what went wrong."""
    name, value, shown, enable = row
    exc = start_failure({**enable, name: value})
    if exc is None:
        return f"{name}={value!r}: the crawl would start"
    message = str(exc)
    shown = value if shown is None else shown
    if not (isinstance(exc, ValueError) and name in message and shown in message
            and "expected" in message and names_a_setting(exc)):
        return f"{name}={value!r}: {type(exc).__name__}: {message[:300]}"
    return None


def test_every_bad_setting_stops_the_crawl_at_start_with_name_and_value(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # state files of the rows that get that far
    results = [check_row(row) for row in ROWS]
    failures = [r for r in results if r is not None]
    assert not failures, f"{len(failures)} of {len(ROWS)} bad settings not refused properly:\n" + "\n".join(failures)


def test_the_project_settings_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert start_failure({}) is None


def test_the_table_covers_every_crawlproj_setting() -> None:
    import crawlproj.settings as module

    prefixes = ("BROAD_", "DISPATCHER_", "ROBOTS_", "MONGO_", "PROGRESS_", "SYNTHWEB_", "SSRF_", "TRAP_",
                "TIMINGS_", "RECENT_LINKS_", "CRAWLPROJ_", "POLITENESS_", "BOT_", "REVISIT_")
    ours = {k for k in dir(module) if k.startswith(prefixes)} - {"BOT_NAME"}  # Scrapy's
    assert ours - {row[0] for row in ROWS} == set()


# -- what the user sees: real `scrapy crawl` processes ---------------------------------------------

TERMINAL_ROWS = [row for row in ROWS if row[0] in (
    "ROBOTS_RETRY_DELAY", "CONCURRENT_REQUESTS", "LOG_LEVEL", "LOG_FILE", "MONGO_SPILL_DIR", "DISPATCHER_QUEUE_TARGET",
    "BROAD_SCOPE")] + [
    # Scrapy loads the paths of a component dict as soon as an add-on adds to it: crawlproj's
    # command checks it before, in process nothing can
    ("DOWNLOADER_MIDDLEWARES", '{"no.such.Middleware": 5}', "no.such.Middleware", {}),
]


def run_crawl(settings: dict[str, Any], workdir: Path) -> subprocess.CompletedProcess[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(crawl_argv("broad", settings), env=crawl_env(), cwd=workdir, capture_output=True,
                          text=True, timeout=START_TIMEOUT, stdin=subprocess.DEVNULL)


def terminal_row(row: Row, workdir: Path) -> str | None:
    name, value, shown, enable = row
    out = run_crawl({**enable, name: value}, workdir)
    shown = value if shown is None else shown
    lines = [line for line in out.stderr.splitlines() if name in line and "expected" in line]
    if out.returncode != 1:
        return f"{name}={value!r}: exit code {out.returncode}"
    if len(lines) != 1 or shown not in lines[0] or NOT_STARTED not in lines[0]:
        return f"{name}={value!r}: not one line '{NOT_STARTED}: {name}: ...{shown}...': {lines}"
    if "Traceback" in out.stderr:
        return f"{name}={value!r}: a traceback on stderr:\n{out.stderr[-2000:]}"
    return None


def test_a_bad_setting_is_one_line_on_the_terminal_and_exit_code_1(tmp_path: Path) -> None:
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(lambda ir: terminal_row(ir[1], tmp_path / f"row{ir[0]}"), enumerate(TERMINAL_ROWS)))
    failures = [r for r in results if r is not None]
    assert not failures, "\n".join(failures)


def test_the_traceback_of_a_bad_setting_only_at_debug(tmp_path: Path) -> None:
    out = run_crawl({"ROBOTS_RETRY_DELAY": "0", "LOG_LEVEL": "DEBUG"}, tmp_path)
    assert out.returncode == 1
    assert f"{NOT_STARTED}: ROBOTS_RETRY_DELAY: expected seconds > 0, got 0.0" in out.stderr
    assert "Traceback" in out.stderr and "positive_float" in out.stderr
