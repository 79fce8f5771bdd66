"""A changing synthetic web: when each page changes, its validators, and conditional GET.

Pages fall into the classes of ``WebSpec.change_classes`` (share of pages, mean seconds between
changes) by a draw of their own; the rest never change. A page's change times are a pure
function of the spec and its (host, path): a Poisson process of the class's rate, or a period
with a random phase (``change_process``). Web time is seconds since :data:`WEB_EPOCH` (the server
keeps the clock: virtual, set by the test, or real time scaled); version ``n`` of a page is the
one after its ``n``-th change. The version history is the freshness ground truth.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime

from .model import Page, Web

#: Wall time (epoch seconds) of web time 0: 2026-01-01T00:00:00Z. Version 0 was made then.
WEB_EPOCH = 1767225600.0
CHANGE_PROCESSES = ("poisson", "periodic")
#: Kinds of pages that change (the others are error cases that stay as they are).
CHANGING_KINDS = frozenset({"html", "latin1"})


def check_spec(web: Web) -> None:
    """ValueError naming the WebSpec field when the change classes are unusable."""
    spec = web.spec
    if spec.change_process not in CHANGE_PROCESSES:
        raise ValueError(f"WebSpec.change_process: expected one of {CHANGE_PROCESSES}, got {spec.change_process!r}")
    total = 0.0
    for entry in spec.change_classes:
        if len(entry) != 2 or not 0 <= entry[0] <= 1 or not entry[1] > 0:
            raise ValueError(f"WebSpec.change_classes: expected (share in [0, 1], mean seconds > 0) pairs, "
                             f"got {entry!r}")
        total += entry[0]
    if total > 1:
        raise ValueError(f"WebSpec.change_classes: the shares add up to {total:g}, expected at most 1")


def http_date(web_time: float) -> str:
    """An HTTP date (RFC 9110 IMF-fixdate) of a web time, to the second."""
    return formatdate(WEB_EPOCH + int(web_time), usegmt=True)


def parse_http_date(value: str) -> float | None:
    """Web time of an HTTP date, or None when it does not parse."""
    try:
        return parsedate_to_datetime(value).timestamp() - WEB_EPOCH
    except (TypeError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Version:
    number: int  # 0 = the page as first made
    since: float  # web time it became current


class Changes:
    """Change times of every page of one web, generated on demand and kept per page."""

    def __init__(self, web: Web):
        check_spec(web)
        self.web = web
        self._times: dict[tuple[str, str], list[float]] = {}
        self._rng: dict[tuple[str, str], random.Random] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.web.spec.change_classes)

    def period(self, page: Page) -> float | None:
        """Mean seconds between the page's changes; None: it never changes."""
        if not self.enabled or page.kind not in CHANGING_KINDS:
            return None
        draw = random.Random(f"change-class:{self.web.spec.seed}:{page.host}:{page.path}").random()
        for share, mean in self.web.spec.change_classes:
            if draw < share:
                return mean
            draw -= share
        return None

    def change_times(self, page: Page, until: float) -> list[float]:
        """Web times of the page's changes up to ``until`` (inclusive), in order."""
        mean = self.period(page)
        if mean is None or until <= 0:
            return []
        key = (page.host, page.path)
        times = self._times.get(key)
        if times is None:
            times = self._times[key] = []
            self._rng[key] = random.Random(f"change-times:{self.web.spec.seed}:{page.host}:{page.path}")
        periodic = self.web.spec.change_process == "periodic"
        rng = self._rng[key]  # one stream per page: the same times however far it is extended
        while not times or times[-1] <= until:
            if not times:
                first = rng.random() * mean if periodic else rng.expovariate(1.0 / mean)
                times.append(first)  # periodic: the phase, in [0, mean)
            else:
                times.append(times[-1] + (mean if periodic else rng.expovariate(1.0 / mean)))
        return times[:bisect.bisect_right(times, until)]

    def version(self, page: Page, now: float) -> Version:
        times = self.change_times(page, now)
        return Version(len(times), times[-1] if times else 0.0)

    def history(self, page: Page, now: float) -> list[Version]:
        """Every version of the page up to ``now``, the first one first."""
        return [Version(0, 0.0)] + [Version(n + 1, t) for n, t in enumerate(self.change_times(page, now))]


    def freshness(self, page: Page, fetches: list[float], start: float, end: float) -> float:
        """Share of [start, end] during which a copy fetched at ``fetches`` (web times) equals
        the live page; no copy before the first fetch counts as stale."""
        if end <= start:
            raise ValueError(f"freshness: expected start < end, got [{start}, {end}]")
        changes = self.change_times(page, end)
        edges = sorted({start, end, *(t for t in changes if start < t < end), *(f for f in fetches if start < f < end)})
        fresh = 0.0
        for a, b in zip(edges, edges[1:]):
            copied = [f for f in fetches if f <= a]
            if copied and bisect.bisect_right(changes, max(copied)) == bisect.bisect_right(changes, a):
                fresh += b - a
        return fresh / (end - start)


def etag_of(body: bytes) -> str:
    """A strong entity tag: equal bodies, equal tags (RFC 9110 8.8.3)."""
    return '"' + hashlib.blake2b(body, digest_size=8).hexdigest() + '"'


def not_modified(etag: str, last_modified: float, if_none_match: str | None,
                 if_modified_since: str | None) -> bool:
    """RFC 9110 13.2.2: If-None-Match decides when present, else If-Modified-Since."""
    if if_none_match is not None:
        tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
        return "*" in tags or etag in tags
    if if_modified_since is not None:
        since = parse_http_date(if_modified_since)
        return since is not None and int(last_modified) <= since
    return False
