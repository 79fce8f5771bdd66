"""DNS rebinding for the SSRF test: a crawler setting, so it lives in a module of its own."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from crawlproj_testing.resolver import SyntheticResolver


class RebindingResolver(SyntheticResolver):
    """Names under ``rebind.test`` first resolve to 127.0.0.2, then to 127.0.0.1.

    The SSRF pre-check sees the first answer, the connection the second (``DNSCACHE_ENABLED``
    off). Both are loopback: a broken guard never sends a packet off this machine.
    """

    answers: dict[str, int] = {}

    def getHostByName(self, name: str, timeout: Any = ()) -> defer.Deferred[str]:
        name = name.lower().rstrip(".")
        if name == "rebind.test" or name.endswith(".rebind.test"):
            n = self.answers[name] = self.answers.get(name, 0) + 1
            return defer.succeed("127.0.0.2" if n == 1 else "127.0.0.1")
        return super().getHostByName(name, timeout)
