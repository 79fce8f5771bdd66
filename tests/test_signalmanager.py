"""crawlproj.signalmanager.SignalManager sends Scrapy's signals as Scrapy's SignalManager does:
the same receivers (weakly held, connected to any signal or any sender), the same arguments, the
same errors logged and results returned, in sync and async sends; and the project uses it."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest
from scrapy import signals
from scrapy.exceptions import StopDownload
from scrapy.signalmanager import SignalManager as ScrapySignalManager
from scrapy.utils.test import get_crawler
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from crawlproj import settings as project_settings
from crawlproj.signalmanager import SignalDispatch, SignalManager

MANAGERS = [ScrapySignalManager, SignalManager]
sig = object()


class Receivers:
    """Receivers of every kind pydispatch calls, each noting what it got."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.__qualname__ = "Receivers"  # Scrapy's async send names each receiver first

    def subset(self, item: Any, spider: Any) -> str:
        self.calls.append(("subset", {"item": item, "spider": spider}))
        return "subset"

    def everything(self, item: Any, **kwargs: Any) -> str:
        self.calls.append(("everything", {"item": item, **kwargs}))
        return "everything"

    def nothing(self) -> None:
        self.calls.append(("nothing", {}))

    def fails(self, item: Any) -> None:
        self.calls.append(("fails", {"item": item}))
        raise ValueError(f"bad {item}")

    def stops(self) -> None:
        self.calls.append(("stops", {}))
        raise StopDownload(fail=False)

    def __call__(self, signal: Any, sender: Any) -> str:  # a callable object
        self.calls.append(("call", {"signal": signal is sig, "sender": sender}))
        return "call"


def _normal(results: list[tuple[Any, Any]]) -> list[tuple[str, Any]]:
    """Results comparable across managers: receiver name, value (a failure by its type and text)."""
    out = []
    for receiver, value in results:
        name = getattr(receiver, "__name__", type(receiver).__name__)
        if isinstance(value, Failure):
            value = ("Failure", type(value.value).__name__, str(value.value))
        elif isinstance(value, BaseException):
            value = ("exception", type(value).__name__, str(value))
        out.append((name, value))
    return out


def _scenario(manager_cls: type, send: Any) -> tuple[list[Any], list[Any], list[str]]:
    sender = object()
    manager = manager_cls(sender)
    r = Receivers()
    for receiver in (r.subset, r.everything, r.nothing, r.fails, r):
        manager.connect(receiver, signal=sig)
    results = [_normal(send(manager, item=1, spider="s", extra="x"))]
    manager.connect(r.stops, signal=sig)  # after a send: its plan is remade
    manager.disconnect(r.nothing, signal=sig)
    results.append(_normal(send(manager, item=2, spider="s", dont_log=ValueError)))
    results.append(_normal(send(manager, item=3, spider="s")))
    manager.disconnect_all(sig)
    calls = [(name, {k: (v is sender if k == "sender" else v is sig if k == "signal" else v)
                     for k, v in got.items()}) for name, got in r.calls]
    return results, calls, []


def _sync(manager: Any, **kwargs: Any) -> list[tuple[Any, Any]]:
    return manager.send_catch_log(signal=sig, **kwargs)


def _async(manager: Any, **kwargs: Any) -> list[tuple[Any, Any]]:
    return asyncio.run(manager.send_catch_log_async(signal=sig, **kwargs))


@pytest.mark.parametrize("send", [_sync, _async], ids=["send_catch_log", "send_catch_log_async"])
def test_same_receivers_arguments_results_and_logged_errors(send: Any, caplog: pytest.LogCaptureFixture) -> None:
    outcomes = []
    for manager_cls in MANAGERS:
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            results, calls, _ = _scenario(manager_cls, send)
        logged = [(r.name, r.getMessage().split(" of <")[0].split(" <")[0], r.exc_info is not None)
                  for r in caplog.records]
        outcomes.append((results, calls, logged))
    assert outcomes[0] == outcomes[1]
    results, calls, logged = outcomes[1]
    assert ("subset", {"item": 1, "spider": "s"}) in calls
    assert ("everything", {"item": 1, "spider": "s", "extra": "x", "signal": True, "sender": True}) == calls[1]
    assert [name for name, _ in results[1]] == ["subset", "everything", "fails", "Receivers", "stops"]


def test_weakly_held_receivers_are_not_kept_alive() -> None:
    for manager_cls in MANAGERS:
        manager = manager_cls(object())
        kept, temporary = Receivers(), Receivers()
        manager.connect(kept.subset, signal=sig)
        manager.connect(temporary.subset, signal=sig)
        assert len(manager.send_catch_log(signal=sig, item=1, spider="s")) == 2
        del temporary
        gc.collect()
        assert [r for r, _ in manager.send_catch_log(signal=sig, item=2, spider="s")] == [kept.subset]
        manager.disconnect_all(sig)


def test_receivers_of_any_signal_and_any_sender() -> None:
    from pydispatch import dispatcher

    got = []
    for manager_cls in MANAGERS:
        sender = object()
        manager = manager_cls(sender)
        calls: list[str] = []

        def any_signal(signal: Any, calls: list[str] = calls) -> None:
            calls.append("any_signal")

        def any_sender(calls: list[str] = calls) -> None:
            calls.append("any_sender")

        manager.connect(any_signal, signal=dispatcher.Any, weak=False)
        dispatcher.connect(any_sender, signal=sig, sender=dispatcher.Any, weak=False)
        manager.send_catch_log(signal=sig)
        dispatcher.disconnect(any_sender, signal=sig, sender=dispatcher.Any, weak=False)
        manager.send_catch_log(signal=sig)  # the table changed without this manager
        manager.disconnect(any_signal, signal=dispatcher.Any, weak=False)
        got.append(calls)
    assert got[0] == got[1] == ["any_signal", "any_sender", "any_signal"]


def test_async_receivers_are_awaited_together() -> None:
    order: list[str] = []

    async def slow(item: Any) -> str:
        order.append("slow start")
        await asyncio.sleep(0.01)
        order.append("slow end")
        return "slow"

    def deferred(item: Any) -> Deferred[str]:
        order.append("deferred")
        return succeed("deferred")

    async def fails(item: Any) -> None:
        raise KeyError(item)

    def plain(item: Any) -> str:
        order.append("plain")
        return "plain"

    outcomes = []
    for manager_cls in MANAGERS:
        order.clear()
        manager = manager_cls(object())
        for receiver in (slow, deferred, fails, plain):
            manager.connect(receiver, signal=sig, weak=False)
        with pytest.warns(Warning, match="returned a Deferred"):
            results = asyncio.run(manager.send_catch_log_async(signal=sig, item=5, dont_log=KeyError))
        outcomes.append((_normal(results), sorted(order)))
        assert order.index("plain") < order.index("slow end")  # not one after the other
    assert outcomes[0] == outcomes[1]
    assert outcomes[1][0] == [("slow", "slow"), ("deferred", "deferred"), ("fails", ("exception", "KeyError", "5")),
                              ("plain", "plain")]


def test_a_deferred_from_a_sync_receiver_is_an_error_as_in_scrapy(caplog: pytest.LogCaptureFixture) -> None:
    manager = SignalManager(object())

    def returns_deferred() -> Deferred[None]:
        return succeed(None)

    manager.connect(returns_deferred, signal=sig, weak=False)
    with caplog.at_level(logging.ERROR):
        manager.send_catch_log(signal=sig)
    assert "Cannot return deferreds from signal handler" in caplog.text


def test_the_project_crawler_sends_through_it() -> None:
    settings = {k: getattr(project_settings, k) for k in dir(project_settings) if k.isupper()}
    crawler = get_crawler(settings_dict=settings)
    crawler._apply_settings()
    assert isinstance(crawler.signals, SignalManager)
    assert crawler.get_extension(SignalDispatch) is not None
    plain = get_crawler(settings_dict={**settings, "SIGNAL_DISPATCH_FAST": False})
    plain._apply_settings()
    assert type(plain.signals) is ScrapySignalManager
    received = []
    crawler.signals.connect(lambda request, spider: received.append(request), signal=signals.request_scheduled,
                            weak=False)
    crawler.signals.send_catch_log(signals.request_scheduled, request="r", spider=None)
    assert received == ["r"]
