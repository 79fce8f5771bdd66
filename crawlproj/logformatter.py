"""Scrapy's LogFormatter without the DEBUG lines that no handler would write.

Scrapy's root logger passes every level (its handler filters by ``LOG_LEVEL``), so the
"Crawled (200)" and "Scraped from" lines of each page are built as log records and then
dropped at the handler when ``LOG_LEVEL`` is INFO. ``crawled`` and ``scraped`` here return
``None`` (Scrapy's "do not log") when no handler of their logger would write a DEBUG record,
checked at each call, so a handler added later (a test's, a debugging session's) still gets
them. Every other message is Scrapy's.
"""

from __future__ import annotations

import logging
from typing import Any

from scrapy.logformatter import LogFormatter, LogFormatterResult


def debug_written(name: str) -> bool:
    """Whether a DEBUG record of logger ``name`` would reach a handler that writes DEBUG."""
    logger: logging.Logger | None = logging.getLogger(name)
    if not logger.isEnabledFor(logging.DEBUG):  # type: ignore[union-attr]
        return False
    while logger is not None:
        if any(h.level <= logging.DEBUG for h in logger.handlers):
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False  # no handler: logging's last resort writes WARNING and above


class QuietLogFormatter(LogFormatter):
    """``LOG_FORMATTER``: Scrapy's messages, the per-page DEBUG ones only when some handler writes them."""

    def crawled(self, request: Any, response: Any, spider: Any) -> LogFormatterResult | None:  # type: ignore[override]
        if not debug_written("scrapy.core.engine"):
            return None
        return super().crawled(request, response, spider)

    def scraped(self, item: Any, response: Any, spider: Any) -> LogFormatterResult | None:  # type: ignore[override]
        if not debug_written("scrapy.core.scraper"):
            return None
        return super().scraped(item, response, spider)
