"""The dispatcher <-> node wire protocol: every message, reason code, encoder and check.

One module, imported by the dispatcher and by the nodes (DESIGN.md: "one fact, one place").
Transport: the dispatcher binds a ZeroMQ ROUTER, each node connects a DEALER whose routing id is
its node name. Every message is one frame (after the ROUTER's identity frame): a msgpack map
``{"v": PROTOCOL_VERSION, "t": <type>, ...}``. Nothing is pickled. A frame that is too large, not
msgpack, not a map, of another version, of an unknown type, or missing a field raises
:class:`ProtocolError` (its ``code`` names the fault); receivers count it and drop it, they never
crash.

Messages (node -> dispatcher)
    register   {node, pid, host, capacity}           join, or rejoin after a restart
               (+ fetch_timeout: longest fetch on a key, seconds; clock: the node's, echoed)
               (+ keep: lease ids whose end this node will report, kept after a fence lapse)
    heartbeat  {node} (+ clock)                         liveness; answered with "heartbeat"
    renew      {node, leases: [lease id]}            these leases are still held: extend them
    pull       {node, credit}                         "I can take ``credit`` more requests"
    push       {node, requests, f, k, p}              discovered links (not yet deduplicated):
               requests: one msgpack array of wire requests, as bytes (spliced into "batch"
               frames as they are); f, k, p: their fingerprints end to end and their keys and
               partitions, in order (+ pr: their priorities, when any is not 0; + df: the
               positions of the dont_filter ones). Built by :func:`push_fields`, read by
               :func:`split_push`. A list of wire request maps as ``requests`` (no columns) is
               read too.
    ack        {node, leases: [lease id]}            these leased requests reached a final fate
               (+ outcomes: [[lease id, outcome map]], for the revisit schedule; docs/protocol.md)
    release    {node, leases: [lease id]}            give these back unfetched (revoke, shutdown)
    postpone   {node, leases: [[lease id, seconds]]} give these back, serve them again after that
                                                      long (robots.txt unreachable for now)
    handoff    {node, partitions, state}             politeness state of revoked partitions
    stats      {node, stats: {name: number}}         periodic node statistics
    bye        {node}                                 graceful leave
    status     {}                                     any peer (a monitor too): ask for "state"

Messages (dispatcher -> node)
    welcome    {node, partitions, assigned, heartbeat_interval, lease_timeout, renew_interval,
                fence, epoch} (+ clock: the register's, echoed; fenced: assigned partitions whose
                last owner died, hold every key)
    heartbeat  {epoch} (+ clock: the heartbeat's, echoed)
    batch      {leases: [[lease id, wire request], ...]}   never more than the credit asked for
    assign     {partitions: [int], state} (+ fenced)  you now own these (with handed-over state;
                                                      fenced: their last owner died, hold every key)
    revoke     {partitions: [int]}                    stop serving these; release or finish, then handoff
    finished   {}                                     frontier empty and no lease open: close
    error      {code, reason}                         the last message was refused (code: below)
    state      {state: {...}}                         answer to "status": nodes, frontier, leases...

Reason codes (``error.code``; ``reason`` is text for people and logs)
    unknown_node   the dispatcher does not know this node (it restarted, or declared the node
                   dead): stop serving, drop queued leases, register again (:data:`UNKNOWN_NODE`)
    bad_frame      the frame was refused; ``reason`` reads "bad frame (<kind>): <detail>", where
                   <kind> is a :data:`BAD_FRAME_KINDS` entry or the type of the message whose
                   fields were wrong (the dispatcher's "bad_frames" counters use the same kinds)

Semantics, as the dispatcher (crawlproj.dispatcher.service) implements them
    - welcome.partitions is P, the crawl's partition count; welcome.assigned lists the partitions
      the node owns at once (empty politeness state). Every later partition comes in an
      "assign", with the state its previous owner handed off (or {}). The state is opaque and
      passed through whole: when one handoff's partitions go to several nodes, each gets it all.
      welcome.heartbeat_interval and welcome.lease_timeout are the dispatcher's settings (seconds).
    - Leases: a node renews every lease it still holds (queued or in flight) every
      welcome.renew_interval seconds ("renew", batched); the dispatcher expires a lease only when
      its node is gone or it was not renewed for lease_timeout. A node drops a second copy of a
      lease id it already holds.
    - Fence (docs/protocol.md, "Fenced ownership"): a node starts a fetch only before clock + fence,
      clock being its own clock reading echoed in the last answer to its heartbeat (or register);
      the dispatcher declares a node dead only heartbeat_timeout > fence after it last heard
      from it, and assigns a dead node's partitions "fenced" once its last fetch has surely ended.
    - A node sends the push of a page's links before that page's ack: the dispatcher applies
      messages in arrival order within one transaction stream, so a crash never keeps an ack
      while losing the links it covered (at-least-once, nothing lost).
    - error unknown_node (after a dispatcher restart, or after the node was declared dead): the
      node stops serving its partitions, drops its queued leases and registers again. A push,
      ack or release of an unknown node is still applied.
    - A register under the name of a live node means that node restarted: its open leases go back
      to the frontier at once. A handoff of partitions that were not revoked means the node is
      leaving (bye follows).
    - Lease ids are frontier row ids, stable across dispatcher restarts.
    - A push is checked in its columns (what the dispatcher acts on: fingerprint, partition of
      the key, priority), in the framing of each request, and in full for its first request,
      which must match the columns; the content of every other request is checked by the node
      that leases it (an invalid one is acked as final there, with one error line).

A *wire request* is a map, built by :func:`wire_request` (or :func:`routed_request` from a URL)
and checked by :func:`check_wire_request`:

    u     str     canonical URL                                        always
    f     bytes   fingerprint, 20 bytes (:mod:`crawlproj.wire.urls`)    always
    k     str     politeness key                                       always
    p     int     partition of ``k``, 0..P-1                           always
    m     str     HTTP method                                          when not GET
    h     map     headers, {name: [value, ...]} (latin-1 text)         when any
    b     bytes   body                                                 when not empty
    cb    str     callback: name of a spider method                    when not ``parse``
    eb    str     errback: name of a spider method                     when set
    pr    int     priority (Scrapy's; higher first)                    when not 0
    d     int     depth                                                when not 0
    df    1       dont_filter: stored even if seen before (no dedup)   when set
    kw    map     cb_kwargs (msgpack-safe values only)                 when any
    meta  map     request.meta minus the node-local keys (crawlproj.meta.LOCAL), msgpack-safe
                  values only                                          when any

Nodes compute ``f``, ``k`` and ``p`` with :mod:`crawlproj.wire.urls`, so the dispatcher routes and
deduplicates without parsing URLs.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

import msgpack

from crawlproj.wire.urls import canonicalize, fingerprint_canonical, partition_of, politeness_key

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 8 * 1024 * 1024  # a batch of a few thousand requests fits easily

NODE_TYPES = {
    "register": ("node", "pid", "host", "capacity"),
    "heartbeat": ("node",),
    "renew": ("node", "leases"),
    "pull": ("node", "credit"),
    "push": ("node", "requests"),
    "ack": ("node", "leases"),
    "release": ("node", "leases"),
    "postpone": ("node", "leases"),
    "handoff": ("node", "partitions", "state"),
    "stats": ("node", "stats"),
    "bye": ("node",),
    "status": (),
}
DISPATCHER_TYPES = {
    "welcome": ("node", "partitions", "assigned", "heartbeat_interval", "lease_timeout",
                "renew_interval", "fence", "epoch"),
    "heartbeat": ("epoch",),
    "batch": ("leases",),
    "assign": ("partitions", "state"),
    "revoke": ("partitions",),
    "finished": (),
    "error": ("code", "reason"),
    "state": ("state",),
}
WIRE_REQUEST_FIELDS = ("u", "f", "k", "p")
FINGERPRINT_BYTES = 20  # SHA-1, crawlproj.wire.urls.fingerprint
MAX_PRIORITY = 2 ** 62  # |pr| beyond this does not fit SQLite's integer once negated

# -- reason codes ------------------------------------------------------------------------------------

UNKNOWN_NODE = "unknown_node"  #: error.code: register again
BAD_FRAME = "bad_frame"  #: error.code: the frame was refused
UNKNOWN_NODE_TEXT = "unknown node: register"  #: error.reason that goes with UNKNOWN_NODE

# Kinds of refused frames (ProtocolError.code, the dispatcher's "bad_frames" counter names)
OVERSIZED = "oversized"
UNDECODABLE = "undecodable"
NOT_A_MAP = "not_a_map"
VERSION = "version"
UNKNOWN_TYPE = "unknown_type"
MISSING_FIELD = "missing_field"
INVALID = "invalid"
BAD_FRAME_KINDS = (OVERSIZED, UNDECODABLE, NOT_A_MAP, VERSION, UNKNOWN_TYPE, MISSING_FIELD, INVALID)


class ProtocolError(ValueError):
    """A frame that does not decode to a valid message of this protocol version.

    ``code`` is one of :data:`BAD_FRAME_KINDS`.
    """

    def __init__(self, message: str, code: str = INVALID) -> None:
        super().__init__(message)
        self.code = code


# -- encoders ----------------------------------------------------------------------------------------


def encode(mtype: str, **fields: Any) -> bytes:
    fields["v"] = PROTOCOL_VERSION
    fields["t"] = mtype
    data = msgpack.packb(fields, use_bin_type=True)
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"{mtype} message of {len(data)} bytes exceeds {MAX_FRAME_BYTES}", OVERSIZED)
    return data


def encode_error(code: str, reason: str) -> bytes:
    """An "error" message; ``reason`` is cut to 500 characters."""
    return encode("error", code=code, reason=reason[:500])


_BATCH_HEAD = (b"\x83" + msgpack.packb("v") + msgpack.packb(PROTOCOL_VERSION) + msgpack.packb("t")
               + msgpack.packb("batch") + msgpack.packb("leases"))
_PAIR = b"\x92"  # msgpack fixarray of 2: [lease id, wire request]
#: Bytes a batch frame spends on its own header and on each pair's framing, at most.
BATCH_FRAME_SLACK = 64


def encode_batch(items: list[tuple[int, bytes]]) -> bytes:
    """A "batch" frame from (lease id, msgpack wire request) pairs, without re-encoding them.

    Decodes to what ``encode("batch", leases=[[id, request], ...])`` produces (keys in another
    order). The dispatcher stores requests as msgpack, so they are spliced in as they are: this
    is its serving hot path (bench/bench_dispatcher.py). The caller keeps the frame under
    MAX_FRAME_BYTES (each pair costs its blob plus at most BATCH_FRAME_SLACK bytes).
    """
    packb = msgpack.packb
    parts = [_BATCH_HEAD, msgpack.Packer().pack_array_header(len(items))]
    for rid, blob in items:
        parts.append(_PAIR)
        parts.append(packb(rid))
        parts.append(blob)
    return b"".join(parts)


def push_fields(requests: list[dict[str, Any]]) -> dict[str, Any]:
    """The fields of a "push" of these (valid) wire requests: the requests packed once, and the
    columns the dispatcher routes and deduplicates by without decoding them."""
    fields: dict[str, Any] = {
        "requests": msgpack.packb(requests, use_bin_type=True),
        "f": b"".join([r["f"] for r in requests]),
        "k": [r["k"] for r in requests],
        "p": [r["p"] for r in requests],
    }
    prs = [r.get("pr", 0) for r in requests]
    if any(prs):
        fields["pr"] = prs
    forced = [i for i, r in enumerate(requests) if r.get("df")]
    if forced:
        fields["df"] = forced
    return fields


class Push(NamedTuple):
    """A push, split (:func:`split_push`): request i is ``blobs[i]`` (msgpack), its fingerprint
    ``fps[i]``, key ``keys[i]``, partition ``parts[i]``; ``prs``: priorities (None: all 0);
    ``forced``: positions of the dont_filter requests (None: none)."""
    blobs: list[bytes]
    fps: list[bytes]
    keys: list[str]
    parts: list[int]
    prs: list[int] | None
    forced: list[int] | None


def _all_of(values: Any, kind: type, n: int) -> bool:
    return type(values) is list and len(values) == n and (not values or set(map(type, values)) == {kind})


def split_push(msg: dict[str, Any], partitions: int) -> Push:
    """The columns of a columnar push (:func:`push_fields`) and each request's bytes, checked as
    the module docstring says (the partitions of the keys excepted: that is the caller's cache);
    raises ProtocolError naming the fault."""
    blob = msg["requests"]
    if type(blob) is not bytes:
        raise ProtocolError("push requests must be a msgpack array (bytes) or a list of maps")
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(blob), 1))
    unpacker.feed(blob)
    try:
        n = unpacker.read_array_header()
        blobs = cut_objects(unpacker, blob, n)
    except Exception as exc:  # OutOfData, FormatError, StackError, ValueError...
        raise ProtocolError(f"push requests are not a msgpack array: {type(exc).__name__}") from exc
    if unpacker.tell() != len(blob):
        raise ProtocolError(f"push requests: {len(blob) - unpacker.tell()} bytes after the array")
    fps, keys, parts = msg.get("f"), msg.get("k"), msg.get("p")
    if type(fps) is not bytes or len(fps) != n * FINGERPRINT_BYTES:
        raise ProtocolError(f"push f must be the {n} fingerprints end to end ({n * FINGERPRINT_BYTES} bytes)")
    if not _all_of(keys, str, n):
        raise ProtocolError(f"push k must be a list of {n} key strings")
    if not _all_of(parts, int, n) or (n and not 0 <= min(parts) <= max(parts) < partitions):
        raise ProtocolError(f"push p must be a list of {n} partitions in 0..{partitions - 1}")
    prs = msg.get("pr")
    if prs is not None and (not _all_of(prs, int, n) or (n and not -MAX_PRIORITY < min(prs) <= max(prs) < MAX_PRIORITY)):
        raise ProtocolError(f"push pr must be a list of {n} integer priorities")
    forced = msg.get("df")
    if forced is not None and (not _all_of(forced, int, len(forced)) or (forced and not 0 <= min(forced) <= max(forced) < n)):
        raise ProtocolError(f"push df must be a list of positions in 0..{n - 1}")
    split = Push(blobs, list(_fingerprints(n).unpack(fps)), keys, parts, prs, forced)
    if n:
        _check_first(split, partitions)
    return split


@functools.lru_cache(maxsize=64)
def _fingerprints(n: int) -> struct.Struct:
    """Cuts ``n`` fingerprints given end to end (6x faster than slicing them one by one)."""
    return struct.Struct(f"{FINGERPRINT_BYTES}s" * n)


def cut_objects(unpacker: msgpack.Unpacker, blob: bytes, n: int) -> list[bytes]:
    """The next ``n`` msgpack objects of ``blob`` (fed to ``unpacker``), each its own bytes,
    nothing decoded; raises what ``Unpacker.skip`` raises on bad or missing data."""
    skip, tell = unpacker.skip, unpacker.tell
    out = []
    start = tell()
    for _ in range(n):
        skip()
        end = tell()
        out.append(blob[start:end])
        start = end
    return out


def _check_first(push: Push, partitions: int) -> None:
    """The first request of a push in full, against the columns (a node that builds its columns
    from other requests than it packs is refused at once)."""
    try:
        first = msgpack.unpackb(push.blobs[0], raw=False, strict_map_key=True)
    except Exception as exc:
        raise ProtocolError(f"push request 0 does not decode: {type(exc).__name__}") from exc
    check_wire_request(first, partitions)
    if (first["f"], first["k"], first["p"], first.get("pr", 0), bool(first.get("df"))) != (
            push.fps[0], push.keys[0], push.parts[0], push.prs[0] if push.prs else 0,
            bool(push.forced) and push.forced[0] == 0):
        raise ProtocolError("push request 0 does not match its f, k, p, pr or df columns")


def wire_request(url: str, fp: bytes, key: str, partition: int, *, method: str = "GET",
                 headers: dict[str, list[str]] | None = None, body: bytes = b"",
                 callback: str | None = None, errback: str | None = None, priority: int = 0,
                 depth: int = 0, dont_filter: bool = False, cb_kwargs: dict[str, Any] | None = None,
                 meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The wire request map (see the table above): optional fields only when not their default.

    The values must already be msgpack-safe; callers that take them from a Scrapy Request
    (crawlproj.wire.request) check that first.
    """
    wire: dict[str, Any] = {"u": url, "f": fp, "k": key, "p": partition}
    if callback is not None:
        wire["cb"] = callback
    if errback is not None:
        wire["eb"] = errback
    if method != "GET":
        wire["m"] = method
    if body:
        wire["b"] = body
    if headers:
        wire["h"] = headers
    if priority:
        wire["pr"] = priority
    if depth:
        wire["d"] = depth
    if dont_filter:
        wire["df"] = 1
    if cb_kwargs:
        wire["kw"] = cb_kwargs
    if meta:
        wire["meta"] = meta
    return wire


def routed_request(url: str, partitions: int, key_by: str = "domain", **options: Any) -> dict[str, Any]:
    """The wire request of ``url`` routed as a node routes it (canonical URL, fingerprint, key,
    partition), with :func:`wire_request`'s ``options``; raises BadURL."""
    canonical = canonicalize(url)
    key = politeness_key(canonical, key_by)
    return wire_request(canonical, fingerprint_canonical(canonical), key,
                        partition_of(key, partitions), **options)


# -- decoders and checks -----------------------------------------------------------------------------


def decode(frame: bytes, allowed: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """Decode and validate one frame against ``allowed`` (NODE_TYPES or DISPATCHER_TYPES)."""
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}", OVERSIZED)
    try:
        # unpackb sizes its limits from len(frame), checked above; it has no max_buffer_size.
        msg = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise ProtocolError(f"undecodable frame: {type(exc).__name__}", UNDECODABLE) from exc
    if not isinstance(msg, dict):
        raise ProtocolError(f"frame is a {type(msg).__name__}, expected a map", NOT_A_MAP)
    version = msg.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r}, expected {PROTOCOL_VERSION}", VERSION)
    mtype = msg.get("t")
    required = allowed.get(mtype) if isinstance(mtype, str) else None
    if required is None:
        raise ProtocolError(f"unknown message type {mtype!r}", UNKNOWN_TYPE)
    missing = [name for name in required if name not in msg]
    if missing:
        raise ProtocolError(f"{mtype} message without {', '.join(missing)}", MISSING_FIELD)
    return msg


def decode_from_node(frame: bytes) -> dict[str, Any]:
    return decode(frame, NODE_TYPES)


def decode_from_dispatcher(frame: bytes) -> dict[str, Any]:
    """Decode and type-check a dispatcher frame: a node acts on what passes without more checks."""
    msg = decode(frame, DISPATCHER_TYPES)
    fault = _DISPATCHER_CHECKS[msg["t"]](msg)
    if fault:
        raise ProtocolError(f"{msg['t']} message with {fault}")
    return msg


MAX_PARTITIONS = 2 ** 31 - 1


def _is_int(value: Any, low: int = 0, high: int = 2 ** 63 - 1) -> bool:
    return type(value) is int and low <= value <= high


def _is_seconds(value: Any) -> bool:
    return type(value) in (int, float) and 0 < value < float("inf")


def _partition_list(value: Any, partitions: int = MAX_PARTITIONS) -> bool:
    return isinstance(value, list) and all(_is_int(p, 0, partitions - 1) for p in value)


def _check_welcome(m: dict[str, Any]) -> str:
    if not isinstance(m["node"], str):
        return "a node name that is not a string"
    if not _is_int(m["partitions"], 1, MAX_PARTITIONS):
        return f"partitions {m['partitions']!r} outside 1..{MAX_PARTITIONS}"
    if not _partition_list(m["assigned"], m["partitions"]):
        return "assigned partitions that are not a list of partition numbers"
    if not all(_is_seconds(m[name]) for name in ("heartbeat_interval", "lease_timeout",
                                                  "renew_interval", "fence")):
        return "a heartbeat interval, lease time-out, renew interval or fence that is not a positive number"
    if "clock" in m and not _is_clock(m["clock"]):
        return "a clock echo that is not a number"
    if not _partition_list(m.get("fenced", []), m["partitions"]):
        return "fenced partitions that are not a list of partition numbers"
    return "" if _is_int(m["epoch"]) else "an epoch that is not a count"


def _is_clock(value: Any) -> bool:
    return type(value) in (int, float) and value == value and abs(value) < float("inf")


def _check_heartbeat(m: dict[str, Any]) -> str:
    if not _is_int(m["epoch"]):
        return "an epoch that is not a count"
    return "a clock echo that is not a number" if "clock" in m and not _is_clock(m["clock"]) else ""


def _check_batch(m: dict[str, Any]) -> str:
    leases = m["leases"]
    if not isinstance(leases, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and _is_int(pair[0]) for pair in leases):
        # each request is checked on its own (check_wire_request): one bad request is acked as
        # final by the node, the rest of the batch is served
        return "leases that are not a list of [lease id, request] pairs"
    return ""


_DISPATCHER_CHECKS: dict[str, Callable[[dict[str, Any]], str]] = {
    "welcome": _check_welcome,
    "heartbeat": _check_heartbeat,
    "batch": _check_batch,
    "assign": lambda m: "" if _partition_list(m["partitions"]) and isinstance(m["state"], dict)
    and m.get("fenced", False) in (True, False)
    else "partitions that are not a list of partition numbers, a state that is not a map, or a "
         "fenced flag that is not a boolean",
    "revoke": lambda m: "" if _partition_list(m["partitions"]) else "partitions that are not a list of partition numbers",
    "finished": lambda m: "",
    "error": lambda m: "" if isinstance(m["code"], str) and isinstance(m["reason"], str)
    else "a code or reason that is not a string",
    "state": lambda m: "" if isinstance(m["state"], dict) else "a state that is not a map",
}


def check_wire_request(req: Any, partitions: int) -> dict[str, Any]:
    """Validate one wire request; raises ProtocolError naming what is wrong."""
    if not isinstance(req, dict):
        raise ProtocolError(f"wire request is a {type(req).__name__}, expected a map")
    for name in WIRE_REQUEST_FIELDS:
        if name not in req:
            raise ProtocolError(f"wire request without {name!r}")
    if not isinstance(req["u"], str) or not isinstance(req["k"], str):
        raise ProtocolError("wire request url and key must be strings")
    fp = req["f"]
    if not isinstance(fp, bytes) or len(fp) != FINGERPRINT_BYTES:
        raise ProtocolError("wire request fingerprint must be 20 bytes")
    part = req["p"]
    if not isinstance(part, int) or not 0 <= part < partitions:
        raise ProtocolError(f"wire request partition {part!r} outside 0..{partitions - 1}")
    return req
