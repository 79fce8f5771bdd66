"""Seed sources: command line, a file, a Redis key (scrapy-redis convention).

A URL and a path are told apart by ``://``: a seed given as a URL has it (``http://...``), a
path never does. ``--seeds`` takes URLs only (an entry without ``://`` is refused, pointing at
``--seeds-file``); ``--seeds-file`` takes a path (a missing one is "file not found: PATH").
Lines of a seeds file that are not UTF-8 are skipped, counted and named in one WARNING.

Each source yields plain URL strings; the dispatcher routes them with
:func:`crawlproj.wire.protocol.routed_request` (canonical URL, fingerprint, key, partition),
exactly as the nodes do.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crawlproj.wire.protocol import routed_request
from crawlproj.wire.urls import BadURL

from .errors import ConfigError

logger = logging.getLogger(__name__)

REDIS_BATCH = 1000  # seeds popped from Redis per round trip
REDIS_TIMEOUT = 5.0  # seconds for one Redis command


def wire_seed(url: str, partitions: int, key_by: str) -> dict[str, Any]:
    """The wire request of a seed URL; raises BadURL."""
    return routed_request(url, partitions, key_by)


def parse_seed_item(item: bytes | str) -> str | None:
    """A scrapy-redis start URL entry: a plain URL or JSON ``{"url": ...}``; None if neither."""
    text = item.decode("utf-8", "replace") if isinstance(item, bytes) else item
    text = text.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            return None
        url = obj.get("url") if isinstance(obj, dict) else None
        return url if isinstance(url, str) else None
    return text or None


URL_MARK = "://"  # in every seed URL, in no path of a seeds file
LINES_NAMED = 10  # undecodable line numbers named in the warning


def seed_urls(value: str, option: str = "--seeds") -> list[str]:
    """The comma-separated URLs of ``value``; ConfigError for an entry that is not a URL."""
    urls = [s.strip() for s in (value or "").split(",") if s.strip()]
    for url in urls:
        if URL_MARK not in url:
            raise ConfigError(f"{option}: {url!r} is not a URL (no {URL_MARK}); "
                              "a file of seeds goes to --seeds-file")
    return urls


def check_seeds_file(path: str) -> None:
    """ConfigError "file not found: PATH" (or why it cannot be read) before the crawl starts."""
    if not Path(path).is_file():
        raise ConfigError(f"--seeds-file: file not found: {path}" if not Path(path).exists()
                          else f"--seeds-file: not a file: {path}")
    try:
        with Path(path).open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"--seeds-file: cannot read {path}: {exc.strerror}") from exc


def read_seeds_file(path: str) -> Iterator[str]:
    """One URL (or JSON object) a line; blank lines and '#' comments skipped, lines that are
    not UTF-8 skipped and counted (one WARNING naming the file and the lines)."""
    undecodable: list[int] = []
    try:
        with Path(path).open("rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    undecodable.append(number)
                    continue
                if line and not line.startswith("#"):
                    url = parse_seed_item(line)
                    if url:
                        yield url
    except FileNotFoundError:
        raise ConfigError(f"--seeds-file: file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"--seeds-file: cannot read {path}: {exc.strerror}") from exc
    if undecodable:
        named = ", ".join(map(str, undecodable[:LINES_NAMED]))
        more = f" and {len(undecodable) - LINES_NAMED} more" if len(undecodable) > LINES_NAMED else ""
        lines = "line" if len(undecodable) == 1 else "lines"
        logger.warning("Seeds file %s: skipped %d %s that are not UTF-8 (%s %s%s)",
                       path, len(undecodable), lines, lines, named, more)


class RedisSeeds:
    """Pops seeds from a Redis list or set, atomically per batch (as scrapy-redis does)."""

    def __init__(self, url: str, key: str, batch: int = REDIS_BATCH) -> None:
        import redis

        self.url = url
        self.key = key
        self.batch = batch
        self.client = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT,
                                           socket_connect_timeout=REDIS_TIMEOUT)

    def pop(self) -> list[str]:
        """Up to one batch of seed URLs (empty when the key is empty or missing)."""
        kind = self.client.type(self.key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "list":
            with self.client.pipeline(transaction=True) as pipe:
                pipe.lrange(self.key, 0, self.batch - 1)
                pipe.ltrim(self.key, self.batch, -1)
                items, _ = pipe.execute()
        elif kind == "set":
            items = self.client.spop(self.key, self.batch) or []
        elif kind == "none":
            return []
        else:
            logger.error("Redis key %r is a %s; seeds must be in a list or a set", self.key, kind)
            return []
        urls = []
        for item in items:
            url = parse_seed_item(item)
            if url is None:
                logger.warning("Ignored a Redis seed entry that is neither a URL nor "
                               "JSON with a url: %r", item[:200])
            else:
                urls.append(url)
        return urls

    def close(self) -> None:
        self.client.close()


__all__ = ["BadURL", "RedisSeeds", "check_seeds_file", "parse_seed_item", "read_seeds_file",
           "seed_urls", "wire_seed"]
