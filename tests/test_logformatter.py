"""crawlproj.logformatter: per-page DEBUG lines only when some handler writes them."""

from __future__ import annotations

import logging

import pytest
from scrapy import Spider
from scrapy.http import HtmlResponse, Request
from scrapy.logformatter import LogFormatter
from scrapy.settings import Settings
from scrapy.utils import log as scrapy_log

from crawlproj.logformatter import QuietLogFormatter, debug_written


@pytest.fixture
def scrapy_root_handler():
    """Scrapy's own root handler at a LOG_LEVEL, as in a crawl: the only one (pytest's, which it
    adds for the test's body, taken off)."""
    saved = logging.root.handlers[:]

    def install(level: str) -> None:
        logging.root.handlers.clear()
        scrapy_log.install_scrapy_root_handler(Settings({"LOG_LEVEL": level}))

    yield install
    logging.root.handlers[:] = saved


def page() -> tuple[Request, HtmlResponse, Spider]:
    request = Request("http://h.test/a.html", headers={"Referer": "http://h.test/"})
    return request, HtmlResponse(request.url, body=b"<html></html>", request=request), Spider("s")


def test_no_debug_lines_built_at_info(scrapy_root_handler):
    scrapy_root_handler("INFO")
    request, response, spider = page()
    assert not debug_written("scrapy.core.engine")
    assert QuietLogFormatter().crawled(request, response, spider) is None
    assert QuietLogFormatter().scraped({"a": 1}, response, spider) is None
    # other messages are Scrapy's
    exc = ValueError("x")
    assert QuietLogFormatter().download_error(exc, request, spider) == LogFormatter().download_error(exc, request, spider)


def test_debug_lines_as_scrapy_builds_them_at_debug(scrapy_root_handler):
    scrapy_root_handler("DEBUG")
    request, response, spider = page()
    assert QuietLogFormatter().crawled(request, response, spider) == LogFormatter().crawled(request, response, spider)
    assert QuietLogFormatter().scraped({"a": 1}, response, spider) == LogFormatter().scraped({"a": 1}, response, spider)


def test_a_debug_handler_added_later_gets_them(scrapy_root_handler):
    scrapy_root_handler("INFO")
    request, response, spider = page()
    handler = logging.NullHandler(logging.DEBUG)
    logging.getLogger("scrapy.core").addHandler(handler)
    try:
        kws = QuietLogFormatter().crawled(request, response, spider)
    finally:
        logging.getLogger("scrapy.core").removeHandler(handler)
    assert kws is not None and kws["level"] == logging.DEBUG
    assert QuietLogFormatter().crawled(request, response, spider) is None


def test_a_logger_that_does_not_propagate_and_has_no_handler():
    logger = logging.getLogger("crawlproj.test.quiet")
    logger.propagate = False
    try:
        assert not debug_written("crawlproj.test.quiet")
    finally:
        logger.propagate = True
