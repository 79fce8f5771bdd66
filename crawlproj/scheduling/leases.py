"""When is a leased request's fate final? Lease bookkeeping shared by the scheduler and a spider
middleware, through public Scrapy hooks only.

A leased request is final when one of these has happened and everything it produced is settled:

- its response went through the callback: the callback's output (as it leaves the outermost
  spider middleware) is exhausted or raised, every item it yielded has been scraped, dropped or
  failed in the pipelines (``item_*`` signals), and every request it yielded has reached the
  scheduler (so discovered links are pushed before the ack);
- its download failed for good, or a downloader middleware filtered it (robots.txt, offsite):
  the errback installed by the scheduler ran (it calls the spider's own errback, if any, and
  tracks that output the same way);
- it was redirected to another politeness key: the scheduler pushes the target and ends it.

Retries and same-key redirects carry the lease on (``request.replace`` copies meta). A request
the downloader middlewares postponed (:class:`crawlproj.politeness.gate.Postponed`: robots.txt
unreachable for now, or the node's fence passed) is not final: :data:`lease_postponed` tells the
scheduler to give it back with its retry time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from scrapy import Request, signals
from scrapy.http import Response
from twisted.python.failure import Failure

from crawlproj.meta import KEY, LEASE, OWN_ERRBACK, PARENT
from crawlproj.politeness.gate import Postponed
from crawlproj.revisit.config import RevisitConfig
from crawlproj.revisit.policy import Outcome, outcome_of

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)



class _Lease:
    __slots__ = ("lease_id", "items", "requests", "output_done")

    def __init__(self, lease_id: int):
        self.lease_id = lease_id
        self.items = 0
        self.requests = 0
        self.output_done = False


def _lease_of(source: Any) -> int | None:
    """Lease id carried by a Response or a Failure (scraper sets ``failure.request``)."""
    request = getattr(source, "request", None)
    if request is None:
        return None
    return request.meta.get(LEASE)


#: Signal: a leased request's fate is final (argument: lease_id). The scheduler acks it.
lease_final = object()
#: Signal: a leased request was postponed (arguments: lease_id, retry_in seconds, why). The
#: scheduler gives it back to the dispatcher, to be served again after retry_in.
lease_postponed = object()


class LeaseBook:
    """Counts what each in-flight lease produced until it settles; then sends :data:`lease_final`."""

    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        self.active: dict[int, _Lease] = {}
        # What the revisit schedule needs of each final answer (docs/revisits.md): lease id ->
        # ack outcome, taken by the scheduler with the ack; empty under REVISIT_POLICY none.
        self.revisit = RevisitConfig.from_settings(crawler.settings)
        self.outcomes: dict[int, dict[str, Any]] = {}
        for sig in (signals.item_scraped, signals.item_dropped, signals.item_error):
            crawler.signals.connect(self._item_settled, signal=sig)

    def _final(self, lease_id: int) -> None:
        self.crawler.signals.send_catch_log(lease_final, lease_id=lease_id)

    def begin(self, lease_id: int) -> None:
        if lease_id not in self.active:
            self.active[lease_id] = _Lease(lease_id)

    def _get(self, lease_id: int | None) -> _Lease | None:
        return self.active.get(lease_id) if lease_id is not None else None

    def _check(self, lease: _Lease) -> None:
        if lease.output_done and lease.items <= 0 and lease.requests <= 0:
            del self.active[lease.lease_id]
            self._final(lease.lease_id)

    def produced(self, lease_id: int, element: Any) -> None:
        lease = self._get(lease_id)
        if lease is None:
            return
        if isinstance(element, Request):
            element.meta[PARENT] = lease_id
            lease.requests += 1
        elif element is not None:
            lease.items += 1

    def output_done(self, lease_id: int | None) -> None:
        lease = self._get(lease_id)
        if lease is not None and not lease.output_done:
            lease.output_done = True
            self._check(lease)

    def request_arrived(self, parent: int) -> None:
        """A request discovered by ``parent`` reached the scheduler (and was pushed or dropped)."""
        lease = self._get(parent)
        if lease is not None:
            lease.requests -= 1
            self._check(lease)

    def forget(self, lease_id: int) -> None:
        """The lease was given back unfinished: no ack will come from here."""
        self.active.pop(lease_id, None)
        self.outcomes.pop(lease_id, None)

    def answered(self, lease_id: int, response: Response | None, failure: Failure | None = None) -> None:
        """Record the revisit outcome of a lease's final answer (or of its failure)."""
        if not self.revisit.enabled:
            return
        if response is None:
            response = getattr(failure.value, "response", None) if failure is not None else None
        request = response.request if response is not None else getattr(failure, "request", None)
        key = request.meta.get(KEY) if request is not None else None
        outcome = outcome_of(response) if isinstance(response, Response) else Outcome(0)
        wire = self.revisit.wire_outcome(key, outcome)
        if wire is not None:
            self.outcomes[lease_id] = wire

    def end(self, lease_id: int) -> None:
        """Final without output (redirected to another key, undecodable...)."""
        lease = self.active.pop(lease_id, None)
        if lease is not None:
            self._final(lease_id)

    def _item_settled(self, item: Any = None, response: Any = None, **kwargs: Any) -> None:
        lease = self._get(_lease_of(response))
        if lease is not None:
            lease.items -= 1
            self._check(lease)

    # -- wrapping output --------------------------------------------------------------------------

    def track(self, lease_id: int, result: Iterable[Any]) -> Iterable[Any]:
        try:
            for element in result:
                self.produced(lease_id, element)
                yield element
        finally:
            self.output_done(lease_id)

    async def track_async(self, lease_id: int, result: AsyncIterator[Any]) -> AsyncIterator[Any]:
        try:
            async for element in result:
                self.produced(lease_id, element)
                yield element
        finally:
            self.output_done(lease_id)

    def errback(self, spider: Any) -> Callable[[Failure], Any]:
        """The errback the scheduler installs on leased requests."""

        def lease_errback(failure: Failure) -> Any:
            lease_id = _lease_of(failure)
            if lease_id is not None and failure.check(Postponed):
                self.active.pop(lease_id, None)
                exc = failure.value
                self.crawler.signals.send_catch_log(lease_postponed, lease_id=lease_id,
                                                    retry_in=exc.retry_in, why=exc.why)
                return None  # not an error of the spider's: its errback does not see it
            if lease_id is not None:
                self.answered(lease_id, None, failure)
            own = failure.request.meta.get(OWN_ERRBACK) if hasattr(failure, "request") else None
            if own is None:
                self.output_done(lease_id)
                return failure  # Scrapy logs it as it would without an errback
            try:
                output = getattr(spider, own)(failure)
            except Exception:
                self.output_done(lease_id)
                raise
            if output is None or isinstance(output, Failure) or lease_id is None:
                self.output_done(lease_id)
                return output
            if isinstance(output, AsyncIterator):
                return self.track_async(lease_id, output)
            return self.track(lease_id, output)

        return lease_errback


class LeaseTrackerMiddleware:
    """Outermost spider middleware: sees the output of leased responses as the engine gets it.

    It owns the crawler's :class:`LeaseBook`; the DispatcherScheduler finds it with
    ``crawler.get_spider_middleware(LeaseTrackerMiddleware)``.
    """

    def __init__(self, crawler: Crawler):
        self.book = LeaseBook(crawler)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> LeaseTrackerMiddleware:
        return cls(crawler)

    def process_spider_output(self, response: Response, result: Iterable[Any]) -> Iterable[Any]:
        lease_id = response.meta.get(LEASE) if response.request is not None else None
        if lease_id is None:
            return result
        self.book.answered(lease_id, response)
        return self.book.track(lease_id, result)

    async def process_spider_output_async(self, response: Response,
                                          result: AsyncIterator[Any]) -> AsyncIterator[Any]:
        lease_id = response.meta.get(LEASE) if response.request is not None else None
        if lease_id is None:
            async for element in result:
                yield element
            return
        self.book.answered(lease_id, response)
        async for element in self.book.track_async(lease_id, result):
            yield element

    def process_spider_exception(self, response: Response, exception: Exception) -> None:
        # The callback raised and no middleware before us turned it into output: final.
        if response.request is not None:
            lease_id = response.meta.get(LEASE)
            if lease_id is not None:
                self.book.answered(lease_id, response)
            self.book.output_done(lease_id)
