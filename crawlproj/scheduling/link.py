"""The node's connection to the dispatcher: one DEALER socket driven by the asyncio reactor's loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from crawlproj.wire.protocol import ProtocolError, decode_from_dispatcher, encode
from crawlproj.security.curve import ClientKeys

logger = logging.getLogger(__name__)

SEND_HWM = 100_000  # frames queued while the dispatcher is unreachable, before send() waits
CLOSE_LINGER_MS = 3000  # time given to queued frames (acks, handoff, bye) at close


class DispatcherLink:
    """Sends protocol messages and hands every decoded reply to ``on_message``."""

    def __init__(self, endpoint: str, node_name: str, on_message: Callable[[dict[str, Any]], None],
                 stats: Any, curve: ClientKeys | None = None):
        self.endpoint = endpoint
        self.node_name = node_name
        self.on_message = on_message
        self.stats = stats
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, node_name.encode("utf-8"))
        self.sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.sock.setsockopt(zmq.RCVHWM, SEND_HWM)
        self.sock.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        if curve is not None:
            curve.apply(self.sock)  # CURVE: authenticated and encrypted, or no connection at all
        self.sock.connect(endpoint)
        self._reader: asyncio.Task[None] | None = None
        self.last_heard = 0.0

    def start(self) -> None:
        self._reader = asyncio.get_event_loop().create_task(self._read())

    def send(self, mtype: str, **fields: Any) -> None:
        frame = encode(mtype, **fields)
        self.stats.inc_value(f"dispatcher/sent/{mtype}")
        fut = self.sock.send(frame)
        fut.add_done_callback(self._sent)

    def _sent(self, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            logger.error("Sending to the dispatcher failed: %r", fut.exception())

    async def _read(self) -> None:
        loop = asyncio.get_event_loop()
        while True:
            try:
                frame = await self.sock.recv()
            except (asyncio.CancelledError, zmq.ContextTerminated):
                return
            except zmq.ZMQError as exc:
                if exc.errno == zmq.ENOTSOCK:
                    return
                raise
            self.last_heard = loop.time()
            try:
                msg = decode_from_dispatcher(frame)
            except ProtocolError as exc:
                self.stats.inc_value("dispatcher/bad_frames")
                logger.error("Dropped a bad frame from the dispatcher: %s", exc)
                continue
            try:
                self.on_message(msg)
            except Exception:
                logger.exception("Error handling %r from the dispatcher", msg.get("t"))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self.sock.close()  # linger lets queued frames go out
        self.ctx.term()
