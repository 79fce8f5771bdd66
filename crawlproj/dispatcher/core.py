"""What every part of the dispatcher service shares: its state, a node's record, and replies.

:class:`Core` holds the state (nodes, partition table, open leases, counters) and the socket
helpers (send, reply, refuse a bad frame, look up the node behind a frame). The parts of the
service are mixins over it, one module each: :mod:`.membership`, :mod:`.assignment`,
:mod:`.leases`, :mod:`.push`, :mod:`.status`; :mod:`.service` puts them together and runs the
loop. Everything runs on the loop's one thread.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import zmq

from crawlproj.security.curve import CurveServer
from crawlproj.wire.protocol import BAD_FRAME, UNKNOWN_NODE, UNKNOWN_NODE_TEXT, encode, encode_error

from .config import Config
from .frontier import Frontier, Row
from .instrument import Instrument
from .partitions import Rendezvous
from .revisits import RevisitSchedule

logger = logging.getLogger("crawlproj.dispatcher")

BAD_FRAME_LOG_INTERVAL = 5.0  # seconds between two log lines about bad frames of one reason


@dataclass
class Node:
    name: str
    identity: bytes
    pid: Any = None
    host: Any = None
    capacity: Any = None
    alive: bool = True
    leaving: bool = False
    registered_at: float = 0.0  # wall clock
    last_seen: float = 0.0  # monotonic
    last_heartbeat: float = 0.0  # wall clock
    fetch_timeout: float = 0.0  # the node's longest fetch (register), seconds
    credit: int = 0
    registrations: int = 0
    leases: set[int] = field(default_factory=set)
    owned: set[int] = field(default_factory=set)
    ready: deque[int] = field(default_factory=deque)  # owned partitions with requests, round-robin
    ready_set: set[int] = field(default_factory=set)
    stats: dict[str, Any] = field(default_factory=dict)
    stats_at: float = 0.0
    leased: int = 0
    acked: int = 0
    pushed: int = 0


# A lease: (node name, partition, row, deadline)
Lease = tuple[str, int, Row, float]


class Core:
    """The service's shared state and socket helpers (see the module docstring)."""

    config: Config
    P: int
    frontier: Frontier
    revisits: RevisitSchedule
    instrument: Instrument
    sock: zmq.Socket[Any]
    curve: CurveServer | None
    epoch: int
    endpoint: str
    started: float
    finished: bool
    _holding: bool

    def _init_state(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.owner: list[str | None] = [None] * self.P
        self.pending: dict[int, str] = {}  # partition -> node asked to hand it off
        self.parked_state: dict[int, dict[Any, Any]] = {}  # handed-off state awaiting an owner
        self.rdv = Rendezvous(self.P)
        # partitions moved off their rendezvous node by the backlog balance (crawlproj.dispatcher
        # .assignment): partition -> node, for the live set they were computed for; when moved
        self.balanced: dict[int, str] = {}
        self.balanced_for: frozenset[str] = frozenset()
        self.balanced_at: dict[int, float] = {}
        self.leases: OrderedDict[int, Lease] = OrderedDict()  # insertion order = deadline order
        # postponed leases (robots.txt unreachable): row id -> (partition, row, key, due), a heap
        # of (due, row id) over them, and how many wait per politeness key
        self.postponed: dict[int, tuple[int, Row, str, float]] = {}
        self.postponed_heap: list[tuple[float, int]] = []
        self.postponed_keys: Counter[str] = Counter()
        # partitions of dead nodes, not assigned before their last fetch has surely ended:
        # partition -> monotonic time; and those to assign "fenced" (new owner holds every key)
        self.fenced_until: dict[int, float] = {}
        self.fenced_parts: set[int] = set()
        self.dirty: set[str] = set()  # nodes with credit that may have something to serve
        self.counters: Counter[str] = Counter()
        self.bad_frames: Counter[str] = Counter()
        self.messages: Counter[str] = Counter()
        self._bad_logged: dict[str, tuple[float, int]] = {}
        self._pcache: dict[str, int] = {}  # politeness key -> partition, of checked requests

    # -- sending ---------------------------------------------------------------------------------

    def _send(self, envelope: list[bytes], frame: bytes) -> bool:
        try:
            self.sock.send_multipart([*envelope, frame], zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.counters["send_full"] += 1
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.counters["send_unreachable"] += 1
        return False

    def _reply(self, envelope: list[bytes], mtype: str, **fields: Any) -> bool:
        return self._send(envelope, encode(mtype, **fields))

    def _bad(self, reason: str, identity: bytes, envelope: list[bytes] | None, detail: str,
             reply: bool = True) -> None:
        """Count and (rate-limited) log a refused frame of kind ``reason``; answer "error"."""
        self.bad_frames[reason] += 1
        now = time.monotonic()
        last, suppressed = self._bad_logged.get(reason, (-BAD_FRAME_LOG_INTERVAL, 0))
        if now - last >= BAD_FRAME_LOG_INTERVAL:
            logger.warning("Dropped a bad frame (%s) from %r: %s%s", reason, identity[:64], detail,
                           f" ({suppressed} more of this kind not logged)" if suppressed else "")
            self._bad_logged[reason] = (now, 0)
        else:
            self._bad_logged[reason] = (last, suppressed + 1)
        if reply and envelope is not None:
            self._send(envelope, encode_error(BAD_FRAME, f"bad frame ({reason}): {detail}"))

    def _known(self, identity: bytes, envelope: list[bytes]) -> Node | None:
        """The live node behind ``identity``; answers error unknown_node otherwise."""
        node = self.nodes.get(identity.decode("utf-8", "replace"))
        if node is None or not node.alive or node.identity != identity:
            self.counters["unknown_node"] += 1
            self._send(envelope, encode_error(UNKNOWN_NODE, UNKNOWN_NODE_TEXT))
            return None
        node.last_seen = time.monotonic()
        return node

    def _alive(self) -> int:
        return sum(1 for n in self.nodes.values() if n.alive)

    # -- implemented by the parts ----------------------------------------------------------------

    def _wake(self, p: int) -> None:
        raise NotImplementedError  # .leases

    def _give_back(self, rids: list[int], why: str) -> None:
        raise NotImplementedError  # .leases

    def _return_leases(self, node: Node, why: str, keep: frozenset[int] | set[int] = frozenset()) -> None:
        raise NotImplementedError  # .leases

    def postponed_state(self) -> dict[str, Any]:
        raise NotImplementedError  # .leases

    def _rebalance(self, welcome: Node | None = None) -> set[int]:
        raise NotImplementedError  # .assignment
