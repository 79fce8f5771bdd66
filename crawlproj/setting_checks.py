"""Typed setting readers: read a setting with its typed getter and check it, or stop with a
message a person can act on.

Every bad value is a ValueError naming the setting, what it expects and the value it got, e.g.
``ROBOTS_RETRY_DELAY: expected seconds > 0, got 0.0``; a crawl that fails at start prints it.
Configuration classes read their settings here (``XConfig.from_settings(settings)``, pure);
``from_crawler`` alone decides ``NotConfigured``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from scrapy.exceptions import NotConfigured

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name: a token (RFC 9110)


def check_setting(ok: bool, name: str, value: Any, expect: str) -> None:
    """ValueError naming the setting, its value and what was expected, unless ``ok``."""
    if not ok:
        raise ValueError(f"{name}: expected {expect}, got {value!r}")


def typed_setting(settings: BaseSettings, name: str, getter: Callable[[str], Any], expect: str,
                  ok: Callable[[Any], bool] | None = None) -> Any:
    """``getter(name)``, which ``ok`` (if given) accepts; else ValueError naming the setting, its
    value and what was expected."""
    try:
        value = getter(name)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected {expect}, got {settings.get(name)!r}") from exc
    if ok is not None:
        check_setting(ok(value), name, value, expect)
    return value


def bool_setting(settings: BaseSettings, name: str, expect: str = "a boolean") -> bool:
    """A boolean setting (``True``, ``"false"``, ``1``, ...)."""
    return bool(typed_setting(settings, name, settings.getbool, expect))


def int_at_least(settings: BaseSettings, name: str, minimum: int, expect: str | None = None) -> int:
    """An integer setting >= ``minimum``."""
    expect = f"an integer >= {minimum}" if expect is None else expect
    return int(typed_setting(settings, name, settings.getint, expect, lambda v: v >= minimum))


def float_at_least(settings: BaseSettings, name: str, minimum: float = 0.0, expect: str | None = None) -> float:
    """A number setting >= ``minimum``."""
    expect = f"a number >= {minimum:g}" if expect is None else expect
    return float(typed_setting(settings, name, settings.getfloat, expect, lambda v: v >= minimum))


def positive_float(settings: BaseSettings, name: str, expect: str = "a number > 0") -> float:
    """A number setting > 0."""
    return float(typed_setting(settings, name, settings.getfloat, expect, lambda v: v > 0))


def dict_setting(settings: BaseSettings, name: str, expect: str = "a dict (or a JSON object)") -> dict[str, Any]:
    """A dict setting, given as a dict or as a JSON object (``-s NAME='{"a": 1}'``)."""
    value: dict[str, Any] = typed_setting(settings, name, settings.getdict, expect)
    return value


def parse_list(name: str, value: Any, of: type | None = None) -> list[Any]:
    """``value`` as a list: a list or tuple as it is; a string that is a JSON list as that list
    (``-s NAME='["a", ["b", "c"]]'``); any other string as comma-separated parts, stripped,
    empty ones dropped (so a regex like ``[a-z]+`` stays one item); ``None`` and ``""`` as
    ``[]``. With ``of``, every element must be one."""
    if value is None:
        return []
    raw = value
    if isinstance(raw, str):
        text = raw.strip()
        parsed: Any = None
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
        if isinstance(parsed, list):
            raw = parsed
        else:
            raw = [part.strip() for part in text.split(",") if part.strip()]
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"{name}: expected a list, got {value!r}")
    if of is not None and not all(isinstance(v, of) for v in raw):
        raise ValueError(f"{name}: expected a list of {of.__name__}, got {value!r}")
    return list(raw)


def list_setting(settings: BaseSettings, name: str, of: type | None = None) -> list[Any]:
    """A list setting: a list, a JSON list or a comma-separated string (see :func:`parse_list`)."""
    return parse_list(name, settings.get(name), of)


def str_setting(settings: BaseSettings, name: str, expect: str = "a string") -> str:
    """A string setting; ``None`` reads as ``""``."""
    value = settings.get(name)
    value = "" if value is None else value
    check_setting(isinstance(value, str), name, value, expect)
    return str(value)


def file_setting(settings: BaseSettings, name: str, create_dirs: bool = True) -> str:
    """A file path setting (``""``: none) whose directory exists or, with ``create_dirs``, can be
    created: the nearest existing ancestor is a directory. Nothing is created here."""
    path = str_setting(settings, name, "a path or ''")
    if not path:
        return path
    directory = os.path.dirname(os.path.abspath(path))
    if not create_dirs:
        check_setting(os.path.isdir(directory), name, path, "a file in an existing directory")
        return path
    ancestor = directory
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    check_setting(os.path.isdir(ancestor), name, path, "a file in a directory that exists or can be created")
    return path


#: Scrapy's component dicts: their keys are import paths.
COMPONENT_DICT_SUFFIXES = ("MIDDLEWARES", "EXTENSIONS", "PIPELINES", "ADDONS")
_DOTTED = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")  # a default like "scrapy.core.scheduler.Scheduler"
_NAME_OR_PATH = frozenset({"REFERRER_POLICY"})  # a path default, but a policy name ("no-referrer") is fine
#: Scrapy settings with an integer default that Scrapy reads as seconds (``getfloat``).
SCRAPY_SECONDS_WITH_INT_DEFAULT = frozenset({"DNS_TIMEOUT", "DOWNLOAD_DELAY", "DOWNLOAD_TIMEOUT"})


def check_scrapy_settings(settings: BaseSettings) -> None:
    """Scrapy's own typed settings read as Scrapy reads them: each whose default is a bool, an
    int, a float or a dict, and ``LOG_LEVEL``; ValueError naming the first bad one (Scrapy's own
    error, e.g. ``invalid literal for int()``, would not name it)."""
    from scrapy.settings import default_settings

    for name in dir(default_settings):
        if not name.isupper() or settings[name] is None:  # [] does not warn of deprecated names
            continue
        default = getattr(default_settings, name)
        if isinstance(default, bool):
            bool_setting(settings, name)
        elif isinstance(default, float) or name in SCRAPY_SECONDS_WITH_INT_DEFAULT:
            typed_setting(settings, name, settings.getfloat, "a number")
        elif isinstance(default, int):
            typed_setting(settings, name, settings.getint, "an integer")
        elif isinstance(default, dict):
            dict_setting(settings, name)
        if isinstance(default, dict) and name.endswith(COMPONENT_DICT_SUFFIXES):
            for path in settings.getdict(name):
                _importable(name, path, "component paths")
        elif (isinstance(default, str) and settings[name] != default and _DOTTED.match(default)
              and name not in _NAME_OR_PATH):
            _importable(name, settings[name], "an importable class or function path")
    level = settings["LOG_LEVEL"]
    check_setting(isinstance(level, int) or level in logging.getLevelNamesMapping(), "LOG_LEVEL", level,
                  "one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    if settings["LOG_FILE"]:
        file_setting(settings, "LOG_FILE", create_dirs=False)
    _check_download_handlers(settings)


def _check_download_handlers(settings: BaseSettings) -> None:
    """Each configured download handler with a ``check_settings(settings)`` checks its own."""
    from scrapy.utils.misc import load_object

    for path in settings.getwithbase("DOWNLOAD_HANDLERS").values():
        handler = load_object(path) if isinstance(path, str) else path
        check = getattr(handler, "check_settings", None)
        if callable(check):
            check(settings)


def _importable(name: str, path: Any, expect: str) -> None:
    from scrapy.utils.misc import load_object

    if not isinstance(path, str):
        return  # a class or function itself
    try:
        load_object(path)
    except (ImportError, NameError, ValueError, AttributeError) as exc:
        raise ValueError(f"{name}: expected {expect}, got {path!r} ({exc})") from None


class ScrapySettingsCheck:
    """The first extension: :func:`check_scrapy_settings` before any component reads them."""

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> ScrapySettingsCheck:
        check_scrapy_settings(crawler.settings)
        raise NotConfigured
