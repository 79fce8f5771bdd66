"""The node's stats collector (``STATS_CLASS``): Scrapy's MemoryStatsCollector, cheaper to call.

Scrapy's StatsCollector defines ``__getattribute__`` to wrap its methods in a check for the
deprecated ``spider`` argument. That hook runs on every attribute lookup of the collector,
its own ``self._stats`` included, and a lookup of a name that is not wrapped raises and
catches an AttributeError first. A node calls ``inc_value`` and ``max_value`` a few dozen
times a page, and on the synthetic web this hook and its wrapper took about 3% of the node's
main thread (py-spy).

This class keeps Scrapy's behaviour: the same methods, the same values, the same
ScrapyDeprecationWarning when a caller passes ``spider``. It only looks attributes up the
ordinary way.
"""

from __future__ import annotations

import warnings
from typing import Any

from scrapy.exceptions import ScrapyDeprecationWarning
from scrapy.statscollectors import MemoryStatsCollector, StatsT


def _spider_passed(method: str) -> None:
    warnings.warn(f"Passing a 'spider' argument to StatsCollector.{method}() is deprecated and "
                  "the argument will be removed in a future Scrapy version.",
                  category=ScrapyDeprecationWarning, stacklevel=3)


class StatsCollector(MemoryStatsCollector):
    __getattribute__ = object.__getattribute__  # no per-lookup wrapping (see the module docstring)

    def get_value(self, key: str, default: Any = None, spider: Any = None) -> Any:
        if spider is not None:
            _spider_passed("get_value")
        return self._stats.get(key, default)

    def get_stats(self, spider: Any = None) -> StatsT:
        if spider is not None:
            _spider_passed("get_stats")
        return self._stats

    def set_value(self, key: str, value: Any, spider: Any = None) -> None:
        if spider is not None:
            _spider_passed("set_value")
        self._stats[key] = value

    def set_stats(self, stats: StatsT, spider: Any = None) -> None:
        if spider is not None:
            _spider_passed("set_stats")
        self._stats = stats

    def inc_value(self, key: str, count: int = 1, start: int = 0, spider: Any = None) -> None:
        if spider is not None:
            _spider_passed("inc_value")
        d = self._stats
        d[key] = d.setdefault(key, start) + count

    def max_value(self, key: str, value: Any, spider: Any = None) -> None:
        if spider is not None:
            _spider_passed("max_value")
        d = self._stats
        d[key] = max(d.setdefault(key, value), value)

    def min_value(self, key: str, value: Any, spider: Any = None) -> None:
        if spider is not None:
            _spider_passed("min_value")
        d = self._stats
        d[key] = min(d.setdefault(key, value), value)

    def clear_stats(self, spider: Any = None) -> None:
        if spider is not None:
            _spider_passed("clear_stats")
        self._stats.clear()

    def open_spider(self, spider: Any = None) -> None:
        if spider is not None:
            _spider_passed("open_spider")
        super().open_spider()

    def close_spider(self, spider: Any = None, reason: str | None = None) -> None:
        if spider is not None:
            _spider_passed("close_spider")
        super().close_spider(reason=reason)
