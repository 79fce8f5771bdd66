"""The node's asyncio event loop: timers fire when they are due, not up to a millisecond late.

asyncio sleeps in ``epoll_wait``, whose timeout is whole milliseconds rounded up, so a timer
fires 0-1 ms late (0.5 ms on average, measured 0.5-0.75 ms in a crawl). A key's politeness
delay is waited out with a timer before each of its fetches: at 20 ms that is 2-4% of the time
of the key that ends the crawl. This loop's selector arms a Linux timerfd (nanoseconds) with the
loop's timeout as well, so ``epoll_wait`` returns when the timer is due; the timerfd is never
reported as an event. Where timerfd is missing (not Linux), the selector is epoll's or the
platform's default and the loop is asyncio's own.

Scrapy installs it from ``ASYNCIO_EVENT_LOOP`` (settings.py) with the asyncio reactor.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import select
import selectors
from typing import Any

CLOCK_MONOTONIC = 1  # asyncio's loop.time() is time.monotonic()


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _timerfd_calls() -> tuple[Any, Any] | None:
    """libc's timerfd_create and timerfd_settime, or None where they are missing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        create, settime = libc.timerfd_create, libc.timerfd_settime
    except (OSError, AttributeError):
        return None
    create.argtypes = [ctypes.c_int, ctypes.c_int]
    settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p]
    return create, settime


_CALLS = _timerfd_calls() if hasattr(select, "epoll") else None


class PreciseEpollSelector(selectors.EpollSelector):
    """epoll, with a timerfd armed for each timed wait (reset before every later wait, so a
    timer that fired never wakes a wait it was not armed for)."""

    def __init__(self) -> None:
        super().__init__()
        assert _CALLS is not None
        create, self._settime = _CALLS
        self._tfd = create(CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if self._tfd < 0:
            err = ctypes.get_errno()
            super().close()
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")
        self._selector.register(self._tfd, select.EPOLLIN)  # not in the map: never reported
        self._spec = _Itimerspec()
        self._armed = False

    def _set(self, sec: int, nsec: int) -> None:
        """Arm the timer to expire in ``sec`` s + ``nsec`` ns (0 and 0: disarm); also clears a
        past expiry."""
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = sec, nsec
        self._settime(self._tfd, 0, ctypes.byref(self._spec), None)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout > 0:
            whole = int(timeout)
            self._set(whole, int((timeout - whole) * 1e9) or (0 if whole else 1))  # never 0 and 0
            self._armed = True
        elif self._armed:  # no timed wait: disarm, so an expiry never wakes this one
            self._set(0, 0)
            self._armed = False
        return super().select(timeout)  # epoll's own (rounded up) timeout stays as a backstop

    def close(self) -> None:
        if self._tfd >= 0:
            os.close(self._tfd)
            self._tfd = -1
        super().close()


def precise_selector() -> selectors.BaseSelector:
    """A PreciseEpollSelector where Linux has timerfd, else the platform's default selector."""
    if _CALLS is not None:
        try:
            return PreciseEpollSelector()
        except OSError:
            pass
    return selectors.DefaultSelector()


class PreciseEventLoop(asyncio.SelectorEventLoop):
    """asyncio's selector loop on :func:`precise_selector`."""

    def __init__(self, selector: selectors.BaseSelector | None = None) -> None:
        super().__init__(selector or precise_selector())
