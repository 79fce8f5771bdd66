"""Sitemaps: robots.txt names an index, its gzip child brings pages no page links to, files past
the protocol's limits are cut and counted; off by default."""

from __future__ import annotations

import dataclasses
import gzip
import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from scrapy import Request
from scrapy.http import Response, TextResponse, XmlResponse
from scrapy.utils.test import get_crawler

from crawlproj.meta import CANONICAL, DOWNLOAD_MAXSIZE, SITEMAP_LASTMOD, SITEMAP_NESTING
from crawlproj.sitemaps import PROTOCOL_MAX_BYTES, PROTOCOL_MAX_URLS, SitemapConfig, sitemap_requests
from crawlproj.spiders.broad import BroadSpider
from crawlproj.tools.cluster import Cluster
from crawlproj.tools.runner import SYNTHWEB_SETTINGS, crawl_argv, crawl_env
from crawlproj_testing.synthweb.model import WebSpec
from crawlproj_testing.synthweb.sitemaps import FOREIGN_HOST, KEPT_TOO_MANY, sitemap_only_pages

# allow, disallow, crawl_delay, not_found (robots.txt 404: /sitemap.xml instead)
SITEMAPS = WebSpec(seed=9, hosts=4, min_pages=5, max_pages=5, special_share=0.0, slow_host_share=0.0,
                   subdomain_share=0.0, cross_host_share=0.0, sitemaps=True, orphan_pages=3,
                   sitemap_over_limits=True)


def _crawl(tmp_path: Path, seeds: list[str], **settings: Any) -> dict[str, Any]:
    stats_file = tmp_path / "stats.json"
    merged = {**SYNTHWEB_SETTINGS, "DOWNLOAD_TIMEOUT": 20, "LOGSTATS_INTERVAL": 0,
              "PROGRESS_STATS_FILE": str(stats_file), **settings}
    proc = subprocess.run(crawl_argv("broad", merged, {"seeds": ",".join(seeds)}), env=crawl_env(),
                          cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(stats_file.read_text())


def test_sitemaps_from_robots_bring_unlinked_pages_and_over_limit_files_are_cut(synthweb, tmp_path):
    proc = synthweb(SITEMAPS)
    web = proc.web
    stats = _crawl(tmp_path, proc.seed_urls(), SITEMAP_ENABLED=True)
    fetched = set(proc.fetched())
    only = sitemap_only_pages(web)
    assert only["listed"] <= fetched  # every page only a sitemap lists, in every host's scope
    assert not only["cut"] & fetched  # entries past 50,000, bytes past 50 MiB
    assert web.ground_truth() <= fetched
    paths = {p for _, p in fetched}
    assert {"/sitemap_index.xml", "/sitemaps/orphans.xml.gz", "/sitemaps/pages.xml"} <= paths
    not_found = next(h.name for h in web.hosts if h.robots == "not_found")
    assert (not_found, "/sitemap.xml") in fetched  # its robots.txt names no sitemap
    assert (not_found, "/orphan/1") in fetched
    assert not any(h == FOREIGN_HOST for h, _ in fetched)

    assert stats["sitemap/discovered"] == stats["sitemap/robots"] == 4
    assert stats["sitemap/robots_sitemaps"] == 3 and stats["sitemap/fallback"] == 1
    assert stats["sitemap/indexes"] == 3
    assert stats["sitemap/gzip"] == 3 + 2  # the orphans of each index host, too-many, too-big
    assert stats["sitemap/cut/urls"] == 1 and stats["sitemap/cut/urls_dropped"] == 3
    assert stats["sitemap/cut/bytes"] == 1
    assert stats["sitemap/filtered/out_of_scope"] == PROTOCOL_MAX_URLS - KEPT_TOO_MANY
    # pages listed: orphans (3 a host), the plain child's 5 a host (3 hosts), kept 3
    assert stats["sitemap/urls"] == 4 * 3 + 3 * 5 + KEPT_TOO_MANY + 1


def test_sitemaps_are_off_by_default(synthweb, tmp_path):
    proc = synthweb(SITEMAPS)
    stats = _crawl(tmp_path, proc.seed_urls())
    fetched = set(proc.fetched())
    assert fetched == proc.web.ground_truth()
    assert not any(name.startswith("sitemap/") for name in stats)


def _response(cls: type[Response], url: str, body: bytes, status: int = 200,
              parent: Request | None = None) -> Response:
    """A response to a request for ``url`` (with the meta of ``parent``, the request made from a sitemap)."""
    request = parent if parent is not None else Request(url)
    return cls(url, body=body, status=status, request=request)


def _project(**overrides: Any) -> dict[str, Any]:
    import crawlproj.settings as module

    return {**{k: getattr(module, k) for k in dir(module) if k.isupper()}, **overrides}


def _spider(**settings: Any) -> BroadSpider:
    crawler = get_crawler(BroadSpider, _project(SITEMAP_ENABLED=True, **settings))
    crawler.stats.open_spider()
    spider = BroadSpider.from_crawler(crawler)
    crawler.spider = spider
    return spider


def test_urlset_entries_carry_lastmod_in_scope_only_and_limits_cut():
    spider = _spider(SITEMAP_MAX_URLS=3)
    body = b"""<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
<url><loc>http://a.test/1</loc><lastmod>2026-01-02T03:04:05Z</lastmod></url>
<url><loc>http://other.test/2</loc></url>
<url><loc>http://www.a.test/3</loc></url>
<url><loc>http://a.test/4</loc></url>
<url><loc>http://a.test/5</loc></url>
</urlset>"""
    response = _response(XmlResponse, "http://a.test/sitemap.xml", body)
    requests = list(sitemap_requests(spider, response))
    assert [r.url for r in requests] == ["http://a.test/1", "http://www.a.test/3"]
    assert requests[0].meta == {CANONICAL: "http://a.test/1", SITEMAP_LASTMOD: "2026-01-02T03:04:05Z"}
    assert all(r.callback == spider.parse for r in requests)
    stats = spider.crawler.stats.get_stats()
    assert stats["sitemap/filtered/out_of_scope"] == 1
    assert (stats["sitemap/cut/urls"], stats["sitemap/cut/urls_dropped"]) == (1, 2)

    # gzip past SITEMAP_MAX_BYTES: cut there; the whole entries before the cut are read
    spider = _spider(SITEMAP_MAX_BYTES=400)
    big = body.replace(b"<url><loc>http://a.test/4", b" " * 400 + b"<url><loc>http://a.test/4")
    response = _response(Response, "http://a.test/s.xml.gz", gzip.compress(big))
    assert [r.url for r in sitemap_requests(spider, response)] == ["http://a.test/1", "http://www.a.test/3"]
    assert spider.crawler.stats.get_value("sitemap/cut/bytes") == 1


def test_robots_and_index_nesting():
    spider = _spider()
    robots = b"User-agent: *\nDisallow:\nSitemap: /idx.xml\nSitemap: http://elsewhere.test/s.xml\n"
    response = _response(TextResponse, "http://a.test/robots.txt", robots)
    requests = list(sitemap_requests(spider, response))
    assert [r.url for r in requests] == ["http://a.test/idx.xml"]  # the other host is out of scope
    assert requests[0].meta == {SITEMAP_NESTING: 1, DOWNLOAD_MAXSIZE: PROTOCOL_MAX_BYTES}
    assert requests[0].callback == spider.parse_sitemap
    index = b"""<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
<sitemap><loc>http://a.test/child.xml.gz</loc></sitemap></sitemapindex>"""
    child = list(sitemap_requests(spider, _response(XmlResponse, "http://a.test/idx.xml", index, parent=requests[0])))
    assert [(r.url, r.meta[SITEMAP_NESTING]) for r in child] == [("http://a.test/child.xml.gz", 2)]
    # an index at level 2 breaks the protocol: not followed
    deeper = _response(XmlResponse, "http://a.test/child.xml.gz", index, parent=child[0])
    assert list(sitemap_requests(spider, deeper)) == []
    assert spider.crawler.stats.get_value("sitemap/too_deep") == 1
    # robots.txt reached through redirects: its Sitemap lines still count
    hop = Request("http://a.test/robots-hop1.txt", meta={SITEMAP_NESTING: 0, "redirect_urls": ["http://a.test/robots.txt"]})
    moved = list(sitemap_requests(spider, _response(TextResponse, hop.url, robots, parent=hop)))
    assert [r.url for r in moved] == ["http://a.test/idx.xml"]
    # robots.txt that did not answer 200: the conventional /sitemap.xml
    missing = list(sitemap_requests(spider, _response(TextResponse, "http://a.test/robots.txt", b"", 404)))
    assert [r.url for r in missing] == ["http://a.test/sitemap.xml"]


@pytest.mark.parametrize("name, value, expected", [
    ("SITEMAP_MAX_URLS", 50_001, "at most the protocol's 50000"),
    ("SITEMAP_MAX_BYTES", 0, "an integer >= 1"),
    ("SITEMAP_ENABLED", "maybe", "True or False"),
])
def test_bad_setting_names_the_setting(name, value, expected):
    crawler = get_crawler(BroadSpider, _project(**{name: value}))
    with pytest.raises(ValueError, match=f"{name}: expected {expected}"):
        SitemapConfig.from_settings(crawler.settings)


def test_sitemaps_through_the_dispatcher(tmp_path, synthweb):
    """Two nodes: robots.txt and sitemap requests travel as leases, each URL fetched once."""
    proc = synthweb(dataclasses.replace(SITEMAPS, sitemap_over_limits=False, hosts=6))
    web = proc.web
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("\n".join(proc.seed_urls()) + "\n")
    settings = {**SYNTHWEB_SETTINGS, "SITEMAP_ENABLED": True, "DOWNLOAD_TIMEOUT": 10, "LOG_LEVEL": "INFO",
                "ROBOTS_HOLD_TIME": 2, "ROBOTS_RETRY_DELAY": 1, "DISPATCHER_HEARTBEAT_INTERVAL": 0.5,
                # the web's 5xx robots.txt never recovers: its postponed requests end after 5 s
                "ROBOTS_POSTPONE_MAX": 5}
    cluster = Cluster(tmp_path / "cluster", seeds, settings=settings, dispatcher_args=("--partitions", "16"))
    with cluster:
        cluster.start_node("n1")
        cluster.start_node("n2")
        assert cluster.wait(180), "the crawl did not finish"
    fetched = Counter((a.host, a.path) for a in proc.accesses() if not a.is_robots and a.status < 500)
    # the 5xx robots.txt hosts disallow everything, their sitemaps too
    listed = {(h, p) for h, p in sitemap_only_pages(web)["listed"] if web.robots_allowed(web.by_name[h], p)}
    assert len(listed) == 4 * SITEMAPS.orphan_pages and listed <= set(fetched)
    assert web.ground_truth() <= set(fetched)
    assert max(fetched.values()) == 1, [u for u, n in fetched.items() if n > 1][:5]
