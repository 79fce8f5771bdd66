"""Push intake: checking pushed links and storing the new ones in the frontier.

A columnar push (:func:`~crawlproj.wire.protocol.push_fields`) is checked by
:func:`~crawlproj.wire.protocol.split_push`; its requests stay the bytes the node packed. Each
key's partition is checked against :func:`~crawlproj.wire.urls.partition_of` the first time the
key is seen, and cached. A push as a list of wire request maps (an older node) is checked map by
map and packed here. Invalid requests are counted and dropped; the valid ones of the same push
are kept; a push whose columns are wrong is refused whole. ``df`` (dont_filter) requests skip
deduplication.
"""

from __future__ import annotations

from typing import Any

from crawlproj.wire.protocol import (
    FINGERPRINT_BYTES, MAX_PRIORITY, ProtocolError, Push, check_wire_request, split_push)
from crawlproj.wire.urls import partition_of

from .core import Core
from .rows import Packed, packed

PARTITION_CACHE_MAX = 100_000  # politeness keys whose partition is remembered


class PushIntake(Core):
    def _on_push(self, identity: bytes, envelope: list[bytes], msg: dict[str, Any]) -> None:
        # Links of an unknown node (e.g. pushed before it learnt of a dispatcher restart) are
        # stored all the same: the node sends them before the ack of their page, so keeping
        # them can only spare a re-crawl.
        node = self._known(identity, envelope)
        reqs = msg["requests"]
        if type(reqs) is list:
            valid, forced, bad, first_error = self._check_maps(reqs)
        else:
            try:
                push = split_push(msg, self.P)
            except ProtocolError as exc:
                self._bad("push", identity, envelope, str(exc))
                return
            valid, forced, bad, first_error = self._check_columns(push)
        n_valid = len(valid.fps) + (len(forced.fps) if forced else 0)
        self.counters["pushed"] += n_valid
        if node is not None:
            node.pushed += n_valid
        new, touched = self.frontier.add_packed(valid) if valid.fps else (0, [])
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
                      f"{bad} of {bad + n_valid} pushed requests invalid, dropped; first: {first_error}")

    def _check_columns(self, push: Push) -> tuple[Packed, Packed | None, int, str]:
        """(the requests to deduplicate, the dont_filter ones or None, invalid ones, first fault)."""
        pcache = self._pcache
        parts = push.parts
        keep: list[int] | None = None  # None: all
        bad, first_error = 0, ""
        if list(map(pcache.get, push.keys)) != parts:  # C speed: a key's partition, once cached
            keep = []
            for i, (k, p) in enumerate(zip(push.keys, parts)):
                if pcache.get(k) != p:
                    expected = self._key_partition(k)
                    if expected != p:
                        bad += 1
                        first_error = first_error or (f"wire request partition {p} is not the "
                                                      f"partition {expected} of its key {k!r}")
                        continue
                keep.append(i)
        nprs = None if push.prs is None else [-pr for pr in push.prs]
        all_of = Packed(push.fps, push.blobs, parts, nprs)
        forced = None
        if push.forced:
            df = set(push.forced)
            kept = None if keep is None else set(keep)
            forced = all_of.take([i for i in sorted(df) if kept is None or i in kept])
            keep = [i for i in (range(len(parts)) if keep is None else keep) if i not in df]
        return (all_of if keep is None else all_of.take(keep)), forced, bad, first_error

    def _check_maps(self, reqs: list[Any]) -> tuple[Packed, Packed | None, int, str]:
        """As _check_columns, for a push of wire request maps."""
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
        return packed(valid), packed(forced) if forced else None, bad, first_error

    def _key_partition(self, k: str) -> int:
        """The partition of key ``k``, cached (the cache is cleared when full)."""
        p = self._pcache.get(k)
        if p is None:
            p = partition_of(k, self.P)
            if len(self._pcache) >= PARTITION_CACHE_MAX:
                self._pcache.clear()
            self._pcache[k] = p
        return p

    def _check_request(self, r: Any) -> None:
        """Full validation of one pushed wire request; raises ProtocolError naming the fault."""
        check_wire_request(r, self.P)
        k = r["k"]
        p = self._key_partition(k)
        if r["p"] != p:
            raise ProtocolError(f"wire request partition {r['p']} is not the partition "
                                f"{p} of its key {k!r}")
        pr = r.get("pr", 0)
        if type(pr) is not int or not -MAX_PRIORITY < pr < MAX_PRIORITY:
            raise ProtocolError(f"wire request priority {pr!r} is not an integer")
