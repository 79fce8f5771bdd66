"""The dispatcher <-> node wire protocol: message types and their msgpack encoding.

One module, imported by the dispatcher and by the nodes (DESIGN.md: "one fact, one place").
Transport: the dispatcher binds a ZeroMQ ROUTER, each node connects a DEALER whose routing id is
its node name. Every message is one frame (after the ROUTER's identity frame): a msgpack map
``{"v": PROTOCOL_VERSION, "t": <type>, ...}``. Nothing is pickled. A frame that is too large, not
msgpack, not a map, of another version, of an unknown type, or missing a field raises
:class:`ProtocolError`; receivers count it and drop it, they never crash.

Messages (node -> dispatcher)
    register   {node, pid, host, capacity}           join, or rejoin after a restart
    heartbeat  {node}                                 liveness; answered with "heartbeat"
    pull       {node, credit}                         "I can take ``credit`` more requests"
    push       {node, requests: [wire request]}      discovered links (not yet deduplicated)
    ack        {node, leases: [lease id]}            these leased requests reached a final fate
    release    {node, leases: [lease id]}            give these back unfetched (revoke, shutdown)
    handoff    {node, partitions, state}             politeness state of revoked partitions
    stats      {node, stats: {name: number}}         periodic node statistics
    bye        {node}                                 graceful leave
    status     {}                                     any peer (a monitor too): ask for "state"

Messages (dispatcher -> node)
    welcome    {node, partitions, assigned, heartbeat_interval, lease_timeout, epoch}
    heartbeat  {epoch}
    batch      {leases: [[lease id, wire request], ...]}   never more than the credit asked for
    assign     {partitions: [int], state}             you now own these (with handed-over state)
    revoke     {partitions: [int]}                    stop serving these; release or finish, then handoff
    finished   {}                                     frontier empty and no lease open: close
    error      {reason}                               the last message was refused
    state      {state: {...}}                         answer to "status": nodes, frontier, leases...

Semantics, as the dispatcher (crawlproj.dispatcher.server) implements them
    - welcome.partitions is P, the crawl's partition count; welcome.assigned lists the partitions
      the node owns at once (empty politeness state). Every later partition comes in an
      "assign", with the state its previous owner handed off (or {}). The state is opaque and
      passed through whole: when one handoff's partitions go to several nodes, each gets it all.
    - A node sends the push of a page's links before that page's ack: the dispatcher applies
      messages in arrival order within one transaction stream, so a crash never keeps an ack
      while losing the links it covered (at-least-once, nothing lost).
    - error "unknown node: register" (after a dispatcher restart, or after the node was declared
      dead): the node stops serving its partitions, drops its queued leases and registers again.
      A push, ack or release of an unknown node is still applied.
    - A register under the name of a live node means that node restarted: its open leases go back
      to the frontier at once. A handoff of partitions that were not revoked means the node is
      leaving (bye follows).
    - Lease ids are frontier row ids, stable across dispatcher restarts. Optional ``df`` (Scrapy's
      dont_filter) in a wire request skips deduplication.

A *wire request* is a map: ``u`` URL (canonical), ``f`` fingerprint (20 bytes), ``k`` politeness
key, ``p`` partition, and optionally ``m`` method, ``h`` headers, ``b`` body, ``cb``/``eb``
callback/errback names, ``pr`` priority, ``d`` depth, ``meta`` (msgpack-safe values only).
Nodes compute ``f``, ``k`` and ``p`` with :mod:`crawlproj.wire.urls`, so the dispatcher routes and
deduplicates without parsing URLs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 8 * 1024 * 1024  # a batch of a few thousand requests fits easily

NODE_TYPES = {
    "register": ("node", "pid", "host", "capacity"),
    "heartbeat": ("node",),
    "pull": ("node", "credit"),
    "push": ("node", "requests"),
    "ack": ("node", "leases"),
    "release": ("node", "leases"),
    "handoff": ("node", "partitions", "state"),
    "stats": ("node", "stats"),
    "bye": ("node",),
    "status": (),
}
DISPATCHER_TYPES = {
    "welcome": ("node", "partitions", "assigned", "heartbeat_interval", "lease_timeout", "epoch"),
    "heartbeat": ("epoch",),
    "batch": ("leases",),
    "assign": ("partitions", "state"),
    "revoke": ("partitions",),
    "finished": (),
    "error": ("reason",),
    "state": ("state",),
}
WIRE_REQUEST_FIELDS = ("u", "f", "k", "p")


class ProtocolError(ValueError):
    """A frame that does not decode to a valid message of this protocol version."""


def encode(mtype: str, **fields: Any) -> bytes:
    fields["v"] = PROTOCOL_VERSION
    fields["t"] = mtype
    data = msgpack.packb(fields, use_bin_type=True)
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"{mtype} message of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    return data


def decode(frame: bytes, allowed: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """Decode and validate one frame against ``allowed`` (NODE_TYPES or DISPATCHER_TYPES)."""
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        # unpackb sizes its limits from len(frame), checked above; it has no max_buffer_size.
        msg = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise ProtocolError(f"undecodable frame: {type(exc).__name__}") from exc
    if not isinstance(msg, dict):
        raise ProtocolError(f"frame is a {type(msg).__name__}, expected a map")
    version = msg.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r}, expected {PROTOCOL_VERSION}")
    mtype = msg.get("t")
    required = allowed.get(mtype) if isinstance(mtype, str) else None
    if required is None:
        raise ProtocolError(f"unknown message type {mtype!r}")
    missing = [name for name in required if name not in msg]
    if missing:
        raise ProtocolError(f"{mtype} message without {', '.join(missing)}")
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
    if not _is_seconds(m["heartbeat_interval"]) or not _is_seconds(m["lease_timeout"]):
        return "a heartbeat interval or lease time-out that is not a positive number"
    return "" if _is_int(m["epoch"]) else "an epoch that is not a count"


def _check_batch(m: dict[str, Any]) -> str:
    leases = m["leases"]
    if not isinstance(leases, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and _is_int(pair[0]) and isinstance(pair[1], dict)
            for pair in leases):
        return "leases that are not a list of [lease id, map] pairs"
    return ""


_DISPATCHER_CHECKS: dict[str, Callable[[dict[str, Any]], str]] = {
    "welcome": _check_welcome,
    "heartbeat": lambda m: "" if _is_int(m["epoch"]) else "an epoch that is not a count",
    "batch": _check_batch,
    "assign": lambda m: "" if _partition_list(m["partitions"]) and isinstance(m["state"], dict)
    else "partitions that are not a list of partition numbers, or a state that is not a map",
    "revoke": lambda m: "" if _partition_list(m["partitions"]) else "partitions that are not a list of partition numbers",
    "finished": lambda m: "",
    "error": lambda m: "" if isinstance(m["reason"], str) else "a reason that is not a string",
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
    if not isinstance(fp, bytes) or len(fp) != 20:
        raise ProtocolError("wire request fingerprint must be 20 bytes")
    part = req["p"]
    if not isinstance(part, int) or not 0 <= part < partitions:
        raise ProtocolError(f"wire request partition {part!r} outside 0..{partitions - 1}")
    return req
