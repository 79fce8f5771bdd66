"""Hostile input on the crawl path: SSRF, traps, bombs, broken pages, odd URLs.

- The SSRF guard's verdicts; a real node refusing loopback addresses before connecting, and a
  DNS-rebound name after connecting (the peer address check).
- A real dispatcher and node crawling the hostile web (tests/hostile_web.py): every page ends in
  a clear, counted outcome and the crawl finishes.
- One canonicalization everywhere: the spider, the scheduler's wire routing, the dispatcher's
  seeds and the MongoDB pipeline's ``_id`` agree on the fingerprint of odd URLs.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hostile_web import BIG_BYTES, HostileWeb
from scrapy.exceptions import NotConfigured
from scrapy.http import HtmlResponse, Request
from scrapy.settings import SETTINGS_PRIORITIES, Settings
from scrapy.utils.test import get_crawler

from crawlproj.addons import combine, node_settings
from crawlproj.tools.dispatcher_process import DispatcherProcess
from crawlproj.dispatcher.seeds import wire_seed
from crawlproj.meta import CANONICAL
from crawlproj.pipelines.mongo import MongoPipeline
from crawlproj.tools.runner import SYNTHWEB_SETTINGS, crawl_argv, crawl_env
from crawlproj.wire.request import WireCodec
from crawlproj.security.ssrf import AddressPolicy, SSRFGuardMiddleware, refusal_reason
from crawlproj.spiders.broad import BroadSpider
from crawlproj.wire.urls import canonicalize, fingerprint, fingerprint_canonical
from crawlproj_testing.addons import SyntheticWeb
from crawlproj_testing.resolver import RESOLVER

TESTS = Path(__file__).resolve().parent
CRAWL_TIMEOUT = 120
MAXSIZE = 1024 * 1024  # below hostile_web.BIG_BYTES
HOST_CAP = 30  # above the ~25 pages of www.hostile.test
PARTITIONS = 16


def run_node(tmp_path: Path, settings: dict[str, Any], spider_args: dict[str, Any] | None = None,
             extra_env: dict[str, str] | None = None, exit_code: int = 0) -> dict[str, Any]:
    """One `scrapy crawl broad` to its end (with ``exit_code``); its final stats."""
    stats_file = tmp_path / "node.stats.json"
    settings = {"PROGRESS_STATS_FILE": str(stats_file), "LOG_FILE": str(tmp_path / "node.log"),
                "CRAWLPROJ_STATE_DIR": str(tmp_path / "state"),
                "FEEDS": {str(tmp_path / "items.jl"): {"format": "jsonlines"}}, **settings}
    proc = subprocess.Popen(crawl_argv("broad", settings, spider_args), env=crawl_env(extra_env), cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert proc.wait(CRAWL_TIMEOUT) == exit_code, (tmp_path / "node.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stats: dict[str, Any] = json.loads(stats_file.read_text())
    return stats


def items(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "items.jl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- the SSRF guard's verdicts ---------------------------------------------------------------------


@pytest.mark.parametrize("address, reason", [
    ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"), ("100.100.100.200", "metadata"),
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("64:ff9b::7f00:1", "loopback"), ("2002:7f00:1::", "loopback"),
    ("10.1.2.3", "private"), ("192.168.0.1", "private"), ("172.16.5.4", "private"), ("fc00::1", "private"),
    ("169.254.1.1", "link_local"), ("fe80::1", "link_local"), ("224.0.0.1", "multicast"),
    ("0.0.0.0", "unspecified"), ("100.64.0.1", "not_global"),
    ("8.8.8.8", None), ("2606:4700::1111", None), ("::ffff:8.8.8.8", None),
])
def test_refusal_reasons(address: str, reason: str | None) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) == reason


def test_policy_settings_allowances_and_validation() -> None:
    def policy(**values: Any) -> AddressPolicy:
        return AddressPolicy.from_settings(Settings({"SSRF_ALLOWED_NETWORKS": [], "SSRF_BLOCKED_NETWORKS": [],
                                                     **values}))

    ip = ipaddress.ip_address
    assert policy().verdict(ip("127.0.0.1")) == "loopback"
    allowed = policy(SSRF_ALLOWED_NETWORKS="10.1.0.0/16, ::1/128")  # a comma list from -s works
    assert allowed.verdict(ip("10.1.200.3")) is None and allowed.verdict(ip("::1")) is None
    assert allowed.verdict(ip("::ffff:10.1.0.9")) is None and allowed.verdict(ip("10.2.0.1")) == "private"
    assert policy(SSRF_BLOCKED_NETWORKS=["8.8.8.0/24"]).verdict(ip("8.8.8.8")) == "blocked"
    for name, value in (("SSRF_ALLOWED_NETWORKS", ["10.0.0.0/33"]), ("SSRF_BLOCKED_NETWORKS", ["nope"]),
                        ("SSRF_ALLOWED_NETWORKS", [5])):
        with pytest.raises(ValueError, match=f"{name}: expected a list of networks.*got"):
            policy(**{name: value})
    with pytest.raises(NotConfigured):
        SSRFGuardMiddleware.from_crawler(get_crawler(settings_dict={"SSRF_ENABLED": False}))


def test_synthetic_web_addon_allows_its_address_and_nothing_else() -> None:
    """The guard allows only SSRF_ALLOWED_NETWORKS; the test harness's add-on puts its address there."""
    ip = ipaddress.ip_address

    def crawler_settings(**values: Any) -> Settings:
        return get_crawler(settings_dict={"SSRF_ALLOWED_NETWORKS": [], **values}).settings

    plain = crawler_settings()
    assert plain["TWISTED_DNS_RESOLVER"] != RESOLVER and "SYNTHWEB_RESOLVE_SUFFIXES" not in plain
    on = crawler_settings(**SYNTHWEB_SETTINGS)
    assert on["TWISTED_DNS_RESOLVER"] == RESOLVER and on.getlist("SYNTHWEB_RESOLVE_SUFFIXES") == ["test"]
    assert AddressPolicy.from_settings(on).verdict(ip("127.0.0.1")) is None
    assert AddressPolicy.from_settings(on).verdict(ip("127.0.0.2")) == "loopback"
    # a -s value (JSON, cmdline priority) keeps its networks and its priority; the address joins it
    cmdline = Settings({**SYNTHWEB_SETTINGS})
    cmdline.set("SSRF_ALLOWED_NETWORKS", '["10.1.0.0/16"]', priority="cmdline")
    SyntheticWeb.update_pre_crawler_settings(cmdline)
    assert cmdline.getlist("SSRF_ALLOWED_NETWORKS") == ["10.1.0.0/16", "127.0.0.1/32"]
    assert cmdline.getpriority("SSRF_ALLOWED_NETWORKS") == SETTINGS_PRIORITIES["cmdline"]
    SyntheticWeb.update_pre_crawler_settings(cmdline)  # applied again (crawler copy): no duplicate
    assert cmdline.getlist("SSRF_ALLOWED_NETWORKS") == ["10.1.0.0/16", "127.0.0.1/32"]
    with pytest.raises(ValueError, match="SYNTHWEB_RESOLVE_ADDRESS: expected an IPv4 address, got 'localhost'"):
        crawler_settings(**SYNTHWEB_SETTINGS, SYNTHWEB_RESOLVE_ADDRESS="localhost")


def test_node_refuses_loopback_before_connecting_and_a_rebound_name_after(tmp_path: Path) -> None:
    """No synthetic-web allowance: 127.0.0.1 is refused. rebind.test first resolves to 127.0.0.2
    (allowed here), then to 127.0.0.1: the pre-check passes, the connected peer is refused."""
    with HostileWeb(tmp_path / "access.jl") as web:
        seeds = [f"http://127.0.0.1:{web.port}/direct", f"http://www.rebind.test:{web.port}/rebound",
                 f"http://[::1]:{web.port}/v6", f"http://2130706433:{web.port}/decimal"]
        stats = run_node(tmp_path, {
            "TWISTED_DNS_RESOLVER": "rebinding_resolver.RebindingResolver", "DNSCACHE_ENABLED": False,
            "SSRF_ALLOWED_NETWORKS": ["127.0.0.2/32"], "ROBOTSTXT_OBEY": False, "RETRY_ENABLED": False,
        }, {"seeds": ",".join(seeds)}, extra_env={"PYTHONPATH": os.pathsep.join(
            [str(TESTS), os.environ.get("PYTHONPATH", "")])}, exit_code=1)  # every seed refused
        requested = Counter(r["path"] for r in web.requests())
    assert stats["ssrf/refused/loopback"] == 4 and stats["finish_reason"] == "refused"
    assert requested == {"/rebound": 1}  # sent (the peer check comes after), never used
    assert stats["broad/errors/IgnoreRequest"] == 4
    assert items(tmp_path) == []


# -- the hostile web through a real dispatcher and node ---------------------------------------------


def test_hostile_web_through_dispatcher_and_node(tmp_path: Path) -> None:
    with HostileWeb(tmp_path / "access.jl") as web:
        port = web.port
        seeds = [f"HTTP://WWW.Hostile.TEST:{port}/#start", f"http://www.hostile.test:{port}/"]
        with DispatcherProcess(tmp_path / "store", "--partitions", str(PARTITIONS), "--seeds", ",".join(seeds),
                               "--heartbeat-interval", "0.5", "--heartbeat-timeout", "5") as d:
            stats = run_node(tmp_path, {
                **combine(SYNTHWEB_SETTINGS, node_settings()), "DISPATCHER_ENDPOINT": d.endpoint,
                "DISPATCHER_NODE_NAME": "n1", "DISPATCHER_HEARTBEAT_INTERVAL": 0.5, "BROAD_SCOPE": "any",
                "DOWNLOAD_MAXSIZE": MAXSIZE, "DOWNLOAD_WARNSIZE": MAXSIZE // 4,
                "TRAP_MAX_PAGES_PER_HOST": HOST_CAP, "DOWNLOAD_TIMEOUT": 10,
            })
            state = d.status()
        log = [(r["host"], r["path"]) for r in web.requests() if r["path"] != "/robots.txt"]
    fetched = Counter(log)
    www = "www.hostile.test"
    assert stats["finish_reason"] == "finished"
    assert state["finished"] and state["frontier"] == 0 and state["leases"] == 0
    # oversized: cancelled at DOWNLOAD_MAXSIZE, declared or streamed; a gzip bomb refused
    assert stats["hostile/too_large"] == 2 and fetched[(www, "/big")] == fetched[(www, "/big-stream")] == 1
    assert stats["hostile/decompression_bomb"] == 1
    # a redirect loop ends at the dispatcher's dedup: each URL once
    assert fetched[(www, "/loop/a")] == fetched[(www, "/loop/b")] == 1
    # endless calendar and session ids: the per-host cap of the node owning the host
    assert sum(n for (h, _), n in fetched.items() if h == "cal.hostile.test") == HOST_CAP
    assert sum(n for (h, _), n in fetched.items() if h == "sess.hostile.test") == HOST_CAP
    assert stats["traps/capped_hosts"] == 2 and stats["traps/refused/host_cap"] >= 2
    # an over-long link (Scrapy's UrlLengthMiddleware), a redirect to one, a self-repeating link
    assert stats["urllength/request_ignored_count"] == 1 and stats["traps/refused/url_length"] == 1
    assert not any(p.startswith("/long-target") for _, p in log)
    assert stats["traps/refused/repeated_segment"] == 1
    assert max(p.count("/x") for _, p in log if p.startswith("/rel/")) == 3
    # SSRF bait: four loopback addresses other than the synthetic web's, none connected to
    assert stats["ssrf/refused/loopback"] == 4
    # odd URLs: one spelling fetched once, IDN in punycode, escapes normalised, the index once
    assert fetched[("odd.hostile.test", "/Path?a=1&b=2")] == 1
    assert fetched[("xn--bcher-kva.hostile.test", "/%C3%A4?x=%C3%BC")] == 1
    assert fetched[(www, "/percent/~user/a%2Fb/A")] == 1 and fetched[(www, "/space%20here/")] == 1
    assert fetched[(www, "/")] == 1 and max(fetched.values()) == 1
    assert stats["broad/links/invalid"] >= 3  # mailto:, javascript:, http://[bad/
    # broken markup and bad encodings still give items (links too, where there are any)
    by_path = {urlsplit_path(i["url"]): i for i in items(tmp_path)}
    for path in ("/malformed", "/latin1", "/nocharset"):
        assert by_path[path]["status"] == 200
    assert "caf" in by_path["/latin1"]["title"] and fetched[(www, "/malformed-target")] == 1
    assert by_path["/malformed"]["outlinks"] >= 2
    # every leased request was acked: refused ones too
    assert state["counters"]["acked"] == state["counters"]["leased"]
    assert BIG_BYTES > MAXSIZE


def urlsplit_path(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


# -- one canonicalization --------------------------------------------------------------------------

ODD_URLS = [
    "HTTP://ODD.Hostile.TEST:8080/Path?b=2&a=1#frag", "http://bücher.hostile.test/ä?x=ü",
    "http://www.hostile.test/percent/%7Euser/a%2Fb/%41", "http://www.hostile.test/space here/",
    "http://WWW.hostile.test/a/../b/./c", "http://www.hostile.test/?", "http://www.hostile.test",
    "http://www.hostile.test/a?b", "http://www.hostile.test/%7e%7E", "http://www.hostile.test/a#",
]


def test_one_canonicalization_everywhere(tmp_path: Path) -> None:
    import crawlproj.settings as module

    project = {k: getattr(module, k) for k in dir(module) if k.isupper()}  # as `scrapy crawl` has them
    crawler = get_crawler(BroadSpider, settings_dict={
        **project, "MONGO_URI": "mongodb://127.0.0.1:1/", "MONGO_SPILL_DIR": str(tmp_path)})
    spider = BroadSpider.from_crawler(crawler, scope="any")
    codec = WireCodec(spider, PARTITIONS)
    pipeline = MongoPipeline.from_crawler(crawler)
    base = "http://www.hostile.test/base/"
    body = "".join(f'<a href="{u}">x</a>' for u in ODD_URLS).encode("utf-8")
    response = HtmlResponse(base, body=body, encoding="utf-8", request=Request(base))
    links = [r for r in spider.parse(response) if isinstance(r, Request)]
    by_fp = {fingerprint_canonical(r.meta[CANONICAL]): r for r in links}
    for url in ODD_URLS:
        fp = fingerprint(url)
        canonical = canonicalize(url)
        assert canonicalize(canonical) == canonical  # idempotent: every hop may canonicalize again
        assert fp in by_fp, f"the spider's link of {url} has another fingerprint"  # spider
        assert codec.route(by_fp[fp].url)[1] == fp  # the scheduler's wire routing of that request
        assert codec.route(Request(url).url)[1] == fp  # ... and of a Request built from the raw URL
        assert wire_seed(url, PARTITIONS, "domain")["f"] == fp  # the dispatcher's seeds
        entry = pipeline._make_entry({"url": url})  # the MongoDB document _id
        assert entry is not None and entry.doc_id == fp.hex()
    # the same URL spelt differently is one fingerprint
    assert fingerprint(ODD_URLS[0]) == fingerprint("http://odd.hostile.test:8080/Path?a=1&b=2")
    assert fingerprint("http://www.hostile.test/?") == fingerprint("http://www.hostile.test")
