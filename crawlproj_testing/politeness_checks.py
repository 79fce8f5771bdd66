"""Politeness checks on synthetic-web access logs, for any test that crawls it (one node or many).

    from crawlproj_testing.politeness_checks import assert_polite, assert_restart_gap
    assert_polite(proc.accesses(), delay=0.3)                      # every key, whole log
    assert_polite(entries, delay={"site0003.test": 0.5}, default=0.3)
    assert_restart_gap(run1_entries, run2_entries, delay=0.3)

An access is a :class:`crawlproj_testing.synthweb.process.Access` (start and end in ms, as the server saw
them). Keys are :func:`crawlproj.wire.urls.politeness_key` of the host, so the checks hold the crawler
to the same definition of "one site" that it schedules by.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from crawlproj_testing.synthweb.process import Access
from crawlproj.wire.urls import politeness_key

__all__ = ["TOLERANCE", "KeySummary", "assert_polite", "assert_restart_gap", "by_key", "key_of_host",
           "politeness_violations"]

#: A measured gap may fall this much short of the delay (clock granularity, log rounding).
TOLERANCE = 0.95

Delay = float | Mapping[str, float] | Callable[[str], float]


def key_of_host(host: str, by: str = "domain") -> str:
    return politeness_key(f"http://{host}/", by)


def by_key(accesses: Iterable[Access], by: str = "domain") -> dict[str, list[Access]]:
    """Accesses grouped by politeness key, each list in order of start time."""
    groups: dict[str, list[Access]] = defaultdict(list)
    for a in accesses:
        groups[key_of_host(a.host, by)].append(a)
    for entries in groups.values():
        entries.sort(key=lambda a: (a.start_ms, a.end_ms))
    return dict(groups)


def _delay_of(delay: Delay, default: float | None) -> Callable[[str], float]:
    if callable(delay):
        return delay
    if isinstance(delay, Mapping):
        mapping = delay
        return lambda key: mapping[key] if key in mapping or default is None else default
    value = float(delay)
    return lambda key: value


@dataclass(frozen=True)
class KeySummary:
    fetches: int
    min_gap_s: float | None  # smallest gap between consecutive fetch starts, seconds


def politeness_violations(accesses: Iterable[Access], delay: Delay, by: str = "domain",
                          default: float | None = None,
                          tolerance: float = TOLERANCE) -> tuple[list[str], dict[str, KeySummary]]:
    """(violations, per-key summary): overlapping fetches on one key, and consecutive fetch
    starts on one key closer than ``tolerance`` x its delay. ``delay`` is seconds, a mapping
    key -> seconds (``default`` for the others) or a function of the key."""
    delay_of = _delay_of(delay, default)
    problems: list[str] = []
    summary: dict[str, KeySummary] = {}
    for key, entries in by_key(accesses, by).items():
        need_ms = tolerance * delay_of(key) * 1000.0
        gaps = []
        for prev, cur in zip(entries, entries[1:]):
            gap = cur.start_ms - prev.start_ms
            gaps.append(gap)
            if cur.start_ms < prev.end_ms:
                problems.append(f"{key}: {cur.host}{cur.path} started at {cur.start_ms:.1f} while "
                                f"{prev.host}{prev.path} ran until {prev.end_ms:.1f} (overlap)")
            if gap < need_ms:
                problems.append(f"{key}: {prev.host}{prev.path} -> {cur.host}{cur.path} "
                                f"{gap:.1f} ms apart, need >= {need_ms:.1f} ms")
        summary[key] = KeySummary(len(entries), min(gaps) / 1000.0 if gaps else None)
    return problems, summary


def assert_polite(accesses: Iterable[Access], delay: Delay, by: str = "domain",
                  default: float | None = None, tolerance: float = TOLERANCE) -> dict[str, KeySummary]:
    """Fail on any overlap or short gap (see :func:`politeness_violations`); return the summary."""
    problems, summary = politeness_violations(accesses, delay, by, default, tolerance)
    assert not problems, f"{len(problems)} politeness violations:\n" + "\n".join(problems[:20])
    return summary


def assert_restart_gap(before: Iterable[Access], after: Iterable[Access], delay: Delay,
                       by: str = "domain", default: float | None = None,
                       tolerance: float = TOLERANCE) -> dict[str, float]:
    """Across a restart (or a partition handoff): on every key fetched both before and after,
    the first fetch after starts >= delay after the last fetch before. Returns the gaps (s)."""
    delay_of = _delay_of(delay, default)
    first = by_key(before, by)
    second = by_key(after, by)
    gaps: dict[str, float] = {}
    problems = []
    for key in first.keys() & second.keys():
        last, nxt = first[key][-1], second[key][0]
        gap_ms = nxt.start_ms - last.start_ms
        gaps[key] = gap_ms / 1000.0
        if gap_ms < tolerance * delay_of(key) * 1000.0 or nxt.start_ms < last.end_ms:
            problems.append(f"{key}: last {last.host}{last.path} at {last.start_ms:.1f}, next "
                            f"{nxt.host}{nxt.path} at {nxt.start_ms:.1f} ({gap_ms:.1f} ms)")
    assert not problems, "politeness broken across the restart:\n" + "\n".join(problems[:20])
    return gaps
