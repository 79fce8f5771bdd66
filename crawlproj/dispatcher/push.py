"""Push intake: validating pushed links and storing the new ones in the frontier.

A pushed wire request is checked fully (:func:`~crawlproj.wire.protocol.check_wire_request`, its
partition against its key, its priority) the first time its politeness key is seen; after that
a fast path checks only the types, since the key's partition is cached. Invalid requests are
counted and dropped; the valid ones of the same push are kept. ``df`` (dont_filter) requests
skip deduplication.
"""

from __future__ import annotations

from typing import Any

from crawlproj.wire.protocol import FINGERPRINT_BYTES, ProtocolError, check_wire_request
from crawlproj.wire.urls import partition_of

from .core import Core

MAX_PRIORITY = 2 ** 62  # |pr| beyond this does not fit SQLite's integer once negated
PARTITION_CACHE_MAX = 100_000  # politeness keys whose partition is remembered


class PushIntake(Core):
    def _on_push(self, identity: bytes, envelope: list[bytes], msg: dict[str, Any]) -> None:
        # Links of an unknown node (e.g. pushed before it learnt of a dispatcher restart) are
        # stored all the same: the node sends them before the ack of their page, so keeping
        # them can only spare a re-crawl.
        node = self._known(identity, envelope)
        reqs = msg["requests"]
        if not isinstance(reqs, list):
            self._bad("push", identity, envelope, "requests must be a list")
            return
        valid: list[dict[str, Any]] = []
        forced: list[dict[str, Any]] = []
        bad = 0
        first_error = ""
        pcache = self._pcache
        # Locals: this loop runs for every pushed link (about a microsecond each).
        append, fp_bytes = valid.append, FINGERPRINT_BYTES
        type_, len_, bytes_, str_, int_, dict_ = type, len, bytes, str, int, dict
        for r in reqs:
            # Fast path for the common case (a valid request without priority or dont_filter);
            # the partition cache only holds keys that passed the full check once. Anything
            # else gets the full check, which names the fault.
            try:
                f = r["f"]
                p = r["p"]
                if (type_(f) is bytes_ and len_(f) == fp_bytes and pcache[r["k"]] == p
                        and type_(p) is int_ and type_(r["u"]) is str_ and type_(r) is dict_
                        and "pr" not in r and "df" not in r):
                    append(r)
                    continue
            except (KeyError, TypeError, IndexError):
                pass
            try:
                self._check_request(r)
            except ProtocolError as exc:
                bad += 1
                if not first_error:
                    first_error = str(exc)
                continue
            if r.get("df"):
                forced.append(r)
            else:
                valid.append(r)
        n_valid = len(valid) + len(forced)
        self.counters["pushed"] += n_valid
        if node is not None:
            node.pushed += n_valid
        new, touched = self.frontier.add(valid)
        if forced:
            new_forced, touched_forced = self.frontier.add_forced(forced)
            new += new_forced
            touched += touched_forced
        self.counters["new"] += new
        self.counters["duplicates"] += n_valid - new
        for p in touched:
            self._wake(p)
        if bad:
            self.counters["bad_requests"] += bad
            self._bad("request", identity, envelope,
                      f"{bad} of {len(reqs)} pushed requests invalid, dropped; first: {first_error}")

    def _check_request(self, r: Any) -> None:
        """Full validation of one pushed wire request; raises ProtocolError naming the fault."""
        check_wire_request(r, self.P)
        k = r["k"]
        p = self._pcache.get(k)
        if p is None:
            p = partition_of(k, self.P)
        if r["p"] != p:
            raise ProtocolError(f"wire request partition {r['p']} is not the partition "
                                f"{p} of its key {k!r}")
        pr = r.get("pr", 0)
        if type(pr) is not int or not -MAX_PRIORITY < pr < MAX_PRIORITY:
            raise ProtocolError(f"wire request priority {pr!r} is not an integer")
        if len(self._pcache) >= PARTITION_CACHE_MAX:
            self._pcache.clear()
        self._pcache[k] = p
