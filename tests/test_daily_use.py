"""Daily use as a Scrapy user expects it: who crawls (User-Agent, BOT_CONTACT), loud refusals
(exit code 1 and a WARNING naming the setting that would allow them), state under
CRAWLPROJ_STATE_DIR that a plain `scrapy crawl` reuses, honest item timings and quiet logs."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from scrapy import Request, signals
from scrapy.settings import Settings
from scrapy.utils.test import get_crawler

from crawlproj import __version__
from crawlproj.addons import Politeness
from crawlproj.identity import ContactCheck, is_local_host
from crawlproj.refusals import REFUSED, refusals
from crawlproj.scheduling.session import NO_ANSWER_WARN_INTERVAL, DispatcherSession
from crawlproj.tools.runner import SYNTHWEB_SETTINGS, crawl_argv, crawl_env
from crawlproj_testing.synthweb.model import WebSpec

TIMEOUT = 180


def crawl(workdir: Path, settings: dict[str, Any], spider_args: dict[str, Any]) -> tuple[int, str, dict[str, Any]]:
    """A real `scrapy crawl broad`: (exit code, stderr, final stats)."""
    workdir.mkdir(parents=True, exist_ok=True)
    stats_file = workdir / "stats.json"
    stats_file.unlink(missing_ok=True)
    merged = {"LOG_LEVEL": "INFO", "LOGSTATS_INTERVAL": 0, "DOWNLOAD_TIMEOUT": 5,
              "PROGRESS_STATS_FILE": str(stats_file), **settings}
    out = subprocess.run(crawl_argv("broad", merged, spider_args), env=crawl_env(), cwd=workdir,
                         capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    return out.returncode, out.stderr, stats


# -- who crawls -------------------------------------------------------------------------------------


def _user_agent(values: dict[str, Any], priority: str = "project") -> str:
    settings = Settings(values, priority=priority)
    Politeness().update_settings(settings)
    return str(settings["USER_AGENT"])


def test_the_user_agent_names_crawlproj_its_version_and_the_contact() -> None:
    assert _user_agent({}) == f"crawlproj/{__version__}"
    assert _user_agent({"BOT_CONTACT": "https://ops.example.com/bot"}) == \
        f"crawlproj/{__version__} (+https://ops.example.com/bot)"
    assert _user_agent({"BOT_CONTACT": "ops@example.com"}) == f"crawlproj/{__version__} (+ops@example.com)"
    # USER_AGENT set by the user (settings.py, -s, custom_settings) still wins, as in Scrapy
    assert _user_agent({"USER_AGENT": "mybot/1", "BOT_CONTACT": "ops@example.com"}) == "mybot/1"
    assert _user_agent({"USER_AGENT": "mybot/2"}, priority="cmdline") == "mybot/2"
    with pytest.raises(ValueError, match=r"^BOT_CONTACT: expected an http\(s\) URL or an e-mail address.*got 'ops'"):
        _user_agent({"BOT_CONTACT": "ops"})


def test_a_crawl_of_public_hosts_without_contact_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    assert is_local_host("127.0.0.1") and is_local_host("a.site1.test") and is_local_host("localhost")
    assert is_local_host("10.0.0.1") and not is_local_host("example.com") and not is_local_host("8.8.8.8")
    crawler = get_crawler(settings_dict={"BOT_CONTACT": ""})
    check = ContactCheck.from_crawler(crawler)
    assert check is not None
    caplog.set_level(logging.WARNING, logger="crawlproj.identity")
    for url in ("http://a.site1.test/", "http://127.0.0.1:8080/", "http://a.site1.test/2",  # local twice
                "https://example.com/", "https://example.org/"):
        crawler.signals.send_catch_log(signals.request_reached_downloader, request=Request(url), spider=None)
    lines = [r.getMessage() for r in caplog.records if "BOT_CONTACT" in r.getMessage()]
    assert len(lines) == 1 and "example.com first" in lines[0], lines
    from scrapy.exceptions import NotConfigured

    with pytest.raises(NotConfigured):  # with a contact there is nothing to say
        ContactCheck.from_crawler(get_crawler(settings_dict={"BOT_CONTACT": "ops@example.com"}))


# -- refusals are loud --------------------------------------------------------------------------------


def test_a_crawl_whose_every_seed_is_refused_exits_1_naming_the_setting(tmp_path: Path, synthweb: Any) -> None:
    proc = synthweb(WebSpec(seed=5, hosts=2, min_pages=3, max_pages=5))
    disallowing = next(h for h in proc.web.hosts if h.robots == "disallow")  # Disallow: /private/
    cases = {  # name: (settings, spider args, the stats key counted, what the warning names)
        "robots": (SYNTHWEB_SETTINGS, {"seeds": proc.url(disallowing.name, "/private/1")},
                   "robots/forbidden/rules", "ROBOTSTXT_OBEY"),
        "ssrf": ({}, {"seeds": "http://127.0.0.1:9/,http://10.0.0.1/"}, "ssrf/refused/loopback",
                 "SSRF_ALLOWED_NETWORKS"),
        "bad_seeds": ({}, {"seeds": "not-a-url,ftp://a.test/"}, "broad/seeds/invalid", "-a seeds"),
        "scope": ({}, {"seeds": "http://b.test/", "scope": "allowed", "allowed_domains": "a.test"},
                  "broad/seeds/out_of_scope", "BROAD_ALLOWED_DOMAINS"),
    }

    def run(name: str) -> tuple[int, str, dict[str, Any]]:
        settings, args, _, _ = cases[name]
        return crawl(tmp_path / name, settings, args)

    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(cases, pool.map(run, cases)))
    for name, (code, log, stats) in results.items():
        _, _, key, setting = cases[name]
        assert code == 1, f"{name}: exit code {code}\n{log[-2000:]}"
        assert stats.get("finish_reason") == REFUSED, (name, stats.get("finish_reason"))
        assert refusals(stats).get(key, 0) >= 1, (name, refusals(stats))
        warnings = [line for line in log.splitlines() if "WARNING" in line and "Nothing crawled" in line]
        assert any(key in line and setting in line for line in warnings), (name, warnings)
    assert refusals(results["ssrf"][2]) == {"ssrf/refused/loopback": 1, "ssrf/refused/private": 1}


# -- a normal run: quiet, honest timings, one state directory ---------------------------------------


def test_a_normal_crawl_is_quiet_and_keeps_its_state_under_the_state_dir(synthweb: Any, mongo_uri: str,
                                                                          tmp_path: Path) -> None:
    proc = synthweb(WebSpec(seed=4, hosts=6, min_pages=5, max_pages=20))
    state = tmp_path / "crawl-state"
    settings = {**SYNTHWEB_SETTINGS, "MONGO_URI": mongo_uri, "MONGO_DATABASE": "daily_use",
                "CRAWLPROJ_STATE_DIR": str(state), "TIMINGS_LOG_SAMPLE_RATE": 0, "TIMINGS_LOG_FILE": "timings.jl"}
    args = {"seeds": ",".join(proc.seed_urls())}
    code, log, stats = crawl(tmp_path / "run1", settings, args)
    assert code == 0, log[-3000:]
    assert stats["item_scraped_count"] > 20 and stats.get("mongo/items_written") == stats["item_scraped_count"]
    assert "returned a Deferred, this is deprecated" not in log
    assert "Disabled" not in log, [line for line in log.splitlines() if "Disabled" in line]
    assert "BOT_CONTACT" not in log  # the synthetic web is not the public web
    # item_write is the write: the batching wait (MONGO_FLUSH_INTERVAL) is item_batch_wait, never "slow"
    slow = [line for line in log.splitlines() if line.split("TIMING ", 1)[-1].startswith('{"t"')
            and json.loads(line.split("TIMING ", 1)[1])["op"] in ("item_write", "item_batch_wait")]
    assert not slow, slow[:5]
    windows = [json.loads(line) for line in (tmp_path / "run1" / "timings.jl").read_text().splitlines()]
    ops = [w["ops"] for w in windows if w["kind"] == "window"]
    assert sum(o.get("item_batch_wait", {}).get("n", 0) for o in ops) == stats["item_scraped_count"]
    last = ops[-1]
    assert last["item_write"]["p50"] < last["item_batch_wait"]["p50"], last
    # state and spill files under CRAWLPROJ_STATE_DIR, in a directory a second run reuses
    host = socket.gethostname()
    assert sorted(p.name for p in state.iterdir()) == sorted([host, "mongo-spill"])
    assert (state / host / "politeness.sqlite3").exists()
    assert not (tmp_path / "run1" / "state").exists()  # nothing relative to the working directory
    code, log, _ = crawl(tmp_path / "run2", settings, args)
    assert code == 0, log[-3000:]
    assert sorted(p.name for p in state.iterdir()) == sorted([host, "mongo-spill"])


# -- a node whose dispatcher never answers ------------------------------------------------------------


def test_a_node_without_dispatcher_warns_every_30_s_with_what_it_tried(caplog: pytest.LogCaptureFixture) -> None:
    node = SimpleNamespace(config=SimpleNamespace(endpoint="tcp://10.9.9.9:5570", heartbeat_interval=1.0),
                           _unanswered=None)
    caplog.set_level(logging.WARNING, logger="crawlproj.scheduling.scheduler")
    for second in range(0, 95):  # one unanswered heartbeat a second
        DispatcherSession._warn_unanswered(node, 1000.0 + second)  # type: ignore[arg-type]
    lines = [r.getMessage() for r in caplog.records]
    assert NO_ANSWER_WARN_INTERVAL == 30.0
    assert [line.split(" for ")[1].split(" s ")[0] for line in lines] == ["30", "60", "90"], lines
    assert all("tcp://10.9.9.9:5570" in line and "DISPATCHER_ENDPOINT" in line for line in lines)
