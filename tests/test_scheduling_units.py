"""Pure logic of the node side: per-key queues, the recently-sent filter, request wire format."""

from __future__ import annotations

import asyncio
import time

import pytest
from scrapy import Request, Spider

from crawlproj.wire.protocol import check_wire_request
from crawlproj.scheduling.keyqueue import KeyQueues
from crawlproj.scheduling.scheduler import DispatcherScheduler
from crawlproj.linkfilter import RecentSet
from crawlproj.wire.request import Unserializable, WireCodec


def test_a_busy_or_delayed_key_never_blocks_the_others():
    q: KeyQueues[str] = KeyQueues()
    for i in range(3):
        q.push("slow.test", f"slow{i}")
    q.push("fast.test", "fast0")
    q.push("fast.test", "fast1")
    assert q.pop_ready(now=0) == ("slow.test", "slow0")
    # slow.test is busy: the next request comes from another key
    assert q.pop_ready(now=0) == ("fast.test", "fast0")
    assert q.pop_ready(now=0) is None  # both keys busy
    q.release("slow.test", ready_at=10.0)  # fetch ended, delay until t=10
    q.release("fast.test", ready_at=1.0)
    assert q.pop_ready(now=0.5) is None
    assert q.next_ready_time() == 1.0
    assert q.pop_ready(now=1.0) == ("fast.test", "fast1")
    assert q.pop_ready(now=5.0) is None
    assert q.pop_ready(now=10.0) == ("slow.test", "slow1")
    assert len(q) == 1


def test_hold_never_moves_a_ready_time_earlier_and_remove_takes_keys_out():
    q: KeyQueues[int] = KeyQueues()
    q.push("a.test", 1)
    q.hold("a.test", 5.0)
    q.hold("a.test", 2.0)
    assert q.pop_ready(now=4.0) is None
    q.push("b.test", 2)
    q.push("b.test", 3, front=True)
    assert q.remove(lambda key: key == "b.test") == [3, 2]
    assert len(q) == 1
    assert q.pop_ready(now=5.0) == ("a.test", 1)


def test_per_key_times_are_kept_only_for_keys_with_queued_items():
    q: KeyQueues[int] = KeyQueues()
    for i in range(10_000):
        key = f"k{i}.test"
        q.push(key, i)
        q.hold(key, 1.0)
        assert q.pop_ready(now=2.0) == (key, i)
        q.release(key, ready_at=3.0)
    assert len(q) == 0 and q.keys == 0
    assert not q._ready_at  # 10,000 keys served leave no per-key entry behind
    q.hold("idle.test", 9.0)  # nothing queued: nothing to remember
    q.push("idle.test", 1)
    assert q.pop_ready(now=0.0) == ("idle.test", 1)


def test_recently_sent_is_bounded_and_exact_for_recent_entries():
    recent = RecentSet(capacity=4)
    assert recent.add(b"a") and recent.add(b"b")
    assert not recent.add(b"a")
    for fp in (b"c", b"d", b"e", b"f"):
        recent.add(fp)
    assert len(recent.new) + len(recent.old) <= 4
    assert recent.add(b"a")  # forgotten after two generations: the dispatcher dedups exactly


class _Spider(Spider):
    name = "wiretest"

    def parse(self, response):  # pragma: no cover - never called
        pass

    def parse_detail(self, response):  # pragma: no cover
        pass

    def on_error(self, failure):  # pragma: no cover
        pass


def test_requests_travel_with_callbacks_by_name_and_carryable_meta():
    spider = _Spider()
    codec = WireCodec(spider, partitions=1024)
    req = Request("http://Site0001.test:8080/p/1?b=2&a=1#frag", callback=spider.parse_detail,
                  errback=spider.on_error, priority=3, meta={"depth": 2, "tag": "x", "obj": object()},
                  cb_kwargs={"n": 1}, headers={"X-Test": "1"})
    canonical, fp, key, part = codec.route(req.url)
    assert canonical == "http://site0001.test:8080/p/1?a=1&b=2"
    assert key == "site0001.test"
    wire = check_wire_request(codec.encode(req, fp, key, part), 1024)
    assert wire["cb"] == "parse_detail" and wire["eb"] == "on_error" and wire["d"] == 2
    assert "obj" not in wire["meta"] and wire["meta"]["tag"] == "x"
    back = codec.decode(wire)
    assert back.url == req.url and back.callback == spider.parse_detail
    assert back.errback == spider.on_error and back.priority == 3
    assert back.meta["depth"] == 2 and back.cb_kwargs == {"n": 1}
    assert back.headers.get("X-Test") == b"1"


def test_a_callback_that_is_not_a_spider_method_cannot_travel():
    spider = _Spider()
    codec = WireCodec(spider, partitions=8)
    req = Request("http://a.test/", callback=lambda r: None)
    _, fp, key, part = codec.route(req.url)
    with pytest.raises(Unserializable):
        codec.encode(req, fp, key, part)


def test_a_node_without_a_download_timeout_refuses_to_start():
    """The fence needs every fetch to end (docs/protocol.md, Fenced ownership)."""
    from scrapy.settings import Settings

    from crawlproj.scheduling.config import NodeConfig

    settings = Settings()
    settings.setmodule("crawlproj.settings", priority="project")
    settings.set("DISPATCHER_NODE_NAME", "n1")
    assert NodeConfig.from_settings(settings).download_timeout == settings.getfloat("DOWNLOAD_TIMEOUT")
    settings.set("DOWNLOAD_TIMEOUT", 0)
    with pytest.raises(ValueError, match=r"^DOWNLOAD_TIMEOUT: .*fence.*got 0"):
        NodeConfig.from_settings(settings)


def test_a_pending_wake_due_later_is_moved_up_never_put_off():
    """The engine is woken when the earliest key is ready: a key ready sooner than the armed
    timer (another key's delay) moves it up; a later one leaves it; "now" wins over both."""
    async def run() -> list[float]:
        s = DispatcherScheduler.__new__(DispatcherScheduler)  # only the wake timer is used
        s.engine_ready, s._wake_handle, s._wake_at = True, None, 0.0
        fired: list[float] = []

        def wake() -> None:
            s._wake_handle = None
            fired.append(time.monotonic())

        s._wake = wake  # type: ignore[method-assign]
        t0 = time.monotonic()
        s._wake_by(t0 + 30.0)  # another key's delay
        s._wake_by(t0 + 0.05)  # a key ready sooner: moved up
        s._wake_by(t0 + 20.0)  # later than the pending one: it stands
        deadline = time.monotonic() + 10
        while not fired and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the poll interval of a deadline-bound wait
        assert fired and fired[0] - t0 >= 0.05 - 0.005
        s._wake_by(t0 + 30.0)
        s._wake_soon()  # a lease for an idle key: at once
        while len(fired) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if s._wake_handle is not None:
            s._wake_handle.cancel()
        return [t - t0 for t in fired]

    fired = asyncio.run(run())
    assert len(fired) == 2 and fired[0] < 10 and fired[1] < 10, fired  # neither at 20 nor 30 s
