"""Links seen lately by this process: drop repeats before they cost a Request object.

On a broad crawl most links on a page were seen before (about 17 of 20 on the synthetic web).
Building a Request for each, walking it through the spider middlewares and the engine only for
a dedup filter to drop it, is most of a node's CPU. The spider asks this filter first; the
exact dedup (Scrapy's dupefilter, or the dispatcher's seen-set) still decides for the rest, so
forgetting old entries costs a little work, never a URL.

The spider and the DispatcherScheduler share one set, owned by the :class:`RecentLinks`
extension and found with ``crawler.get_extension`` (:func:`recent_links`).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

from crawlproj.setting_checks import int_at_least

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


class RecentSet:
    """Bounded set: two generations, the older dropped when the newer fills up."""

    def __init__(self, capacity: int):
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.half = max(1, capacity // 2)
        self.new: set[Hashable] = set()
        self.old: set[Hashable] = set()

    def add(self, value: Hashable) -> bool:
        """True if ``value`` was not seen lately (and remember it)."""
        if value in self.new or value in self.old:
            return False
        self.new.add(value)
        if len(self.new) >= self.half:
            self.old, self.new = self.new, set()
        return True

    def clear(self) -> None:
        self.new = set()
        self.old = set()

    def __len__(self) -> int:
        return len(self.new) + len(self.old)


class RecentLinks:
    """Extension: this process's one :class:`RecentSet` of canonical URLs (``RECENT_LINKS_SIZE``)."""

    def __init__(self, size: int):
        self.links = RecentSet(size)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> RecentLinks:
        return cls(int_at_least(crawler.settings, "RECENT_LINKS_SIZE", 1, "a positive integer"))


def recent_links(crawler: Crawler) -> RecentSet:
    """The crawler's recent-links set; a set of its own for the caller if the extension is off.

    Call it once the extensions exist (a spider: at its first callback, not in ``from_crawler``).
    """
    ext = crawler.get_extension(RecentLinks)
    if ext is not None:
        return ext.links
    return RecentSet(int_at_least(crawler.settings, "RECENT_LINKS_SIZE", 1, "a positive integer"))
