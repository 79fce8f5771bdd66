"""The synthetic web itself: determinism, hand-checked ground truth, every robots variant served."""

from __future__ import annotations

import dataclasses
import gzip
import http.client

import pytest
from scrapy.utils.sitemap import Sitemap

from conftest import wait_until
from crawlproj_testing.synthweb.changes import Changes, Version
from crawlproj_testing.synthweb.sitemaps import CUT_TOO_MANY, PROTOCOL_MAX_BYTES, PROTOCOL_MAX_URLS, sitemap_only_pages
from crawlproj_testing.synthweb.model import (
    RFC9309_OUTCOME,
    ROBOTS_VARIANTS,
    SCRAPY_DEFAULT_OUTCOME,
    Web,
    WebSpec,
)

TINY = WebSpec(seed=7, hosts=3, min_pages=4, max_pages=4, links_per_page=2, cross_host_share=0.0,
               private_share=0.0, special_share=0.0, subdomain_share=0.0, slow_host_share=0.0)


def get(port: int, host: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": f"{host}:{port}", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_same_seed_same_web_different_seed_different_web():
    a, b, c = Web(WebSpec(seed=3)), Web(WebSpec(seed=3)), Web(WebSpec(seed=4))
    assert a.hosts == b.hosts
    assert [a.page(h.name, 1) for h in a.hosts] == [b.page(h.name, 1) for h in b.hosts]
    assert a.ground_truth() == b.ground_truth()
    assert [h.pages for h in a.hosts] != [h.pages for h in c.hosts]


def test_same_seed_serves_same_bytes(synthweb):
    spec = WebSpec(seed=11, hosts=12)
    first, second = synthweb(spec), synthweb(spec)
    for host in first.web.hosts:
        if host.robots == "timeout":
            continue
        for path in ("/", "/robots.txt", first.web.page_path(host, host.pages - 1)):
            a = get(first.port, host.name, path)
            b = get(second.port, host.name, path)
            # bodies carry absolute links with the port: compare with the port normalised
            assert a[0] == b[0]
            assert a[2].replace(str(first.port).encode(), b"PORT") == b[2].replace(str(second.port).encode(), b"PORT")


def test_ground_truth_of_a_hand_checked_web():
    web = Web(TINY)
    # Three hosts of four plain pages; with no cross links a seed reaches exactly its own host:
    # "/" links to /p/1 (the chain), /p/1 to /p/2, /p/2 to /p/3, /p/3 back to "/".
    names = [h.name for h in web.hosts]
    assert names == ["site0001.test", "site0002.test", "site0003.test"]
    assert [h.robots for h in web.hosts] == ["allow", "disallow", "crawl_delay"]
    assert web.ground_truth([("site0001.test", "/")]) == {
        ("site0001.test", "/"), ("site0001.test", "/p/1"), ("site0001.test", "/p/2"),
        ("site0001.test", "/p/3")}
    # site0003 serves Crawl-delay: it still allows everything
    assert len(web.ground_truth([("site0003.test", "/")])) == 4
    # a seed on an unknown host or a disallowed path is not fetched
    assert web.ground_truth([("nowhere.test", "/")]) == set()


def test_robots_rules_follow_rfc9309():
    web = Web(WebSpec(hosts=len(ROBOTS_VARIANTS)))
    host = {h.robots: h for h in web.hosts}
    rules = host["disallow"]
    assert not web.robots_allowed(rules, "/private/1")
    assert web.robots_allowed(rules, "/private/7")  # longer Allow wins
    assert web.robots_allowed(rules, "/private/71")  # prefix match
    assert web.robots_allowed(rules, "/p/1")
    for variant in ("server_error", "unavailable", "timeout"):
        assert not web.robots_allowed(host[variant], "/p/1"), variant
        assert web.robots_allowed(host[variant], "/p/1", SCRAPY_DEFAULT_OUTCOME), variant
    for variant in ("not_found", "garbage", "allow", "crawl_delay"):
        assert web.robots_allowed(host[variant], "/private/1"), variant
    for variant in ("redirect", "oversized"):
        assert not web.robots_allowed(host[variant], "/private/1"), variant
    assert set(RFC9309_OUTCOME) == set(ROBOTS_VARIANTS)


def test_ground_truth_follows_redirects_and_stops_loops():
    web = Web(WebSpec(seed=5, hosts=20, special_share=0.3))
    truth = web.ground_truth()
    loops = [(h, i) for h in web.hosts for i in range(1, h.pages)
             if web.page_kind(h, i) == "loop" and (h.name, web.page_path(h, i)) in truth]
    assert loops, "the web should contain reachable redirect loops"
    host, index = loops[0]
    assert (host.name, f"/loop/{index}") in truth
    redirects = [(h, i) for h in web.hosts for i in range(1, h.pages)
                 if web.page_kind(h, i) == "redirect" and (h.name, web.page_path(h, i)) in truth]
    host, index = redirects[0]
    target = web.page(host.name, index).redirect_to
    assert web.robots_allowed(host, target) == ((host.name, target) in truth)


def test_every_robots_variant_is_served(synthweb):
    proc = synthweb(WebSpec(hosts=len(ROBOTS_VARIANTS)), hold_seconds=0.5)
    host = {h.robots: h.name for h in proc.web.hosts}
    assert get(proc.port, host["allow"], "/robots.txt")[0] == 200
    status, _, body = get(proc.port, host["disallow"], "/robots.txt")
    assert status == 200 and b"Disallow: /private/" in body and b"User-agent: otherbot" in body
    assert b"Crawl-delay: 0.5" in get(proc.port, host["crawl_delay"], "/robots.txt")[2]
    assert get(proc.port, host["not_found"], "/robots.txt")[0] == 404
    assert get(proc.port, host["server_error"], "/robots.txt")[0] == 500
    assert get(proc.port, host["unavailable"], "/robots.txt")[0] == 503
    status, headers, _ = get(proc.port, host["redirect"], "/robots.txt")
    assert status == 301 and headers["Location"].endswith("/robots-hop1.txt")
    assert get(proc.port, host["redirect"], "/robots-hop1.txt")[0] == 302
    assert b"Disallow: /private/" in get(proc.port, host["redirect"], "/robots-hop2.txt")[2]
    status, _, body = get(proc.port, host["oversized"], "/robots.txt")
    assert status == 200 and len(body) > 500 * 1024 and body.startswith(b"User-agent: otherbot")
    status, _, body = get(proc.port, host["garbage"], "/robots.txt")
    assert status == 200 and len(body) == 2048
    try:
        get(proc.port, host["timeout"], "/robots.txt")
        raise AssertionError("the time-out variant answered")
    except (http.client.RemoteDisconnected, ConnectionError):
        pass
    # the robots answer can be switched at run time (a 5xx host recovering)
    proc.set_robots(host["unavailable"], "allow")
    assert get(proc.port, host["unavailable"], "/robots.txt")[0] == 200
    log = proc.accesses()
    assert {(a.host, a.status) for a in log if a.path == "/robots.txt"} >= {
        (host["allow"], 200), (host["not_found"], 404), (host["timeout"], 0)}
    assert all(a.end_ms >= a.start_ms for a in log)


def test_special_pages_are_served(synthweb):
    proc = synthweb(WebSpec(seed=5, hosts=20, special_share=0.3))
    web = proc.web
    seen = set()
    for h in web.hosts:
        for i in range(1, h.pages):
            kind = web.page_kind(h, i)
            if kind in seen:
                continue
            seen.add(kind)
            status, headers, body = get(proc.port, h.name, web.page_path(h, i))
            expected = {"html": 200, "not_found": 404, "server_error": 500, "redirect": 301,
                        "loop": 301, "binary": 200, "huge": 200, "latin1": 200}[kind]
            assert status == expected, kind
            if kind == "huge":
                assert len(body) >= 2 * 1024 * 1024
            if kind == "latin1":
                assert "iso-8859-1" in headers["Content-Type"]
                body.decode("iso-8859-1")
                assert b"se\xf1al" in body
            if kind == "binary":
                assert headers["Content-Type"] == "application/octet-stream"
    assert seen == {"html", "not_found", "server_error", "redirect", "loop", "binary", "huge", "latin1"}
    assert get(proc.port, "unknown.test", "/")[0] == 404
    assert get(proc.port, web.hosts[0].name, "/p/999999")[0] == 404


# -- a changing web ---------------------------------------------------------------------------

CHANGING = WebSpec(seed=9, hosts=4, min_pages=40, max_pages=40, special_share=0.0, slow_host_share=0.0,
                   change_classes=((0.1, 3600.0), (0.2, 86400.0)))


def test_change_times_are_a_pure_function_of_the_spec_and_follow_the_rates():
    web = Web(CHANGING)
    a, b = Changes(web), Changes(web)
    pages = [web.page(h.name, i) for h in web.hosts for i in range(h.pages)]
    periods = [a.period(p) for p in pages]
    assert periods.count(3600.0) and periods.count(86400.0) and periods.count(None) > len(pages) / 2
    hourly = next(p for p in pages if a.period(p) == 3600.0)
    # extended in one step or in many, the same times
    for t in range(0, 30 * 86400, 5000):
        b.change_times(hourly, t)
    assert a.change_times(hourly, 30 * 86400) == b.change_times(hourly, 30 * 86400)
    # about one change an hour over 30 days (Poisson: 720 expected, sd ~27)
    assert 600 < len(a.change_times(hourly, 30 * 86400)) < 840
    never = next(p for p in pages if a.period(p) is None)
    assert a.history(never, 10**7) == [Version(0, 0.0)]
    periodic = Changes(Web(dataclasses.replace(CHANGING, change_process="periodic")))
    times = periodic.change_times(hourly, 10 * 3600)
    assert [round(t2 - t1, 6) for t1, t2 in zip(times, times[1:])] == [3600.0] * (len(times) - 1)
    with pytest.raises(ValueError, match="change_classes"):
        Changes(Web(dataclasses.replace(CHANGING, change_classes=((0.8, 60.0), (0.5, 60.0)))))


def test_freshness_of_a_copy_is_the_share_of_time_it_equals_the_live_page():
    changes = Changes(Web(dataclasses.replace(CHANGING, change_process="periodic")))
    web = changes.web
    page = next(web.page(h.name, i) for h in web.hosts for i in range(h.pages) if changes.period(web.page(h.name, i)) == 3600.0)
    first, second = changes.change_times(page, 3 * 3600)[:2]
    # fetched at 0: fresh until the first change; fetched again just after it: fresh until the second
    assert changes.freshness(page, [0.0], 0.0, second) == pytest.approx(first / second)
    assert changes.freshness(page, [0.0, first + 60], 0.0, second) == pytest.approx((second - 60) / second)
    assert changes.freshness(page, [], 0.0, 3600.0) == 0.0
    never = next(web.page(h.name, i) for h in web.hosts for i in range(h.pages) if not changes.period(web.page(h.name, i)))
    assert changes.freshness(never, [100.0], 0.0, 1000.0) == pytest.approx(0.9)


def test_changing_web_answers_validators_304_and_reports_history(synthweb):
    proc = synthweb(CHANGING)
    web, changes = proc.web, Changes(proc.web)
    pages = [web.page(h.name, i) for h in web.hosts for i in range(h.pages)]
    hourly = next(p for p in pages if changes.period(p) == 3600.0)
    never = next(p for p in pages if changes.period(p) is None)
    assert proc.clock() == 0.0  # a virtual clock: it stands still until moved
    status, headers, body = get(proc.port, hourly.host, hourly.path)
    assert status == 200 and b'<p id="version">version 0</p>' in body
    etag, last_modified = headers["ETag"], headers["Last-Modified"]
    assert last_modified == "Thu, 01 Jan 2026 00:00:00 GMT"
    assert get(proc.port, hourly.host, hourly.path, {"If-None-Match": etag})[:3:2] == (304, b"")
    assert get(proc.port, hourly.host, hourly.path, {"If-Modified-Since": last_modified})[0] == 304
    # If-None-Match decides when both are sent (RFC 9110 13.2.2)
    assert get(proc.port, hourly.host, hourly.path, {"If-None-Match": '"other"',
                                                     "If-Modified-Since": last_modified})[0] == 200

    first_change = changes.change_times(hourly, 10**6)[0]
    proc.clock(set_to=first_change + 1)
    status, headers, body = get(proc.port, hourly.host, hourly.path, {"If-None-Match": etag})
    assert status == 200 and headers["ETag"] != etag and b"version 1</p>" in body
    assert get(proc.port, hourly.host, hourly.path, {"If-Modified-Since": last_modified})[0] == 200
    assert proc.clock(advance=2 * 86400) == pytest.approx(first_change + 1 + 2 * 86400)
    history = proc.history(hourly.host, hourly.path)
    assert history["period"] == 3600.0
    assert history["versions"] == [[v.number, v.since] for v in changes.history(hourly, history["now"])]
    assert len(history["versions"]) > 20
    # a page that never changes: 304 whenever asked
    _, headers, _ = get(proc.port, never.host, never.path)
    proc.clock(advance=30 * 86400)
    assert get(proc.port, never.host, never.path, {"If-None-Match": headers["ETag"]})[0] == 304
    assert proc.history(never.host, never.path)["versions"] == [[0, 0.0]]
    assert {(a.path, a.status) for a in proc.accesses()} >= {(hourly.path, 304), (hourly.path, 200)}


def test_static_web_serves_no_validators(synthweb):
    proc = synthweb(TINY)
    status, headers, body = get(proc.port, "site0001.test", "/")
    assert status == 200 and "ETag" not in headers and "Last-Modified" not in headers
    assert b'id="version"' not in body
    assert get(proc.port, "site0001.test", "/", {"If-None-Match": "*"})[0] == 200


def test_compressed_clock_moves_web_time(synthweb):
    proc = synthweb(CHANGING, time_scale=3600.0)
    start = proc.clock()
    wait_until(lambda: proc.clock() > start + 360, 10, "the web clock to move 6 web minutes")


# -- sitemaps ---------------------------------------------------------------------------------

SITEMAPS = WebSpec(seed=9, hosts=3, min_pages=5, max_pages=5, special_share=0.0, slow_host_share=0.0,
                   sitemaps=True, orphan_pages=3, sitemap_over_limits=True)


def test_sitemaps_are_served_and_list_pages_no_page_links_to(synthweb):
    proc = synthweb(SITEMAPS)
    web, port = proc.web, proc.port
    first, second = web.hosts[0].name, web.hosts[1].name
    robots = get(port, first, "/robots.txt")[2].decode()
    assert f"Sitemap: http://{first}:{port}/sitemap_index.xml" in robots
    index = Sitemap(get(port, first, "/sitemap_index.xml")[2])
    assert index.type == "sitemapindex"
    children = [e["loc"] for e in index]
    assert [c.rsplit("/", 1)[1] for c in children] == ["orphans.xml.gz", "pages.xml", "too-many.xml.gz",
                                                       "too-big.xml.gz"]
    assert len(list(Sitemap(get(port, second, "/sitemap_index.xml")[2]))) == 2  # no over-limit children
    status, headers, body = get(port, first, "/sitemaps/orphans.xml.gz")
    assert status == 200 and headers["Content-Type"] == "application/x-gzip"
    orphans = list(Sitemap(gzip.decompress(body)))
    assert [e["loc"] for e in orphans] == [f"http://{first}:{port}/orphan/{i}" for i in (1, 2, 3)]
    assert all(e["lastmod"] == "2026-01-01T00:00:00Z" for e in orphans)
    assert [e["loc"] for e in Sitemap(get(port, second, "/sitemap.xml")[2])] == [
        f"http://{second}:{port}/orphan/{i}" for i in (1, 2, 3)]
    assert len(list(Sitemap(get(port, first, "/sitemaps/pages.xml")[2]))) == 5
    truth = web.ground_truth()
    only = sitemap_only_pages(web)
    assert only["listed"] and only["cut"] and not (only["listed"] | only["cut"]) & truth
    for host, path in only["listed"] | only["cut"]:
        assert get(port, host, path)[0] == 200
    assert get(port, first, "/orphan/4")[0] == 404 and get(port, second, "/cut/1")[0] == 404
    too_many = list(Sitemap(gzip.decompress(get(port, first, "/sitemaps/too-many.xml.gz")[2])))
    assert len(too_many) == PROTOCOL_MAX_URLS + CUT_TOO_MANY
    assert too_many[PROTOCOL_MAX_URLS]["loc"].endswith("/cut/1")
    too_big = gzip.decompress(get(port, first, "/sitemaps/too-big.xml.gz")[2])
    assert len(too_big) > PROTOCOL_MAX_BYTES and too_big.rstrip().endswith(b"/cut/4</loc></url>\n</urlset>")
    assert get(port, first, "/sitemaps/too-big.xml.gz")[0] == 200 and get(port, second, "/sitemaps/too-big.xml.gz")[0] == 404
