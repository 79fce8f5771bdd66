"""Hostile protocol frames for the fuzz tests and ``bench/bench_fuzz.py``; seeded, reproducible.

:class:`FrameFuzzer` yields frames of five kinds, in turn:

- ``mutated``: a valid message of one of the protocol's types, with bytes flipped, inserted,
  deleted, truncated, duplicated or spliced from another message;
- ``confused``: a valid message with one field replaced by a value of another type (numbers out
  of range, NaN, huge strings, nested maps, ext types, binary where text is expected...);
- ``random``: random bytes of random length;
- ``deep``: arrays or maps nested thousands of levels deep, inside a message or bare;
- ``huge``: a valid message whose last field declares a string, binary, array or map of up to
  2^32-1 elements that the frame does not contain.

Valid templates come from :func:`node_messages` (what nodes send the dispatcher) or
:func:`dispatcher_messages` (what the dispatcher sends nodes). :func:`fuzz_dispatcher` sends a
stream to a dispatcher and reads its answers as they come.
"""

from __future__ import annotations

import math
import random
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq

from crawlproj.wire.protocol import (
    BAD_FRAME,
    PROTOCOL_VERSION,
    ProtocolError,
    decode_from_dispatcher,
    decode_from_node,
    encode,
    routed_request,
)

KINDS = ("mutated", "confused", "random", "deep", "huge")
MAX_RANDOM_BYTES = 4096
DEEP_LEVELS = (100, 1000, 10_000, 100_000)


def wire_request(url: str, partitions: int, **options: Any) -> dict[str, Any]:
    """A valid wire request of ``url`` (keyed by domain); ``options`` as for routed_request."""
    return routed_request(url, partitions, "domain", **options)


def node_messages(node: str, partitions: int, host: str = "fuzz.test") -> list[dict[str, Any]]:
    """One valid message of every type a node sends (as field maps with ``t``)."""
    reqs = [wire_request(f"http://{host}/page/{i}", partitions, priority=i % 3, depth=1) for i in range(3)]
    return [
        # no fetch_timeout, no postpone: a mutated one could park partitions or rows past the
        # test's end (a node is trusted with those, as with its acks)
        {"t": "register", "node": node, "pid": 4242, "host": "fuzz-host", "capacity": 16,
         "clock": 12.5},
        {"t": "heartbeat", "node": node, "clock": 13.0},
        {"t": "renew", "node": node, "leases": [1, 2]},
        {"t": "pull", "node": node, "credit": 8},
        {"t": "push", "node": node, "requests": reqs},
        {"t": "ack", "node": node, "leases": [1, 2, 3]},
        {"t": "release", "node": node, "leases": [4, 5]},
        {"t": "handoff", "node": node, "partitions": [0, 1], "state": {"v": 1, "keys": []}},
        {"t": "stats", "node": node, "stats": {"response_received_count": 3, "queued": 1}},
        {"t": "bye", "node": node},
        {"t": "status"},
    ]


def dispatcher_messages(node: str, partitions: int, host: str = "fuzz.test") -> list[dict[str, Any]]:
    """One valid message of every type the dispatcher sends."""
    reqs = [wire_request(f"http://{host}/leased/{i}", partitions) for i in range(3)]
    return [
        {"t": "welcome", "node": node, "partitions": partitions, "assigned": list(range(partitions)),
         "heartbeat_interval": 1.0, "lease_timeout": 600.0, "renew_interval": 150.0,
         "fence": 6.0, "epoch": 7},
        {"t": "heartbeat", "epoch": 7, "clock": 13.0},
        {"t": "batch", "leases": [[1000 + i, r] for i, r in enumerate(reqs)]},
        {"t": "assign", "partitions": [0], "state": {}},
        {"t": "revoke", "partitions": [1]},
        {"t": "finished"},
        {"t": "error", "code": BAD_FRAME, "reason": "bad frame (fuzz): nothing"},
        {"t": "state", "state": {"frontier": 0}},
    ]


def _pack(msg: dict[str, Any]) -> bytes:
    fields = dict(msg)
    return encode(fields.pop("t"), **fields)


class FrameFuzzer:
    """An endless, seeded stream of (kind, frame) built on ``templates``."""

    def __init__(self, templates: list[dict[str, Any]], seed: int = 0):
        self.rng = random.Random(seed)
        self.templates = templates
        self.valid = [_pack(m) for m in templates]

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        makers: dict[str, Callable[[], bytes]] = {
            "mutated": self.mutated, "confused": self.confused, "random": self.random_bytes,
            "deep": self.deep, "huge": self.huge,
        }
        while True:
            for kind in KINDS:
                yield kind, makers[kind]()

    # -- kinds ---------------------------------------------------------------------------------

    def mutated(self) -> bytes:
        rng = self.rng
        data = bytearray(rng.choice(self.valid))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(6)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and data:  # flip bits of a byte
                data[pos % len(data)] ^= 1 << rng.randrange(8)
            elif op == 1:  # an interesting byte (msgpack type markers)
                data[pos:pos] = bytes([rng.choice((0x00, 0x7F, 0x80, 0x90, 0xC0, 0xC1, 0xC4, 0xD9, 0xDC,
                                                   0xDD, 0xDE, 0xDF, 0xFF, rng.randrange(256)))])
            elif op == 2:  # delete a run
                del data[pos:pos + rng.randint(1, 8)]
            elif op == 3:  # truncate
                del data[pos:]
            elif op == 4 and data:  # duplicate a run
                start = rng.randrange(len(data))
                data[pos:pos] = data[start:start + rng.randint(1, 32)]
            else:  # splice another message's tail
                other = rng.choice(self.valid)
                data[pos:] = other[rng.randrange(len(other)):]
        return bytes(data)

    def hostile_value(self, depth: int = 0) -> Any:
        rng = self.rng
        choices: list[Callable[[], Any]] = [
            lambda: None, lambda: True, lambda: -1, lambda: 2 ** 64 - 1, lambda: -(2 ** 63),
            lambda: math.nan, lambda: math.inf, lambda: 1e308, lambda: "",
            lambda: "x" * rng.choice((1, 300, 70_000)), lambda: "\x00\ufffd\U0010ffff",
            lambda: b"\x00" * rng.choice((0, 20, 1000)), lambda: msgpack.ExtType(rng.randrange(128), b"ext"),
            lambda: [rng.randrange(-5, 2 ** 40) for _ in range(rng.randrange(50))],
            lambda: {"k": "v", "u": 1}, lambda: [[[]]], lambda: "fuzz",
        ]
        if depth < 2:
            choices.append(lambda: {str(i): self.hostile_value(depth + 1) for i in range(rng.randrange(4))})
            choices.append(lambda: [self.hostile_value(depth + 1) for _ in range(rng.randrange(4))])
        return rng.choice(choices)()

    def confused(self) -> bytes:
        rng = self.rng
        msg = dict(rng.choice(self.templates))
        for _ in range(rng.randint(1, 2)):
            names = [n for n in msg if n != "t"]
            if names and rng.random() < 0.85:
                name = rng.choice(names)
                if name in ("requests", "leases") and isinstance(msg[name], list) and msg[name] and rng.random() < 0.5:
                    # keep the list, poison one element (or one field of one element)
                    items = [dict(x) if isinstance(x, dict) else list(x) if isinstance(x, list) else x
                             for x in msg[name]]
                    i = rng.randrange(len(items))
                    target = items[i]
                    if isinstance(target, dict):
                        target[rng.choice(list(target) + ["cb", "m", "h", "meta", "kw", "d"])] = self.hostile_value()
                    elif isinstance(target, list) and len(target) == 2 and isinstance(target[1], dict):
                        wire = dict(target[1])
                        wire[rng.choice(list(wire) + ["cb", "m", "h", "meta", "kw", "d", "pr"])] = self.hostile_value()
                        target[1] = wire
                    else:
                        items[i] = self.hostile_value()
                    msg[name] = items
                else:
                    msg[name] = self.hostile_value()
            elif names:
                del msg[rng.choice(names)]
        try:
            fields = {k: v for k, v in msg.items() if k != "t"}
            fields["v"], fields["t"] = PROTOCOL_VERSION, msg["t"]
            if rng.random() < 0.05:
                fields["v"] = self.hostile_value()
            return msgpack.packb(fields, use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            return self.mutated()

    def random_bytes(self) -> bytes:
        return self.rng.randbytes(self.rng.randrange(MAX_RANDOM_BYTES))

    def deep(self) -> bytes:
        rng = self.rng
        levels = rng.choice(DEEP_LEVELS)
        opener, closer = (b"\x91", b"\xc0") if rng.random() < 0.5 else (b"\x81\xa1k", b"\xc0")
        nested = opener * levels + closer
        if rng.random() < 0.5:
            return nested
        # inside a valid message, in place of its last field's value
        msg = dict(rng.choice(self.templates))
        fields = {"v": PROTOCOL_VERSION, **{k: v for k, v in msg.items()}}
        head = msgpack.packb(fields, use_bin_type=True)
        return _with_extra_field(head, len(fields), b"\xa4deep" + nested)

    def huge(self) -> bytes:
        rng = self.rng
        n = rng.choice((2 ** 32 - 1, 2 ** 31, 2 ** 20, 70_000))
        header = rng.choice((
            b"\xdb" + struct.pack(">I", n),  # str 32
            b"\xc6" + struct.pack(">I", n),  # bin 32
            b"\xdd" + struct.pack(">I", n),  # array 32
            b"\xdf" + struct.pack(">I", n),  # map 32
            b"\xc9" + struct.pack(">I", n) + b"\x01",  # ext 32
        ))
        msg = dict(rng.choice(self.templates))
        fields = {"v": PROTOCOL_VERSION, **msg}
        head = msgpack.packb(fields, use_bin_type=True)
        return _with_extra_field(head, len(fields), b"\xa4huge" + header + rng.randbytes(rng.randrange(64)))


def _with_extra_field(packed_map: bytes, size: int, extra_pair: bytes) -> bytes:
    """``packed_map`` (a fixmap or map16 of ``size`` pairs) with one more key/value pair appended."""
    if size < 15:
        return bytes([0x80 | (size + 1)]) + packed_map[1:] + extra_pair
    return b"\xde" + struct.pack(">H", size + 1) + packed_map[3:] + extra_pair


# -- driving a dispatcher --------------------------------------------------------------------------


@dataclass
class FuzzRun:
    """What was sent, and what the receiver's own decoder makes of it."""

    sent: int = 0
    refused: int = 0  # frames the protocol decoder refuses: the receiver must count them as bad
    kinds: Counter[str] = field(default_factory=Counter)
    decoded: Counter[str] = field(default_factory=Counter)  # message types of the frames that decode


def read_answers(sock: zmq.Socket[Any], on_answer: Callable[[dict[str, Any]], None], wait_ms: int = 0) -> None:
    """Hand every dispatcher message waiting on ``sock`` to ``on_answer`` (they always decode)."""
    sock.poll(wait_ms)
    while True:
        try:
            frame = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        on_answer(decode_from_dispatcher(frame))


def fuzz_dispatcher(sock: zmq.Socket[Any], frames: Iterator[tuple[str, bytes]], count: int,
                    on_answer: Callable[[dict[str, Any]], None], read_every: int = 500) -> FuzzRun:
    """Send ``count`` frames on a DEALER connected to a dispatcher, reading its answers meanwhile."""
    run = FuzzRun()
    for kind, frame in frames:
        run.kinds[kind] += 1
        try:
            run.decoded[decode_from_node(frame)["t"]] += 1
        except ProtocolError:
            run.refused += 1
        sock.send(frame)
        run.sent += 1
        if run.sent % read_every == 0:
            read_answers(sock, on_answer)
        if run.sent >= count:
            break
    return run
