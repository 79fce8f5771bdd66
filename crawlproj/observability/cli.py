"""The observability subcommands of ``crawlproj``: top, logs, diagnose, profile."""

from __future__ import annotations

from typing import Any

from . import diagnose, logs, profile, top


def add_arguments(sub: Any) -> None:
    top.add_arguments(sub)
    logs.add_arguments(sub)
    diagnose.add_arguments(sub)
    profile.add_arguments(sub)
