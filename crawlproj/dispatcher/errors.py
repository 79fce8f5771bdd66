"""Exceptions of the dispatcher package: one root, :class:`DispatcherError`."""

from __future__ import annotations


class DispatcherError(Exception):
    """Root of every error the dispatcher package raises on purpose."""


class ConfigError(DispatcherError):
    """A bad option or environment override; the service refuses to start."""


class StoreError(DispatcherError):
    """The frontier store cannot be opened or does not belong to this crawl (e.g. another P)."""


class StartError(DispatcherError):
    """The dispatcher child process did not come up (see its log)."""
