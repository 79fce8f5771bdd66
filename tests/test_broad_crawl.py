"""The broad spider under Scrapy's default scheduler, as real `scrapy crawl` processes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from scrapy.settings import Settings

from crawlproj.spiders.broad import BroadConfig
from crawlproj.tools.runner import SYNTHWEB_SETTINGS, crawl_argv, crawl_env
from crawlproj_testing.synthweb.model import RFC9309_OUTCOME, WebSpec

# robots.txt fetches have their own time-out: as short as the downloads' (the default is 20 s)
FAST = {"DOWNLOAD_TIMEOUT": 2, "ROBOTS_FETCH_TIMEOUT": 2, "LOG_LEVEL": "INFO", "LOGSTATS_INTERVAL": 0}


def crawl(tmp_path: Path, spider_args: dict[str, Any], settings: dict[str, Any] | None = None,
          timeout: float = 240) -> tuple[list[dict[str, Any]], str]:
    items_file = tmp_path / "items.jl"
    items_file.unlink(missing_ok=True)  # feeds append to an existing file
    merged = {**SYNTHWEB_SETTINGS, **FAST, "FEEDS": {str(items_file): {"format": "jsonlines"}},
              **(settings or {})}
    proc = subprocess.run(crawl_argv("broad", merged, spider_args), env=crawl_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    items = [json.loads(line) for line in items_file.read_text().splitlines()] if items_file.exists() else []
    return items, proc.stderr


def test_crawl_of_50_hosts_equals_ground_truth(synthweb, tmp_path):
    proc = synthweb(WebSpec(seed=2, hosts=60, min_pages=8, max_pages=120, special_share=0.08),
                    hold_seconds=4)
    web = proc.web
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("# every host root\n" + "\n".join(proc.seed_urls()) + "\n")
    items, log = crawl(tmp_path, {"seeds": str(seeds)})

    fetched = list(proc.fetched())
    # RobotsThrottleMiddleware (on by default) follows RFC 9309: 2xx rules, 4xx allow all,
    # 5xx and time-outs disallow all. The crawl equals the ground truth on every host.
    checked = {h.name for h in web.hosts}
    truth = web.ground_truth(outcome=RFC9309_OUTCOME)
    got = set(fetched)
    assert len(truth) > 1000
    assert got == truth, (sorted(truth - got)[:10], sorted(got - truth)[:10])

    # No robots-disallowed path was ever requested, on any host.
    for host, path in fetched:
        assert web.robots_allowed(web.by_name[host], path), (host, path)

    # Without faults no page is fetched twice, except 5xx answers that Scrapy retries.
    counts: dict[tuple[str, str], int] = {}
    for a in proc.accesses():
        if not a.is_robots and a.status < 500:
            counts[(a.host, a.path)] = counts.get((a.host, a.path), 0) + 1
    twice = [f"{host}{path}" for (host, path), n in counts.items() if n > 1]
    # on failure: the pages and Scrapy's retry counts (a download time-out is a client-side fault)
    assert not twice, (twice[:10], [line for line in log.splitlines() if "retry/" in line])

    # One item per response that reached the spider; redirects are reported at their target.
    finals = {(i["final_url"]) for i in items}
    assert len(finals) == len(items)
    answered = {proc.url(a.host, a.path) for a in proc.accesses()
                if not a.is_robots and a.status not in (0, 301, 302) and a.host in checked}
    assert answered <= finals
    page = next(i for i in items if i["status"] == 200 and i["title"])
    assert set(page) == {"url", "final_url", "status", "headers", "title", "content_length",
                         "content_hash", "outlinks", "depth", "fetched_at"}
    assert page["headers"]["Content-Type"].startswith("text/html")
    assert page["outlinks"] > 0 and len(page["content_hash"]) == 40
    # an item reached through redirects keeps the URL first requested
    moved = {proc.url(a.host, a.path) for a in proc.accesses() if a.status == 301}
    assert all(i["url"] in moved for i in items if i["url"] != i["final_url"])
    assert {i["status"] for i in items} >= {200, 404, 500}
    latin1 = [i for i in items if "charset=iso-8859-1" in i["headers"].get("Content-Type", "")]
    assert latin1 and all(i["title"].endswith("café") for i in latin1)


def test_seeds_from_comma_list_and_depth_limit(synthweb, tmp_path):
    proc = synthweb(WebSpec(seed=3, hosts=12, min_pages=5, max_pages=30))
    roots = [proc.url(h.name) for h in proc.web.hosts if h.robots == "allow"][:2]
    items, _ = crawl(tmp_path, {"seeds": ",".join(roots + ["not a url", "ftp://x.test/"]), "max_depth": 0})
    assert sorted(i["url"] for i in items) == sorted(roots)
    assert {i["depth"] for i in items} == {0}


@pytest.mark.parametrize("kind", ["list", "set"])
def test_seeds_from_redis(synthweb, redis_url, tmp_path, kind):
    import redis

    proc = synthweb(WebSpec(seed=3, hosts=12, min_pages=5, max_pages=30))
    roots = [proc.url(h.name) for h in proc.web.hosts if h.robots == "allow"][:3]
    client = redis.Redis.from_url(redis_url)
    client.delete("broad:start_urls")
    if kind == "list":
        # plain strings and the scrapy-redis JSON format both work
        client.rpush("broad:start_urls", roots[0], json.dumps({"url": roots[1]}), roots[2])
    else:
        client.sadd("broad:start_urls", *roots)
    items, _ = crawl(tmp_path, {"seeds": "redis", "max_depth": 0}, {"BROAD_REDIS_URL": redis_url})
    assert sorted(i["url"] for i in items) == sorted(roots)
    assert client.exists("broad:start_urls") == 0  # consumed, as scrapy-redis does
    client.close()


def test_scope_and_patterns(synthweb, tmp_path):
    proc = synthweb(WebSpec(seed=4, hosts=30, min_pages=5, max_pages=40, subdomain_share=0.4,
                            cross_host_share=0.3))
    web = proc.web
    parent = next(h for h in web.hosts if f"blog.{h.name}" in web.by_name and h.robots == "allow")
    items, _ = crawl(tmp_path, {"seeds": proc.url(parent.name), "deny": r"/private/"})
    hosts = {i["final_url"].split("/")[2].split(":")[0] for i in items}
    # scope "domain": the seed's registered domain, subdomains included, nothing else
    assert hosts <= {parent.name, f"blog.{parent.name}"}
    assert parent.name in hosts
    assert not any("/private/" in i["url"] for i in items)
    items, _ = crawl(tmp_path, {"seeds": proc.url(parent.name), "scope": "any", "allow": r"/$|/p/1\d*$"})
    hosts = {i["final_url"].split("/")[2].split(":")[0] for i in items}
    assert len(hosts) > 2


def test_bad_scope_fails_at_start_with_the_setting_name():
    """Checked in process; a real `scrapy crawl` with a bad BROAD_SCOPE is a row of
    tests/test_hardening_settings.py (one line on the terminal, exit code 1)."""
    expected = r"^BROAD_SCOPE \(or -a scope\): expected one of .*, got 'galaxy'$"
    with pytest.raises(ValueError, match=expected):
        BroadConfig.from_settings(Settings({"BROAD_SCOPE": "galaxy"}))
    with pytest.raises(ValueError, match=expected):  # -a scope=galaxy
        BroadConfig.from_settings(Settings({"BROAD_SCOPE": "domain"}), scope="galaxy")
