"""The synthetic web itself: determinism, hand-checked ground truth, every robots variant served."""

from __future__ import annotations

import http.client

from crawlproj_testing.synthweb.model import (
    RFC9309_OUTCOME,
    ROBOTS_VARIANTS,
    SCRAPY_DEFAULT_OUTCOME,
    Web,
    WebSpec,
)

TINY = WebSpec(seed=7, hosts=3, min_pages=4, max_pages=4, links_per_page=2, cross_host_share=0.0,
               private_share=0.0, special_share=0.0, subdomain_share=0.0, slow_host_share=0.0)


def get(port: int, host: str, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": f"{host}:{port}"})
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
