"""crawlproj.stats.StatsCollector: Scrapy's MemoryStatsCollector's values and warnings."""

import warnings

import pytest
from scrapy.exceptions import ScrapyDeprecationWarning
from scrapy.statscollectors import MemoryStatsCollector
from scrapy.utils.test import get_crawler

from crawlproj.stats import StatsCollector


def _drive(stats):
    stats.open_spider()
    stats.inc_value("a")
    stats.inc_value("a", 2)
    stats.inc_value("b", 1, start=10)
    stats.max_value("m", 3)
    stats.max_value("m", 1)
    stats.min_value("n", 3)
    stats.min_value("n", 1)
    stats.set_value("s", "x")
    values = (stats.get_value("a"), stats.get_value("missing", 7), dict(stats.get_stats()))
    stats.clear_stats()
    stats.set_stats({"k": 1})
    return values, stats.get_stats()


def test_same_values_as_scrapys_collector():
    crawler = get_crawler()
    assert _drive(StatsCollector(crawler)) == _drive(MemoryStatsCollector(crawler))


def test_project_settings_use_it():
    from crawlproj import settings

    assert settings.STATS_CLASS == "crawlproj.stats.StatsCollector"


@pytest.mark.parametrize("call", [
    lambda s, sp: s.inc_value("a", spider=sp), lambda s, sp: s.max_value("a", 1, spider=sp),
    lambda s, sp: s.min_value("a", 1, spider=sp), lambda s, sp: s.set_value("a", 1, spider=sp),
    lambda s, sp: s.get_value("a", spider=sp), lambda s, sp: s.get_stats(spider=sp),
    lambda s, sp: s.open_spider(sp), lambda s, sp: s.close_spider(sp, reason="finished"),
])
def test_a_spider_argument_still_warns(call):
    stats = StatsCollector(get_crawler())
    with pytest.warns(ScrapyDeprecationWarning, match="'spider' argument"):
        call(stats, object())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        call(stats, None)
