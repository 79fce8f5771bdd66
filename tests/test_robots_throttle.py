"""robots.txt (RFC 9309) and per-key politeness: RobotsThrottleMiddleware and crawlproj.politeness.

Crawls are real ``scrapy crawl`` processes against the synthetic web (or, for hostile robots.txt
bodies, a small real HTTP server in this process); the server's access log is the evidence.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import wait_until
from politeness_checks import assert_polite, assert_restart_gap, by_key, key_of_host
from scrapy.settings import Settings
from scrapy.utils.test import get_crawler

from crawlproj.politeness.core import Politeness
from crawlproj.politeness.robots import MAX_ROBOTS_BYTES, parse_robots
from crawlproj.politeness.store import KeyRow, StateStore
from crawlproj.politeness.config import PolitenessConfig
from crawlproj.politeness.gate import PolitenessGate
from crawlproj.tools.runner import SYNTHWEB_SETTINGS, crawl_argv, crawl_env
from crawlproj_testing.synthweb.model import RFC9309_OUTCOME, WebSpec
from crawlproj_testing.synthweb.process import Access
from crawlproj.wire.urls import partition_of

DELAY = 0.2  # seconds between fetches on one key in the crawl tests
FAST = {"DOWNLOAD_TIMEOUT": 3, "LOG_LEVEL": "INFO", "LOGSTATS_INTERVAL": 0,
        "ROBOTS_THROTTLE_DELAY": DELAY}
CRAWL_TIMEOUT = 120
SCHEDULERS = ("scrapy", "redis")


def project_settings(**overrides: Any) -> Settings:
    settings = Settings()
    settings.setmodule("crawlproj.settings", priority="project")
    settings.update(overrides, priority="cmdline")
    return settings


def crawl_settings(tmp_path: Path, scheduler: str = "scrapy", redis_url: str | None = None,
                   **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {**SYNTHWEB_SETTINGS, **FAST,
                                "ROBOTS_STATE_FILE": str(tmp_path / "politeness.sqlite3"),
                                "PROGRESS_STATS_FILE": str(tmp_path / "stats.json")}
    if scheduler == "redis":
        assert redis_url is not None
        prefix = f"robots-throttle-{uuid.uuid4().hex[:8]}"
        settings.update({
            "SCHEDULER": "scrapy_redis.scheduler.Scheduler",
            "DUPEFILTER_CLASS": "scrapy_redis.dupefilter.RFPDupeFilter",
            "SCHEDULER_QUEUE_CLASS": "scrapy_redis.queue.FifoQueue",
            "SCHEDULER_QUEUE_KEY": f"{prefix}:requests",
            "SCHEDULER_DUPEFILTER_KEY": f"{prefix}:dupefilter",
            "SCHEDULER_FLUSH_ON_START": True,
            "REDIS_URL": redis_url,
        })
    settings.update(extra)
    return settings


def run_crawl(tmp_path: Path, settings: dict[str, Any], spider_args: dict[str, Any]) -> dict[str, Any]:
    """Run ``scrapy crawl broad`` to the end; return its final stats."""
    proc = subprocess.run(crawl_argv("broad", settings, spider_args), env=crawl_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=CRAWL_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(Path(settings["PROGRESS_STATS_FILE"]).read_text())


def write_seeds(tmp_path: Path, urls: list[str], name: str = "seeds.txt") -> str:
    path = tmp_path / name
    path.write_text("\n".join(urls) + "\n")
    return str(path)


def robots_fetches(accesses: list[Access], host: str) -> list[Access]:
    return [a for a in accesses if a.host == host and a.path == "/robots.txt"]


# -- the synthetic web, every robots.txt variant ---------------------------------------------------


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_robots_variant_rfc9309_and_politeness(synthweb, tmp_path, request, scheduler):
    spec = WebSpec(seed=5, hosts=16, min_pages=5, max_pages=30, crawl_delay=0.5)
    # hold 1 s < DOWNLOAD_TIMEOUT: the server drops the time-out variant's connection itself,
    # so its access log shows when each attempt really ended
    proc = synthweb(spec, hold_seconds=1)
    web = proc.web
    variant_host = {h.robots: h.name for h in reversed(web.hosts)}
    recovering = variant_host["unavailable"]
    assert [h.name for h in web.hosts if h.robots == "unavailable"] == [recovering]
    redis_url = request.getfixturevalue("redis_url") if scheduler == "redis" else None
    settings = crawl_settings(tmp_path, scheduler, redis_url, ROBOTS_RETRY_DELAY=0.3,
                              ROBOTS_RETRY_MAX_DELAY=0.6, ROBOTS_HOLD_TIME=8)
    seeds = write_seeds(tmp_path, proc.seed_urls())
    with open(tmp_path / "crawl.log", "w") as log:
        crawl = subprocess.Popen(crawl_argv("broad", settings, {"seeds": seeds}), env=crawl_env(),
                                 cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            # robots.txt of the 503 host is retried while requests for it are held...
            wait_until(lambda: len(robots_fetches(proc.accesses(), recovering)) >= 3, 30,
                       "three robots.txt attempts on the 503 host")
            switch_ms = time.time() * 1000.0
            proc.set_robots(recovering, "allow")  # ...until it recovers
            assert crawl.wait(CRAWL_TIMEOUT) == 0, (tmp_path / "crawl.log").read_text()[-3000:]
        finally:
            if crawl.poll() is None:
                crawl.kill()
                crawl.wait()
    stats = json.loads((tmp_path / "stats.json").read_text())
    accesses = proc.accesses()
    pages = [a for a in accesses if not a.is_robots]
    recovered_outcome = {**RFC9309_OUTCOME, "unavailable": "allow"}

    # Exactly the ground truth, where the recovered host counts as allowing everything.
    truth = web.ground_truth(outcome=recovered_outcome)
    got = {(a.host, a.path) for a in pages}
    assert got == truth, (sorted(truth - got)[:10], sorted(got - truth)[:10])
    for a in pages:  # nothing disallowed, ever
        assert web.robots_allowed(web.by_name[a.host], a.path, recovered_outcome), a

    # 5xx robots.txt: nothing crawled while it failed, retried with back-off, crawled after.
    attempts = robots_fetches(accesses, recovering)
    assert len([a for a in attempts if a.start_ms < switch_ms]) >= 3
    assert [a.status for a in attempts] == [503] * (len(attempts) - 1) + [200]
    recovered_pages = [a for a in pages if a.host == recovering]
    assert recovered_pages and min(a.start_ms for a in recovered_pages) >= attempts[-1].end_ms
    for variant in ("server_error", "timeout"):
        host = variant_host[variant]
        assert not [a for a in pages if a.host == host], variant
        assert len(robots_fetches(accesses, host)) >= 2, variant  # retried, not given up
    # everything else: robots.txt fetched once (the redirect variant: once per hop)
    for h in web.hosts:
        if RFC9309_OUTCOME[h.robots] != "disallow":
            assert len(robots_fetches(accesses, h.name)) == 1, h

    # Politeness: one fetch at a time per key, DELAY apart; Crawl-delay on the host asking for it.
    assert_polite(accesses, DELAY)
    on_delay_host = sorted(a.start_ms for a in accesses if a.host == variant_host["crawl_delay"])
    assert len(on_delay_host) >= 4
    assert min(b - a for a, b in zip(on_delay_host, on_delay_host[1:])) >= 950 * spec.crawl_delay

    # Stats: every outcome counted; filtered requests ended as IgnoreRequest in the errback.
    assert stats["robots/forbidden"] == stats.get("broad/errors/IgnoreRequest")
    assert stats["robots/forbidden/unreachable"] >= 2
    assert stats["robots/held"] >= 3
    # a lookup finding nothing is a miss, also when it then waits for a fetch already running
    assert stats["robots/cache/miss"] >= len({a.host for a in accesses if a.is_robots})
    assert stats["robots/cache/hit"] > len(pages) / 2
    for name in ("robots/fetch/latency_ms/p50", "robots/fetch/latency_ms/p99",
                 "robots/store/lookup_ms/p99", "robots/store/write_ms/p99"):
        assert name in stats, name
    for name in ("robots/outcome/rules", "robots/outcome/allow", "robots/outcome/disallow",
                 "robots/fetch/status/503", "robots/fetch/redirect", "robots/fetch/cut_at_limit",
                 "robots/parse/truncated", "robots/parse/no_rules"):
        assert stats.get(name, 0) > 0, name


# -- a node restart: the state file keeps robots.txt and the last fetch times ---------------------


def test_state_survives_restart_ttl_and_delay(synthweb, tmp_path):
    restart_delay = 5.0  # run 1's delay; run 2's is also longer than 3 times run 1's start-up
    spec = WebSpec(seed=7, hosts=14, min_pages=12, max_pages=20)
    proc = synthweb(spec)
    web = proc.web
    hosts = []  # one host per key, robots.txt answered in one request
    for h in web.hosts:
        if h.robots in ("allow", "disallow", "not_found", "garbage") and \
                key_of_host(h.name) not in {key_of_host(o.name) for o in hosts}:
            hosts.append(h)
    hosts = hosts[:4]
    assert len(hosts) == 4

    def allowed_pages(h: Any, count: int) -> list[str]:
        return [proc.url(h.name, path) for path in (web.page_path(h, i) for i in range(h.pages)
                                                    if web.page_kind(h, i) == "html")
                if web.robots_allowed(h, path)][:count]

    def run(name: str, urls: list[str], **extra: Any) -> tuple[dict[str, Any], list[Access], float]:
        """(stats, accesses, seconds from the start of the process to its first request)"""
        seen = len(proc.accesses())
        settings = crawl_settings(tmp_path, **extra)
        started_ms = time.time() * 1000.0
        stats = run_crawl(tmp_path, settings, {"seeds": write_seeds(tmp_path, urls, name), "max_depth": 0})
        accesses = proc.accesses()[seen:]
        return stats, accesses, (min(a.start_ms for a in accesses) - started_ms) / 1000.0

    # Run 1: robots.txt, then the root, restart_delay apart on every key.
    stats1, run1, start_up = run("run1.txt", [proc.url(h.name) for h in hosts], ROBOTS_THROTTLE_DELAY=restart_delay)
    assert len(run1) == 2 * len(hosts) and stats1["robots/cache/miss"] == len(hosts)
    # Run 2 (same state file, within the TTL): no robots.txt at all, and the first fetch on
    # each key waits out the delay since run 1's last one. The delay is longer than a process
    # takes to start (on a loaded machine that can be many seconds) on top of what has passed
    # since run 1's last fetch (its shut-down), so there is a wait.
    last_fetch_ms = {h.name: max(a.start_ms for a in run1 if a.host == h.name) for h in hosts}
    since_last = time.time() - min(last_fetch_ms.values()) / 1000.0  # the key fetched earliest
    delay2 = max(restart_delay, since_last + 3 * start_up)
    stats2, run2, _ = run("run2.txt", [allowed_pages(h, 2)[1] for h in hosts], ROBOTS_THROTTLE_DELAY=delay2)
    assert not [a for a in run2 if a.is_robots]
    assert stats2["robots/cache/hit"] == len(hosts) and "robots/cache/miss" not in stats2
    assert stats2["politeness/waited_for_earlier_fetch"] == len(hosts), (start_up, since_last, delay2)
    gaps = assert_restart_gap(run1, run2, delay2)
    assert len(gaps) == len(hosts)
    # Run 3, after the TTL: exactly one robots.txt refetch per host, however many requests wait.
    stats3, run3, _ = run("run3.txt", [u for h in hosts for u in allowed_pages(h, 3)], ROBOTS_CACHE_TTL=2)
    assert Counter(a.host for a in run3 if a.is_robots) == Counter(h.name for h in hosts)
    assert stats3["robots/cache/expired"] >= len(hosts)
    assert len([a for a in run3 if not a.is_robots]) == 3 * len(hosts)
    assert_polite(run3, DELAY)


# -- hostile robots.txt bodies, from a real server in this process --------------------------------

HUGE_BYTES = 20 * 1024 * 1024  # more than socket buffers hold: the server sees the client stop
HOSTILE_ROBOTS: dict[str, bytes] = {
    "huge.test": b"User-agent: *\nDisallow: /private/\n",  # + padding to HUGE_BYTES
    "binary.test": random.Random(4).randbytes(4096).replace(b"\n", b"\x00"),
    "latin1.test": b"User-agent: *\nDisallow: /private/\n# caf\xe9 cr\xe8me br\xfbl\xe9e\n",
    "bigdelay.test": b"User-agent: *\nCrawl-delay: 1e9\n",
    "baddelay.test": b"User-agent: *\nCrawl-delay: -3\nCrawl-delay: nan\nCrawl-delay: soon\n"
                     b"Disallow: /private/\n",
    "loop.test": b"",  # redirects to itself forever
    "empty.test": b"",
}
FORBIDDING = {"huge.test", "latin1.test", "baddelay.test"}
HOSTILE_PAGES = {"/": b'<html><a href="/a">a</a><a href="/b">b</a><a href="/private/c">c</a></html>',
                 "/a": b"<html>a</html>", "/b": b"<html>b</html>", "/private/c": b"<html>c</html>"}
HOSTILE_DELAY_CAP = 1.0


class HostileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), HostileHandler)
        self.log: list[tuple[float, float, str, str, int]] = []
        self.huge_aborted = threading.Event()


class HostileHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HostileServer

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        started = time.time() * 1000.0
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        status = self._respond(host)
        self.server.log.append((started, time.time() * 1000.0, host, self.path, status))

    def _respond(self, host: str) -> int:
        if self.path == "/robots.txt" and host == "loop.test":
            self._send(302, b"", location=f"http://{self.headers['Host']}/robots.txt")
            return 302
        if self.path == "/robots.txt" and host == "huge.test":
            head = HOSTILE_ROBOTS[host]
            pad = b"Disallow: /padding/" + b"x" * 100 + b"\n"
            self.send_response(200)
            self.send_header("Content-Length", str(HUGE_BYTES))
            self.end_headers()
            try:
                self.wfile.write(head)
                sent = len(head)
                chunk = pad * 1000
                while sent < HUGE_BYTES:
                    piece = chunk[: HUGE_BYTES - sent]
                    self.wfile.write(piece)
                    sent += len(piece)
            except (BrokenPipeError, ConnectionResetError):
                self.server.huge_aborted.set()
                self.close_connection = True
            return 200
        if self.path == "/robots.txt":
            self._send(200, HOSTILE_ROBOTS[host])
            return 200
        body = HOSTILE_PAGES.get(self.path)
        self._send(200 if body else 404, body or b"no")
        return 200 if body else 404

    def _send(self, status: int, body: bytes, location: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/html" if self.path != "/robots.txt" else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if location:
            self.send_header("Location", location)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def hostile_server() -> Iterator[HostileServer]:
    server = HostileServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_hostile_robots_txt_bodies(hostile_server, tmp_path):
    port = hostile_server.server_address[1]
    seeds = write_seeds(tmp_path, [f"http://{h}:{port}/" for h in HOSTILE_ROBOTS])
    stats = run_crawl(tmp_path, crawl_settings(tmp_path, ROBOTS_CRAWL_DELAY_MAX=HOSTILE_DELAY_CAP),
                      {"seeds": seeds})
    log = hostile_server.log
    pages = {(host, path) for _, _, host, path, _ in log if path != "/robots.txt"}
    expected = {(h, p) for h in HOSTILE_ROBOTS for p in HOSTILE_PAGES
                if not (h in FORBIDDING and p.startswith("/private/"))}
    assert pages == expected, (sorted(expected - pages), sorted(pages - expected))
    # huge: read no further than 500 KiB (the server saw the client hang up), rules at the top kept
    assert hostile_server.huge_aborted.is_set()
    assert stats["robots/fetch/cut_at_limit"] == 1 and stats["robots/parse/truncated"] == 1
    # binary garbage and latin-1: decoded with replacement, counted; garbage has no rules
    assert stats["robots/parse/not_utf8"] == 2
    assert stats["robots/parse/no_rules"] == 2  # binary, empty
    # absurd Crawl-delay: capped, counted, and the cap is honoured
    assert stats["robots/parse/crawl_delay_capped"] == 1
    starts = sorted(s for s, _, host, _, _ in log if host == "bigdelay.test")
    assert min(b - a for a, b in zip(starts, starts[1:])) >= 950 * HOSTILE_DELAY_CAP
    # redirect loop: 1 + 5 redirects followed, then "unavailable" (allow all)
    assert len([1 for _, _, host, path, _ in log if host == "loop.test" and path == "/robots.txt"]) == 6
    assert stats["robots/fetch/too_many_redirects"] == 1
    assert stats["robots/forbidden/rules"] == len(FORBIDDING)


# -- settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, value, expect", [
    ("ROBOTS_CACHE_TTL", 86401, "at most 24 hours"),
    ("ROBOTS_CACHE_TTL", "soon", "a number of seconds"),
    ("ROBOTS_THROTTLE_DELAY", -1, ">= 0"),
    ("ROBOTS_THROTTLE_KEY_DELAYS", {"a.test": "slow"}, "seconds >= 0"),
    ("ROBOTS_RETRY_MAX_DELAY", 0.1, ">= ROBOTS_RETRY_DELAY"),
    ("ROBOTS_CACHE_MEMORY", 0, ">= 1"),
    ("POLITENESS_KEY", "galaxy", "one of"),
])
def test_bad_setting_names_itself(tmp_path, name, value, expect):
    import crawlproj.settings as module

    project = {k: getattr(module, k) for k in dir(module) if k.isupper()}
    with pytest.raises(ValueError) as err:  # the gate is an extension: it fails as the crawler starts
        crawler = get_crawler(settings_dict={**project, "ROBOTS_STATE_FILE": str(tmp_path / "s.sqlite3"),
                                             name: value})
        PolitenessGate.from_crawler(crawler)
    assert name in str(err.value) and expect in str(err.value) and repr(value) in str(err.value)


def test_bad_setting_stops_the_crawl_at_start(tmp_path):
    """The middleware refuses it as the crawler builds it (tests/test_hardening_settings.py runs
    bad ROBOTS_* values as real `scrapy crawl` processes)."""
    from crawlproj.middlewares.robots_throttle import RobotsThrottleMiddleware

    import crawlproj.settings as module

    project = {k: getattr(module, k) for k in dir(module) if k.isupper()}
    crawler = get_crawler(settings_dict={**project, "ROBOTS_STATE_FILE": str(tmp_path / "s.sqlite3"),
                                         "ROBOTS_HOLD_TIME": -5})
    with pytest.raises(ValueError) as err:
        RobotsThrottleMiddleware.from_crawler(crawler)
    assert "ROBOTS_HOLD_TIME" in str(err.value) and "-5" in str(err.value)


@pytest.mark.parametrize("enabled", [True, False])
def test_politeness_addon_installs_one_robots_middleware(enabled):
    from scrapy.downloadermiddlewares.robotstxt import RobotsTxtMiddleware

    from crawlproj.middlewares.robots_throttle import RobotsThrottleMiddleware
    from crawlproj.middlewares.robotstxt import FixedRobotsTxtMiddleware

    import crawlproj.settings as module

    project = {k: getattr(module, k) for k in dir(module) if k.isupper()}
    crawler = get_crawler(settings_dict={**project, "ROBOTS_THROTTLE_ENABLED": enabled})
    crawler._apply_settings()
    robots = [mw for mw in crawler.engine.downloader.middleware.middlewares
              if isinstance(mw, (RobotsTxtMiddleware, RobotsThrottleMiddleware))] if crawler._engine else None
    if robots is None:
        crawler.engine = crawler._create_engine()
        robots = [mw for mw in crawler.engine.downloader.middleware.middlewares
                  if isinstance(mw, (RobotsTxtMiddleware, RobotsThrottleMiddleware))]
    expected = RobotsThrottleMiddleware if enabled else FixedRobotsTxtMiddleware
    assert [type(mw) for mw in robots] == [expected]  # one robots.txt middleware, at Scrapy's place
    assert (crawler.get_extension(PolitenessGate) is not None) is enabled


# -- Politeness in-process: the scheduler's API, handoff, the store ------------------------------


def make_politeness(path: Path, **overrides: Any) -> Politeness:
    settings = project_settings(ROBOTS_STATE_FILE=str(path), **overrides)
    return Politeness(PolitenessConfig.from_settings(settings))


def test_scheduler_api_delays_and_handoff(tmp_path):
    pol = make_politeness(tmp_path / "a.sqlite3", ROBOTS_THROTTLE_DELAY=0.5,
                          ROBOTS_THROTTLE_KEY_DELAYS={"slow.test": 3.0}, ROBOTS_CRAWL_DELAY_MAX=10,
                          ROBOTS_STORE_FLUSH_INTERVAL=0.02)
    try:
        assert pol.key_of("http://blog.site1.test:8080/x") == "site1.test"
        assert pol.delay_for("site1.test") == 0.5 and pol.delay_for("slow.test") == 3.0
        assert pol.next_allowed("site1.test") == 0.0
        pol.record_fetch_start("site1.test", 1000.0)
        assert pol.next_allowed("site1.test") == 1000.5
        pol.record_fetch_start("site1.test", 900.0)  # older news never moves it back
        assert pol.next_allowed("site1.test") == 1000.5
        # a Crawl-delay counts when it is the largest, capped by ROBOTS_CRAWL_DELAY_MAX
        body = b"User-agent: *\nCrawl-delay: 2\nDisallow: /private/\n"
        asyncio.run(pol.record_robots_fetch("http://site1.test", "site1.test", 200, body))
        asyncio.run(pol.record_robots_fetch("http://blog.site1.test", "site1.test", 200,
                                            b"User-agent: *\nCrawl-delay: 99\n"))
        assert pol.delay_for("site1.test") == 10.0
        keys = [f"site{i}.test" for i in range(2, 200)]
        for i, key in enumerate(keys):
            pol.record_fetch_start(key, 2000.0 + i)
            asyncio.run(pol.record_robots_fetch(f"http://{key}", key, 404, b""))
        # written to the file first: the partition filter then runs in SQL on the stored hashes
        wait_until(lambda: pol.store.rows_written >= 2 * len(keys), 10, "the state to be written")
        wanted = {partition_of(k, 16) for k in keys[:5]}
        state = pol.export_partitions(wanted, 16)
        state = msgpack.unpackb(msgpack.packb(state), raw=False)  # what the wire carries
        exported = {k["key"] for k in state["keys"]}
        expected_next = {k: pol.next_allowed(k) for k in exported}
    finally:
        pol.close()
    assert exported == {k for k in keys + ["site1.test"] if partition_of(k, 16) in wanted}
    assert {r["key"] for r in state["robots"]} == exported

    other = make_politeness(tmp_path / "b.sqlite3", ROBOTS_THROTTLE_DELAY=0.5)
    try:
        other.record_fetch_start(keys[0], 5000.0)  # newer than the export: kept
        taken = other.import_state({**state, "keys": state["keys"] + [{"nonsense": 1}]})
        assert taken == {"keys": len(exported), "robots": len(state["robots"]), "invalid": 1}
        assert other.next_allowed(keys[0]) == 5000.5
        for key in exported - {keys[0]}:
            assert other.next_allowed(key) == expected_next[key]
            verdict = asyncio.run(other.robots_verdict(f"http://{key}"))
            assert verdict.kind == "hit" and verdict.parsed.allowed(f"http://{key}/x", "bot")
        with pytest.raises(ValueError, match="state version"):
            other.import_state({"version": 99})
    finally:
        other.close()


def test_adaptive_delay_follows_latency(tmp_path):
    pol = make_politeness(tmp_path / "s.sqlite3", ROBOTS_THROTTLE_DELAY=0.1, ROBOTS_THROTTLE_ADAPTIVE=True,
                          ROBOTS_THROTTLE_ADAPTIVE_FACTOR=2.0, ROBOTS_THROTTLE_ADAPTIVE_MAX_DELAY=3.0)
    try:
        assert pol.delay_for("a.test") == 0.1
        pol.observe_latency("a.test", 0.5, 200)
        assert pol.delay_for("a.test") == 1.0  # latency x factor at once when it is larger
        pol.observe_latency("a.test", 0.1, 404)  # small error pages never lower it
        assert pol.delay_for("a.test") == 1.0
        pol.observe_latency("a.test", 0.1, 200)  # a fast answer lowers it halfway
        assert pol.delay_for("a.test") == pytest.approx(0.6)
        pol.observe_latency("a.test", 10.0, 200)
        assert pol.delay_for("a.test") == 3.0  # capped
        assert pol.delay_for("b.test") == 0.1  # per key
    finally:
        pol.close()


def test_failing_robots_backoff_and_fallback(tmp_path):
    now = [10_000.0]
    settings = project_settings(ROBOTS_STATE_FILE=str(tmp_path / "s.sqlite3"), ROBOTS_RETRY_DELAY=10,
                                ROBOTS_RETRY_MAX_DELAY=30, ROBOTS_FALLBACK_AFTER=100)
    pol = Politeness(PolitenessConfig.from_settings(settings), clock=lambda: now[0])
    authority = "http://a.test"
    try:
        asyncio.run(pol.record_robots_fetch(authority, "a.test", 200, b"User-agent: *\nDisallow: /x\n"))
        retries = []
        for _ in range(4):
            now[0] += 100_000  # past the TTL: fetch again, and it fails
            assert asyncio.run(pol.robots_verdict(authority)).kind in ("expired", "retry")
            row = asyncio.run(pol.record_robots_fetch(authority, "a.test", 503, b"busy"))
            retries.append(row.next_retry - now[0])
            verdict = asyncio.run(pol.robots_verdict(authority))
            if row.failures == 1:
                assert verdict.kind == "failing" and verdict.retry_at == row.next_retry
        assert retries == [10, 20, 30, 30]  # doubling, capped
        # failing for longer than ROBOTS_FALLBACK_AFTER: the last good copy applies
        now[0] = row.next_retry - 1
        verdict = asyncio.run(pol.robots_verdict(authority))
        assert verdict.kind == "fallback"
        assert not verdict.parsed.allowed("http://a.test/x", "bot") and verdict.parsed.allowed("http://a.test/y", "bot")
        # a network error is a failure too; a 4xx afterwards allows everything and ends it
        now[0] += 1000
        asyncio.run(pol.record_robots_fetch(authority, "a.test", 0, b"", error="TimeoutError"))
        row = asyncio.run(pol.record_robots_fetch(authority, "a.test", 404, b""))
        assert row.failures == 0 and row.outcome == "allow"
    finally:
        pol.close()


def test_store_is_indexed_wal_and_survives_reopen(tmp_path):
    path = tmp_path / "s.sqlite3"
    pol = make_politeness(path, ROBOTS_STORE_FLUSH_INTERVAL=0.05)
    asyncio.run(pol.record_robots_fetch("http://a.test", "a.test", 200, b"User-agent: *\nDisallow: /p\n"))
    pol.record_fetch_start("a.test", 1234.5)
    wait_until(lambda: pol.store.rows_written >= 2, 5, "the writer thread to flush")
    pol.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for sql in ("SELECT body FROM robots WHERE authority = ?", "SELECT * FROM politeness WHERE key = ?"):
        plan = " ".join(str(r[-1]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", ("x",)))
        assert "SEARCH" in plan and ("PRIMARY KEY" in plan or "INDEX" in plan), plan
    conn.close()
    again = make_politeness(path)
    try:
        assert again.last_fetch("a.test") == 1234.5
        verdict = asyncio.run(again.robots_verdict("http://a.test"))
        assert verdict.kind == "hit" and not verdict.parsed.allowed("http://a.test/p/1", "bot")
    finally:
        again.close()


def test_store_loses_no_write_while_the_writer_flushes(tmp_path):
    store = StateStore(str(tmp_path / "s.sqlite3"), flush_interval=0.001)
    try:
        for round_ in range(30):
            for i in range(300):  # the writer swaps its batch in and out meanwhile
                store.put_key(KeyRow(f"k{i}.test", float(round_), float(round_)))
                if i % 100 == 0:
                    assert store.get_key(f"k{i}.test").last_start == round_  # read your writes
    finally:
        store.close()
    conn = sqlite3.connect(tmp_path / "s.sqlite3")
    rows = conn.execute("SELECT count(*), min(last_start), max(last_start) FROM politeness").fetchone()
    conn.close()
    assert rows == (300, 29.0, 29.0)
    assert store.write_errors == 0


def test_parse_robots_hostile_bodies():
    head = b"User-agent: *\nDisallow: /private/\nAllow: /private/7\n"
    line = b"Disallow: /pad/" + b"y" * 40 + b"\n"
    huge = head + line * (2 * MAX_ROBOTS_BYTES // len(line))
    parsed = parse_robots(huge, "bot", 30)
    assert "truncated" in parsed.notes
    assert not parsed.allowed("http://h/private/1", "bot") and parsed.allowed("http://h/private/7", "bot")
    # cut at a line boundary: "Allow: /private/7" cut to "Allow: /pr" would widen the rules
    rules = b"User-agent: *\nDisallow: /private/\n"
    prefix = rules + b"#" * (MAX_ROBOTS_BYTES - len(rules) - 1 - len(b"Allow: /pr")) + b"\n"
    cut = parse_robots(prefix + b"Allow: /private/7\n", "bot", 30)
    assert "truncated" in cut.notes and not cut.allowed("http://h/private/1", "bot")
    garbage = parse_robots(bytes(range(256)) * 50, "bot", 30)
    assert garbage.outcome == "rules" and garbage.allowed("http://h/x", "bot")
    assert {"not_utf8", "no_rules"} <= set(garbage.notes)
    for value, expected in ((b"1e9", 30.0), (b"inf", None), (b"-4", None), (b"nan", None), (b"x", None), (b"2.5", 2.5)):
        parsed = parse_robots(b"User-agent: *\nCrawl-delay: " + value + b"\n", "bot", 30)
        assert parsed.crawl_delay == expected, value
    assert "crawl_delay_capped" in parse_robots(b"User-agent: *\nCrawl-delay: 31\n", "bot", 30).notes
    bom = parse_robots(b"\xef\xbb\xbfUser-agent: *\nDisallow: /a\n", "bot", 30)
    assert not bom.allowed("http://h/a", "bot") and not bom.notes


def test_politeness_checks_catch_violations():
    def acc(start: float, end: float, host: str = "a.test") -> Access:
        return Access(start, end, host, "/", 200, "")

    from politeness_checks import politeness_violations

    problems, _ = politeness_violations([acc(0, 50), acc(40, 60, "blog.a.test")], 0.01)
    assert any("overlap" in p for p in problems)
    problems, _ = politeness_violations([acc(0, 1), acc(150, 151)], 0.2)
    assert any("need >=" in p for p in problems)
    assert by_key([acc(0, 1, "blog.a.test"), acc(5, 6)]).keys() == {"a.test"}
    with pytest.raises(AssertionError):
        assert_restart_gap([acc(0, 1)], [acc(100, 101)], 0.2)


def test_a_keys_delay_counts_from_the_last_byte_only_of_a_body_known_whole():
    """The delay may count from the answer's last byte (the server sent it before) only when
    the body is known whole: exactly its Content-Length received, no Transfer-Encoding. A cut,
    chunked or close-delimited body counts from when the downloader handed it on."""
    from scrapy.http import Response

    from crawlproj.middlewares.robots_throttle import answer_end

    def answer(**headers: str) -> Response:
        return Response("http://a.test/", headers=headers)

    now = 100.0
    assert answer_end(answer(**{"Content-Length": "5"}), (5, 99.5), now) == 99.5
    assert answer_end(answer(**{"Content-Length": "0"}), (0, 99.9), now) == 99.9  # headers only
    assert answer_end(answer(**{"Content-Length": "5"}), (3, 99.5), now) == now  # cut short
    assert answer_end(answer(**{"Content-Length": "5", "Transfer-Encoding": "chunked"}), (5, 99.5), now) == now
    assert answer_end(answer(), (5, 99.5), now) == now  # ends with the connection
    assert answer_end(answer(**{"Content-Length": " 5x"}), (5, 99.5), now) == now
    assert answer_end(answer(**{"Content-Length": "5"}), None, now) == now  # no bytes seen (a cache)
    assert answer_end(answer(**{"Content-Length": "5"}), (5, 100.5), now) == now  # never later
