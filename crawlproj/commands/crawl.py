"""``scrapy crawl`` as Scrapy's, with a failure a person can act on in one line and an exit code.

- A bad setting (a crawlproj one, a typed Scrapy one such as ``CONCURRENT_REQUESTS=lots``, or
  ``LOG_LEVEL``) stops the crawl before it starts with one ERROR line naming the setting, its
  value and what is expected; the traceback follows only with ``LOG_LEVEL=DEBUG``. A failure
  whose message does not start with a setting's name is a bug and keeps its traceback.
- The exit code: 1 when the crawl did not start (Scrapy's ``bootstrap_failed``) or when it
  closed for a reason in :data:`crawlproj.refusals.FAILED_REASONS` (e.g. ``refused``: every
  request was refused); 0 otherwise, as Scrapy's.

The project's settings name this package in ``COMMANDS_MODULE``, so scrapyd's jobs and
``crawlproj cluster``'s nodes (both run ``scrapy crawl``) get the same behaviour.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from typing import TYPE_CHECKING, Any

from scrapy.addons import AddonManager
from scrapy.commands.crawl import Command as ScrapyCrawlCommand
from scrapy.exceptions import UsageError
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from crawlproj.refusals import FAILED_REASONS
from crawlproj.setting_checks import check_scrapy_settings

if TYPE_CHECKING:
    import argparse

    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

NOT_STARTED = "Crawl not started"
#: A message about a setting or a spider argument starts with its name: "DOWNLOAD_DELAY: ...",
#: "BROAD_SCOPE (or -a scope): ...", "-a max_depth: ...".
_NAMES_A_SETTING = re.compile(r"^(?:[A-Z][A-Z0-9_]{2,}|-a \w+)\b")


def names_a_setting(exc: BaseException) -> bool:
    """``exc`` is about a bad setting or argument (its message starts with the name)."""
    return bool(_NAMES_A_SETTING.match(str(exc)))


def setting_error(exc: BaseException) -> BaseException | None:
    """``exc``, or the exception it was raised in handling (Scrapy's clean-up after a component
    failed to start may fail in turn), that names a setting; None if none does."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if names_a_setting(current):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def report_start_failure(exc: BaseException) -> None:
    """One ERROR line for a bad setting (the traceback at DEBUG); a full traceback otherwise."""
    bad = setting_error(exc)
    if bad is not None:
        logger.error("%s: %s", NOT_STARTED, bad)
        logger.debug("Where it was raised:", exc_info=(type(exc), exc, exc.__traceback__))
    else:
        logger.error("%s: %s: %s", NOT_STARTED, type(exc).__name__, exc,
                     exc_info=(type(exc), exc, exc.__traceback__))


def _watch(started: Any) -> None:
    """Report the failure of a crawl's Task (AsyncCrawlerProcess) or Deferred (CrawlerProcess)
    ourselves, so neither asyncio nor Twisted prints it as never retrieved."""
    if isinstance(started, asyncio.Future):
        def done(task: asyncio.Future[Any]) -> None:
            if not task.cancelled() and task.exception() is not None:
                report_start_failure(task.exception())  # type: ignore[arg-type]

        started.add_done_callback(done)
    elif isinstance(started, Deferred):
        def failed(failure: Failure) -> None:
            report_start_failure(failure.value)

        started.addErrback(failed)


def exit_code(crawler: Crawler, bootstrap_failed: bool) -> int:
    """1 if the crawl did not start or closed for a failed reason, else 0."""
    if bootstrap_failed:
        return 1
    stats = getattr(crawler, "stats", None)
    reason = stats.get_value("finish_reason") if stats is not None else None
    return 1 if reason in FAILED_REASONS else 0


class Command(ScrapyCrawlCommand):
    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        assert self.settings is not None
        try:  # before Scrapy's crawler process configures logging and runs pre-crawler add-ons
            check_scrapy_settings(self.settings)
            AddonManager.load_pre_crawler_settings(self.settings.copy())
        except ValueError as exc:
            sys.stderr.write(f"{NOT_STARTED}: {exc}\n")
            raise SystemExit(1) from None

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if len(args) < 1:
            raise UsageError
        if len(args) > 1:
            raise UsageError("running 'scrapy crawl' with more than one spider is not supported")
        assert self.crawler_process
        crawler = self._create_crawler(args[0])
        _watch(self.crawler_process.crawl(crawler, **opts.spargs))
        self.crawler_process.start()
        self.exitcode = exit_code(crawler, self.crawler_process.bootstrap_failed)
