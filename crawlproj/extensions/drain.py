"""What a node tells the dispatcher about the work it holds while the crawl drains.

:func:`drain_stats` goes into every "stats" report of a node (DispatcherScheduler); the
dispatcher sums the reports up in its "state" (crawlproj.dispatcher.status.drain) and
``crawlproj cluster`` prints them: keys with work left, the rate their delays allow, the time
the slowest key needs and why. Pure: no Scrapy import (the dispatcher reads the names).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crawlproj.politeness.gate import PolitenessGate

#: The stats names of :func:`drain_stats` (numbers only: a node's stats report carries no text,
#: so the last key and the reason for its delay are in the names).
DRAIN_PREFIX = "drain/"
DRAIN_LAST_KEY = "drain/last/key/"  # + the key: 1
DRAIN_LAST_WHY = "drain/last/why/"  # + one of DELAY_REASONS: 1
#: What sets the time between two fetches on a key (one fetch at a time per key, then its
#: delay past the answer, see Politeness.delay_for): the larger of the delay and the answer time.
DELAY_REASONS = {"crawl-delay": "its robots.txt Crawl-delay",
                 "adaptive": "the adaptive delay (ROBOTS_THROTTLE_ADAPTIVE)",
                 "key-delay": "its ROBOTS_THROTTLE_KEY_DELAYS entry",
                 "download-delay": "DOWNLOAD_DELAY",
                 "answer-time": "its answer time (one fetch at a time per key)"}


def key_period(gate: PolitenessGate, key: str) -> tuple[float, str]:
    """Seconds between two fetches on ``key`` (its delay plus its last answer time, or the time
    its fetch in flight has taken so far) and what sets it, a DELAY_REASONS name."""
    delay = gate.delay_for(key)
    state = gate.state.key_state(key)
    row = state.row
    if not row.last_start:
        answer = 0.0
    elif row.last_done >= row.last_start:
        answer = row.last_done - row.last_start  # its last answer
    else:
        answer = max(0.0, gate.state.clock() - row.last_start)  # the fetch in flight, so far
    if answer > delay:
        return delay + answer, "answer-time"
    crawl_delay = min(max(row.crawl_delays.values(), default=0.0), gate.config.crawl_delay_max)
    if crawl_delay >= delay > 0:
        return delay + answer, "crawl-delay"
    if state.adaptive >= delay > 0:
        return delay + answer, "adaptive"
    return delay + answer, "key-delay" if key in gate.config.key_delays else "download-delay"


def drain_stats(work: Iterable[str], gate: PolitenessGate | None) -> dict[str, float]:
    """The work a node holds, one politeness key per queued or in-flight request in ``work``:

    ``drain/keys`` (keys with work), ``drain/pages``, ``drain/rate`` (pages/s the keys allow at
    most, one fetch at a time each: the sum of 1/period, see :func:`key_period`), ``drain/eta``
    (seconds the slowest key needs at least: its pages x its period) and that key:
    ``drain/last/key/<key>``, ``drain/last/pages``, ``drain/last/period``,
    ``drain/last/why/<reason>`` (a DELAY_REASONS name). Without a politeness gate only keys and
    pages.
    """
    pages = Counter(work)
    out: dict[str, float] = {"drain/keys": len(pages), "drain/pages": sum(pages.values())}
    if gate is None or not pages:
        return out
    rate, last, last_eta, last_period, last_why = 0.0, "", -1.0, 0.0, ""
    for key, n in pages.items():
        period, why = key_period(gate, key)
        if period > 0:
            rate += 1.0 / period
        if n * period > last_eta:
            last, last_eta, last_period, last_why = key, n * period, period, why
    out.update({"drain/rate": round(rate, 3), "drain/eta": round(last_eta, 3),
                "drain/last/pages": pages[last], "drain/last/period": round(last_period, 3),
                DRAIN_LAST_KEY + last: 1, DRAIN_LAST_WHY + last_why: 1})
    return out
