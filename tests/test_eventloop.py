"""The node's event loop (crawlproj.eventloop): timers fire when due rather than at the next whole
millisecond, a timer that fired never makes the loop spin, and Scrapy installs it from settings.py."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import threading
import time

import pytest

from crawlproj import eventloop
from crawlproj.eventloop import PreciseEventLoop

pytestmark = pytest.mark.skipif(eventloop._CALLS is None, reason="no timerfd (not Linux)")


def _before_the_millisecond(loop: asyncio.AbstractEventLoop, waits: int) -> int:
    """Timers (each due 2.3 ms on) that ran before epoll's rounded-up millisecond would have woken."""
    early = 0

    async def main() -> None:
        nonlocal early
        for _ in range(waits):
            start = loop.time()
            due = start + 0.0023
            fired = loop.create_future()
            loop.call_at(due, fired.set_result, None)
            await fired
            if loop.time() < start + math.ceil((due - start) * 1e3) * 1e-3:
                early += 1

    loop.run_until_complete(main())
    return early


def test_timers_fire_when_due_not_at_the_next_whole_millisecond() -> None:
    plain, precise = asyncio.SelectorEventLoop(), PreciseEventLoop()
    try:
        # asyncio's own: the whole ms later (unless the process stalls between start and select)
        assert _before_the_millisecond(plain, 20) <= 2
        # 0.7 ms of slack each: most land in it unless the machine is starved for CPU
        assert _before_the_millisecond(precise, 40) >= 10
    finally:
        plain.close()
        precise.close()


def test_a_fired_timer_never_makes_an_untimed_wait_spin() -> None:
    loop = PreciseEventLoop()
    r, w = os.pipe()
    try:
        async def main() -> float:
            await asyncio.sleep(0.001)  # arms the timerfd; it fires
            readable = loop.create_future()
            loop.add_reader(r, lambda: readable.done() or readable.set_result(os.read(r, 1)))
            writer = threading.Timer(0.3, os.write, (w, b"x"))  # no timer of the loop's own: untimed
            writer.start()
            cpu = time.process_time()
            assert await readable == b"x"
            writer.join()
            loop.remove_reader(r)
            return time.process_time() - cpu

        assert loop.run_until_complete(main()) < 0.1  # a spinning loop would use the whole 0.3 s
    finally:
        loop.close()
        os.close(r)
        os.close(w)


def test_scrapy_installs_it_from_the_project_settings() -> None:
    code = ("import asyncio; from scrapy.utils.project import get_project_settings; "
            "from scrapy.utils.reactor import install_reactor; s = get_project_settings(); "
            "install_reactor(s['TWISTED_REACTOR'], s['ASYNCIO_EVENT_LOOP']); "
            "print(type(asyncio.get_event_loop()).__name__, type(asyncio.get_event_loop()._selector).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), check=True)
    assert out.stdout.split() == ["PreciseEventLoop", "PreciseEpollSelector"]
