"""Revisit policies (crawlproj.revisit.policy): fixed, adaptive, gone and failing URLs, outcomes."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
import scrapy
from scrapy.http import HtmlResponse

from crawlproj.meta import REVISIT_OUTCOME, SITEMAP_LASTMOD
from scrapy.settings import Settings

import crawlproj.settings
from crawlproj.dispatcher.revisits import policy_of
from crawlproj.middlewares.revisit import CHANGED, NOT_MODIFIED, content_hash
from crawlproj.revisit.config import RevisitConfig
from crawlproj.revisit.policy import Outcome, Policy, lastmod_time, outcome_of
from crawlproj_testing.synthweb.changes import Changes
from crawlproj_testing.synthweb.model import Web, WebSpec

OK = Outcome(200)
SAME, NEW = Outcome(200, changed=False), Outcome(200, changed=True)
HOUR, DAY = 3600.0, 86400.0


def test_none_keeps_no_schedule_and_fixed_comes_back_after_its_interval():
    assert Policy("none").first(OK, 0.0) is None
    fixed = Policy("fixed", interval=DAY)
    row = fixed.first(OK, 1000.0)
    assert (row.next_fetch, row.interval, row.last_change) == (1000.0 + DAY, DAY, 1000.0)
    for outcome in (SAME, NEW, Outcome(304, changed=False), OK):
        t = row.next_fetch + 5
        row = fixed.update(row, outcome, t)
        assert (row.next_fetch, row.interval) == (t + DAY, DAY)
    assert row.last_change < row.last_fetch  # the last outcome could not tell a change


def test_adaptive_shortens_on_change_lengthens_when_not_within_bounds():
    policy = Policy("adaptive", interval=DAY, min_interval=HOUR, max_interval=10 * DAY, inc_rate=0.5, dec_rate=0.5)
    row = policy.first(OK, 0.0)
    row = policy.update(row, NEW, DAY)
    assert row.interval == 0.5 * DAY + 0.5 * HOUR and row.last_change == DAY  # StormCrawler's shrink
    row = policy.update(row, Outcome(304, changed=False), 2 * DAY)
    assert row.interval == (0.5 * DAY + 0.5 * HOUR) * 1.5
    assert policy.update(row, OK, 3 * DAY).interval == row.interval  # unknown: unchanged interval
    for i in range(20):
        row = policy.update(row, NEW, row.next_fetch)
    assert HOUR < row.interval < HOUR * 1.001  # approaches the minimum, never below
    for i in range(20):
        row = policy.update(row, SAME, row.next_fetch)
    assert row.interval == 10 * DAY and row.next_fetch == row.last_fetch + 10 * DAY
    # Nutch's sync: a page unchanged for long is fetched on its own rhythm
    synced = dataclasses.replace(policy, sync_rate=0.2)
    row = synced.update(dataclasses.replace(row, interval=DAY, last_change=0.0), SAME, 5 * DAY)
    assert row.interval == 5 * DAY and row.next_fetch == 5 * DAY - DAY + 5 * DAY


def test_sitemap_lastmod_starts_the_adaptive_interval():
    policy = Policy("adaptive", interval=DAY, min_interval=HOUR, max_interval=30 * DAY)
    now = lastmod_time("2026-01-11T00:00:00Z")
    row = policy.first(Outcome(200, lastmod="2026-01-01T00:00:00Z"), now)
    assert row.interval == 10 * DAY and row.last_change == lastmod_time("2026-01-01T00:00:00+00:00")
    assert lastmod_time("Thu, 01 Jan 2026 00:00:00 GMT") == lastmod_time("2026-01-01")
    assert lastmod_time("yesterday") is None


def test_gone_urls_back_off_and_retire_failing_ones_retry_on_their_own_schedule():
    policy = Policy("fixed", interval=DAY, max_interval=30 * DAY, gone_after=3, retry_base=60.0)
    row = policy.first(OK, 0.0)
    row = policy.update(row, Outcome(404), DAY)
    assert (row.fails, row.next_fetch, row.interval) == (1, DAY + 2 * DAY, DAY)
    row = policy.update(row, Outcome(410), row.next_fetch)
    assert (row.fails, row.next_fetch - row.last_fetch) == (2, 4 * DAY)
    assert policy.update(row, Outcome(404), row.next_fetch) is None  # retired
    row = policy.first(OK, 0.0)
    delays = []
    for status in (503, 0, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500):
        t = row.next_fetch
        row = policy.update(row, Outcome(status), t)
        delays.append(row.next_fetch - t)
    assert delays[:4] == [60.0, 120.0, 240.0, 480.0] and max(delays) == DAY and row.interval == DAY
    row = policy.update(row, SAME, row.next_fetch)
    assert row.fails == 0 and row.next_fetch == row.last_fetch + DAY


def test_outcome_from_a_response_and_on_the_wire():
    request = scrapy.Request("http://a.test/", meta={REVISIT_OUTCOME: CHANGED, SITEMAP_LASTMOD: "2026-01-01"})
    body = b"<html>x</html>"
    response = HtmlResponse("http://a.test/", body=body, request=request,
                            headers={"ETag": '"e1"', "Last-Modified": "Thu, 01 Jan 2026 00:00:00 GMT"})
    outcome = outcome_of(response)
    assert outcome == Outcome(200, True, '"e1"', "Thu, 01 Jan 2026 00:00:00 GMT", bytes.fromhex(content_hash(body)),
                              "2026-01-01")
    wire = msgpack.unpackb(msgpack.packb(outcome.to_wire(), use_bin_type=True), raw=False)
    assert Outcome.from_wire(wire) == outcome
    not_modified = outcome_of(HtmlResponse("http://a.test/", status=304, request=scrapy.Request(
        "http://a.test/", meta={REVISIT_OUTCOME: NOT_MODIFIED})))
    assert (not_modified.changed, not_modified.content_hash) == (False, None)
    assert Outcome.from_wire(Outcome(0).to_wire()) == Outcome(0)
    assert outcome_of(HtmlResponse("http://a.test/", body=body, request=scrapy.Request("http://a.test/"))).changed is None


def test_bad_policies_are_refused():
    with pytest.raises(ValueError, match="expected one of"):
        Policy("sometimes")
    with pytest.raises(ValueError, match="min_interval <= interval"):
        Policy("fixed", interval=10.0, min_interval=60.0)
    with pytest.raises(ValueError, match="retry_base > 0 and gone_after >= 1"):
        Policy("fixed", gone_after=0)
    with pytest.raises(ValueError, match="retry base, retire after"):
        policy_of(["fixed", 60, 60, 60, 30.0, 1.5])


def test_retry_base_and_retire_after_are_node_settings_sent_in_the_outcome():
    settings = Settings()
    settings.setmodule(crawlproj.settings)
    assert RevisitConfig.from_settings(settings).policy == Policy()  # the defaults are Policy's
    settings.setdict({"REVISIT_POLICY": "fixed", "REVISIT_INTERVAL": 600, "REVISIT_RETRY_BASE": 5,
                      "REVISIT_RETIRE_AFTER": 1, "REVISIT_SHARE": 0.25, "REVISIT_KEY_POLICIES": {"b.test": "adaptive"}})
    config = RevisitConfig.from_settings(settings)
    assert config.share == 0.25
    wire = config.wire_outcome("b.test", Outcome(404))
    assert wire is not None and wire["rp"] == ["adaptive", 600.0, 600.0, 30 * DAY, 5.0, 1]
    policy = policy_of(wire["rp"])
    assert (policy.retry_base, policy.gone_after) == (5.0, 1)
    row = policy.first(OK, 0.0)
    assert policy.update(row, Outcome(503), DAY).next_fetch == DAY + 5.0
    assert policy.update(row, Outcome(410), DAY) is None  # retired after one gone answer
    assert policy_of(["fixed", 60, 60, 60]) == Policy("fixed", 60.0, 60.0, 60.0)  # a node before these settings


def test_adaptive_follows_each_page_of_the_changing_web():
    """On the model of the changing web: hourly pages end near the minimum, steady ones at the max."""
    web = Web(WebSpec(seed=4, hosts=2, min_pages=60, max_pages=60, special_share=0.0,
                      change_classes=((0.2, HOUR), (0.2, DAY))))
    changes = Changes(web)
    policy = Policy("adaptive", interval=6 * HOUR, min_interval=600.0, max_interval=14 * DAY)
    end = 60 * DAY
    finals: dict[float | None, list[float]] = {}
    for page in (web.page(h.name, i) for h in web.hosts for i in range(h.pages)):
        row = policy.first(OK, 0.0)
        seen = 0
        while row.next_fetch < end:
            t = row.next_fetch
            version = len(changes.change_times(page, t))
            row = policy.update(row, Outcome(200, changed=version != seen), t)
            seen = version
        finals.setdefault(changes.period(page), []).append(row.interval)
    median = {period: sorted(v)[len(v) // 2] for period, v in finals.items()}
    assert median[HOUR] < 2 * HOUR < 2 * DAY < median[DAY] * 4
    assert median[None] == 14 * DAY
