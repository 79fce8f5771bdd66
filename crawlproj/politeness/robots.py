"""robots.txt under RFC 9309: the cached row of an authority, what a fetch result means, parsing.

Pure functions and plain data: no I/O, no Scrapy. The middleware fetches, the store persists,
:class:`crawlproj.politeness.robots_cache.RobotsCache` applies the cache and retry policy.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from protego import Protego

#: RFC 9309 2.5: crawlers SHOULD parse at least the first 500 KiB; we parse exactly that much.
MAX_ROBOTS_BYTES = 500 * 1024
#: RFC 9309 2.3.1.2: crawlers SHOULD follow at least five consecutive redirects.
MAX_ROBOTS_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_GROUP_LINE = re.compile(r"^[ \t]*user-?agent[ \t]*:", re.IGNORECASE | re.MULTILINE)

# RFC 9309 2.3.1: the outcomes of a robots.txt fetch (the synthetic web's model uses these too).
RULES = "rules"  # 2xx: obey the parsed groups
ALLOW = "allow"  # 4xx, too many redirects: "unavailable", everything may be crawled
DISALLOW = "disallow"  # 5xx, network error: "unreachable", nothing may be crawled for now


def outcome_of_status(status: int) -> str:
    """RFC 9309 2.3.1: what an HTTP status (0 = no response at all) means for the rules.

    3xx only reaches here when the redirects ran out or had no usable Location: "unavailable".
    """
    if 200 <= status < 300:
        return RULES
    if 300 <= status < 500:
        return ALLOW
    return DISALLOW


@dataclass(slots=True)
class RobotsRow:
    """One authority's robots.txt state, as stored in SQLite and handed over between nodes.

    The "good copy" fields (``fetched_at``, ``status``, ``outcome``, ``body``) describe the last
    fetch that gave an answer (2xx, 3xx, 4xx). The failure fields describe the current run of
    unreachable fetches (5xx, network errors); ``failures == 0`` means the good copy is current.
    """

    authority: str  # scheme://host[:port], the port only when not the scheme's default
    key: str  # politeness key of the authority (its partition decides who owns the row)
    fetched_at: float | None = None  # epoch seconds of the good copy
    status: int | None = None  # HTTP status of the good copy (final hop)
    outcome: str | None = None  # RULES, ALLOW (DISALLOW only while failing, never stored here)
    body: bytes | None = None  # at most MAX_ROBOTS_BYTES of the good copy (2xx only)
    checked_at: float = 0.0  # epoch seconds of the last attempt, good or not
    failures: int = 0  # consecutive unreachable fetches
    fail_since: float | None = None  # epoch seconds of the first of them
    next_retry: float | None = None  # epoch seconds when the next attempt is due
    error: str | None = None  # status or exception of the last failed attempt

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RobotsRow:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True, slots=True)
class ParsedRobots:
    """The rules one can act on: a Protego parser (RULES) or a blanket verdict."""

    outcome: str
    parser: Protego | None = None
    crawl_delay: float | None = None
    #: what was odd about the body, for stats: "truncated", "not_utf8", "no_rules",
    #: "crawl_delay_capped", "parse_error"
    notes: tuple[str, ...] = field(default=())

    def allowed(self, url: str, user_agent: str) -> bool:
        if self.outcome == RULES and self.parser is not None:
            return self.parser.can_fetch(url, user_agent)
        return self.outcome != DISALLOW


ALLOW_ALL = ParsedRobots(ALLOW)
DISALLOW_ALL = ParsedRobots(DISALLOW)


def truncate_body(body: bytes) -> tuple[bytes, bool]:
    """The first MAX_ROBOTS_BYTES, cut after the last complete line (a half line could turn
    ``Allow: /private/7`` into ``Allow: /pr``). Returns (body, truncated)."""
    if len(body) <= MAX_ROBOTS_BYTES:
        return body, False
    head = body[:MAX_ROBOTS_BYTES]
    cut = max(head.rfind(b"\n"), head.rfind(b"\r"))
    return (head[: cut + 1] if cut >= 0 else b""), True


def parse_robots(body: bytes, user_agent: str, crawl_delay_max: float) -> ParsedRobots:
    """Parse a 2xx body: at most 500 KiB, UTF-8 (invalid bytes replaced), Crawl-delay capped.

    Never raises: a body the parser cannot handle yields allow-all with the note "parse_error"
    (RFC 9309 2.2: lines that cannot be parsed are ignored; nothing left means no rules).
    """
    notes: list[str] = []
    body, truncated = truncate_body(body)
    if truncated:
        notes.append("truncated")
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = body.decode("utf-8", "replace")
        notes.append("not_utf8")
    try:
        parser = Protego.parse(text)
        delay = parser.crawl_delay(user_agent)
    except Exception:  # a parser bug must not stop the crawl; the note makes it visible
        return ParsedRobots(ALLOW, notes=tuple(notes + ["parse_error"]))
    if not _GROUP_LINE.search(text):  # no group at all: garbage, or an empty file
        notes.append("no_rules")
    if delay is not None and (not math.isfinite(delay) or delay > crawl_delay_max):
        delay = crawl_delay_max
        notes.append("crawl_delay_capped")
    return ParsedRobots(RULES, parser, delay, tuple(notes))


def parsed_of_row(row: RobotsRow, user_agent: str, crawl_delay_max: float) -> ParsedRobots:
    """The rules of a row's good copy (allow-all when it had no 2xx body)."""
    if row.outcome == RULES:
        return parse_robots(row.body or b"", user_agent, crawl_delay_max)
    return ALLOW_ALL if row.outcome == ALLOW else DISALLOW_ALL
