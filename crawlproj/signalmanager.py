"""crawlproj's signal manager: Scrapy's signals with less work for each one sent.

Scrapy sends about ten signals a page (request_scheduled, request_reached_downloader,
response_received, item_scraped, ...). Each goes through pydispatch: its receivers looked up in
four tables and deduplicated by a generator, every receiver's signature inspected again on every
call (``robustApply``), and for the signals sent with ``send_catch_log_async`` (item_scraped) one
asyncio task per receiver. :class:`SignalManager` sends them to the same receivers, with the same
arguments, errors and results, but

- resolves a signal's receivers once per change of pydispatch's tables (a connect or disconnect
  anywhere, a receiver collected: the tables are compared with the copy the plan was made from),
- inspects each receiver's signature once, when the plan is made,
- in ``send_catch_log_async`` calls the receivers in turn and awaits, together, only what they
  return that is awaitable (a coroutine, a Deferred), where Scrapy wraps every call in a task.

The receivers are held as pydispatch holds them (weakly, by default), so a manager keeps no
component alive. :class:`SignalDispatch` (an extension, first in ``EXTENSIONS``) installs the
manager as ``crawler.signals`` before the engine is built; the receivers connected before stay
connected (pydispatch's tables are per sender, the crawler).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Sequence
from typing import Any

from pydispatch import dispatcher
from pydispatch.dispatcher import WEAKREF_TYPES
from pydispatch.robustapply import function
from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured, StopDownload
from scrapy.signalmanager import SignalManager as ScrapySignalManager
from scrapy.utils.asyncio import is_asyncio_available
from scrapy.utils.defer import ensure_awaitable
from scrapy.utils.python import global_object_name
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

# Scrapy's own logger for these records, so that they read (and filter) as Scrapy's do
logger = logging.getLogger("scrapy.utils.signal")

_ANY_KEY = id(dispatcher.Any)


class _Receiver:
    """One connected receiver: how to reach it and which named arguments it takes."""

    __slots__ = ("ref", "weak", "accepts")

    def __init__(self, ref: Any, live: Any):
        self.ref = ref  # pydispatch's entry: a weak reference, or the receiver itself
        self.weak = isinstance(ref, WEAKREF_TYPES)
        _, code, start = function(live)  # as robustApply reads it, once
        self.accepts: frozenset[str] | None = None if code.co_flags & 8 else \
            frozenset(code.co_varnames[start:code.co_argcount])  # None: it takes **kwargs


class _Plan:
    __slots__ = ("tables", "receivers")

    def __init__(self, tables: tuple[tuple[Any, ...], ...], receivers: list[_Receiver]):
        self.tables = tables
        self.receivers = receivers


class SignalManager(ScrapySignalManager):
    """Scrapy's SignalManager; ``send_catch_log`` and ``send_catch_log_async`` use a plan per
    signal (its receivers and their accepted arguments), remade when pydispatch's tables change."""

    def __init__(self, sender: Any = dispatcher.Anonymous):
        super().__init__(sender)
        self._plans: dict[Any, _Plan] = {}

    def _tables(self, sender: Any, signal: Any) -> tuple[tuple[Any, ...], ...]:
        """The four tables getAllReceivers reads, in its order (copies: the plan's key)."""
        connections = dispatcher.connections
        own, anyone = connections.get(id(sender)), connections.get(_ANY_KEY)
        return (tuple(own.get(signal, ())) if own else (), tuple(own.get(dispatcher.Any, ())) if own else (),
                tuple(anyone.get(signal, ())) if anyone else (),
                tuple(anyone.get(dispatcher.Any, ())) if anyone else ())

    def _plan(self, sender: Any, signal: Any) -> _Plan:
        tables = self._tables(sender, signal)
        key = (id(sender), signal)
        plan = self._plans.get(key)  # type: ignore[arg-type]
        if plan is not None and plan.tables == tables:
            return plan
        receivers, seen = [], set()
        for table in tables:  # getAllReceivers: each receiver once, the first table first
            for ref in table:
                if not ref:  # a dead instance-method weak reference
                    continue
                try:
                    if ref in seen:
                        continue
                    seen.add(ref)
                except TypeError:  # dead weak references raise TypeError on hash
                    continue
                live = ref() if isinstance(ref, WEAKREF_TYPES) else ref
                if live is not None:
                    receivers.append(_Receiver(ref, live))
        plan = _Plan(tables, receivers)
        self._plans[key] = plan  # type: ignore[index]
        return plan

    def _calls(self, signal: Any, kwargs: dict[str, Any]) -> tuple[Any, list[tuple[Any, dict[str, Any]]]]:
        """(spider, [(live receiver, its arguments)]) for one send."""
        sender = kwargs.setdefault("sender", self.sender)
        receivers = self._plan(sender, signal).receivers
        if not receivers:
            return None, []
        named = {"signal": signal, **kwargs}
        calls = []
        for receiver in receivers:
            live = receiver.ref() if receiver.weak else receiver.ref
            if live is None:
                continue
            accepts = receiver.accepts
            calls.append((live, named if accepts is None else
                          {k: v for k, v in named.items() if k in accepts}))
        return kwargs.get("spider"), calls

    def send_catch_log(self, signal: Any, **kwargs: Any) -> list[tuple[Any, Any]]:
        dont_log = _dont_log(kwargs) + (StopDownload,)
        spider, calls = self._calls(signal, kwargs)
        responses: list[tuple[Any, Any]] = []
        for receiver, arguments in calls:
            result: Any
            try:
                response = receiver(**arguments)
                if isinstance(response, Deferred):
                    logger.error("Cannot return deferreds from signal handler: %(receiver)s",
                                 {"receiver": receiver}, extra={"spider": spider})
            except dont_log:
                result = Failure()
            except Exception:
                result = Failure()
                _log_error(receiver, spider)
            else:
                result = response
            responses.append((receiver, result))
        return responses

    async def send_catch_log_async(self, signal: Any, **kwargs: Any) -> list[tuple[Any, Any]]:
        if not is_asyncio_available():
            return await super().send_catch_log_async(signal, **kwargs)
        dont_log = _dont_log(kwargs)
        spider, calls = self._calls(signal, kwargs)
        results: list[Any] = []
        waits: list[tuple[int, Any]] = []
        for receiver, arguments in calls:
            try:
                result = receiver(**arguments)
                if inspect.isawaitable(result):  # a coroutine, a Deferred
                    waits.append((len(results), _awaited(receiver, result, dont_log, spider)))
            except dont_log as ex:  # pylint: disable=catching-non-exception
                result = ex
            except Exception as ex:
                _log_error(receiver, spider)
                result = ex
            results.append((receiver, result))
        if waits:
            done = await asyncio.gather(*(w for _, w in waits))
            for (index, _), value in zip(waits, done):
                results[index] = (results[index][0], value)
        return results


def _dont_log(kwargs: dict[str, Any]) -> tuple[type[BaseException], ...]:
    if "dont_log" not in kwargs:
        return ()
    dont_log = kwargs.pop("dont_log")
    return tuple(dont_log) if isinstance(dont_log, Sequence) else (dont_log,)


def _log_error(receiver: Any, spider: Any) -> None:
    logger.error("Error caught on signal handler: %(receiver)s", {"receiver": receiver},
                 exc_info=True, extra={"spider": spider})


async def _awaited(receiver: Any, result: Any, dont_log: tuple[type[BaseException], ...], spider: Any) -> Any:
    """What an asynchronous receiver's result comes to (an exception: as a value, as Scrapy's)."""
    try:
        return await ensure_awaitable(result, _warn=global_object_name(receiver))
    except dont_log as ex:  # pylint: disable=catching-non-exception
        return ex
    except Exception as ex:
        _log_error(receiver, spider)
        return ex


class SignalDispatch:
    """Extension: makes :class:`SignalManager` the crawler's (before the engine is built, which
    keeps the one it finds); SIGNAL_DISPATCH_FAST = False keeps Scrapy's."""

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> SignalDispatch:
        if not crawler.settings.getbool("SIGNAL_DISPATCH_FAST"):
            raise NotConfigured("SIGNAL_DISPATCH_FAST is off")
        if not isinstance(crawler.signals, SignalManager):  # Scrapy builds the extensions first
            crawler.signals = SignalManager(crawler)
        return cls()
