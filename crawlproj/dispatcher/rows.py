"""How the frontier stores requests: rows of up to ROW_MAX requests, and the log of partial acks.

A row holds requests of one partition and one priority with consecutive ids ``id, id + 1, ...,
id + n - 1`` (``id`` is the row's key; rows are ROW_MAX ids apart, ids being reserved by block):
their msgpack wire requests end to end, each exactly the bytes a "batch" frame splices in. A
store of schema 1 (one request per row) reads as rows with ``n = 1``.

A row is deleted when its last request is acked. Acks of a row not yet done are appended to
``acked``, one row per ack message (msgpack ``[row id, offset, row id, offset, ...]``), and held
in memory as one bit mask per row (:class:`RowState`); the log is rewritten from memory when it
grew well past what is still live.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

from crawlproj.wire.protocol import cut_objects

ROW_MAX = 64  # requests in one row at most (a row is read whole when a partition refills)


class RowState:
    """A row some of whose requests are in memory or acked, or a block not written yet: its
    partition, size and acks. Held until the row is done, so bounded by what was in memory."""

    __slots__ = ("p", "n", "left", "acked", "open", "loaded")

    def __init__(self, p: int, n: int) -> None:
        self.p = p
        self.n = n
        self.left = n  # requests not acked
        self.acked = 0  # bit i set: request id + i is acked
        self.open = False  # a block still filling: not written, n and left set when it is
        self.loaded = False  # some of its requests went into memory (kept until it is done)


class Packed(NamedTuple):
    """Requests as the frontier stores them: request i is ``blobs[i]`` (one msgpack wire
    request), of fingerprint ``fps[i]`` and partition ``parts[i]``; ``nprs``: negated
    priorities (None: all 0)."""
    fps: list[bytes]
    blobs: list[bytes]
    parts: list[int]
    nprs: list[int] | None

    def take(self, keep: list[int]) -> Packed:
        """The requests at positions ``keep``, in that order."""
        nprs = self.nprs
        return Packed([self.fps[i] for i in keep], [self.blobs[i] for i in keep],
                      [self.parts[i] for i in keep], None if nprs is None else [nprs[i] for i in keep])


def packed(requests: list[dict[str, Any]]) -> Packed:
    """Wire request maps (checked already), packed one by one."""
    pack = msgpack.Packer(use_bin_type=True).pack
    nprs = [-r.get("pr", 0) for r in requests]
    return Packed([r["f"] for r in requests], [pack(r) for r in requests],
                  [r["p"] for r in requests], nprs if any(nprs) else None)


def split(blob: bytes, n: int) -> list[bytes]:
    """A row's ``n`` requests, each its own msgpack bytes (nothing decoded)."""
    if n == 1:
        return [blob]
    unpacker = msgpack.Unpacker()
    unpacker.feed(blob)
    return cut_objects(unpacker, blob, n)


def encode_acks(pairs: list[int]) -> bytes:
    """An ``acked`` log row: ``[row id, offset, ...]``."""
    return msgpack.packb(pairs)


def decode_acks(blob: bytes) -> list[tuple[int, int]]:
    flat = msgpack.unpackb(blob)
    return list(zip(flat[::2], flat[1::2]))
