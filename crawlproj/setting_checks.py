"""Read a setting with its typed getter and check it, or stop with a message a person can act on.

Every bad value is a ValueError naming the setting, what it expects and the value it got, e.g.
``ROBOTS_RETRY_DELAY: expected seconds > 0, got 0.0``; a crawl that fails at start prints it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
