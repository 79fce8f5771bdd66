"""DISPATCHER_* settings of a node: read once, checked, every error naming its setting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crawlproj.nodeid import node_name
from crawlproj.politeness.config import key_kind
from crawlproj.security.curve import ClientKeys, CurveKeyError, read_certificate
from crawlproj.setting_checks import HEADER_NAME, int_at_least, positive_float

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings


@dataclass(frozen=True)
class NodeConfig:
    """DISPATCHER_* settings of a node, read and checked once (ValueError names the setting)."""

    endpoint: str
    node_name: str
    queue_target: int
    push_batch: int
    flush_interval: float
    heartbeat_interval: float
    timeout: float
    stats_interval: float
    replay_seconds: float
    handoff_timeout: float
    download_timeout: float
    node_header: str
    key_by: str
    curve: ClientKeys | None

    @classmethod
    def from_settings(cls, s: BaseSettings, spider: Any = None) -> NodeConfig:
        endpoint = s.get("DISPATCHER_ENDPOINT")
        if not isinstance(endpoint, str) or "://" not in endpoint:
            raise ValueError(f"DISPATCHER_ENDPOINT: expected a ZeroMQ endpoint like "
                             f"tcp://host:port, got {endpoint!r}")
        node_header = str(s.get("DISPATCHER_NODE_HEADER") or "")
        if node_header and not HEADER_NAME.match(node_header):
            raise ValueError(f"DISPATCHER_NODE_HEADER: expected an HTTP header name (or ''), got {node_header!r}")
        return cls(
            endpoint=endpoint,
            node_name=node_name(s, spider),
            queue_target=int_at_least(s, "DISPATCHER_QUEUE_TARGET", 1, "a positive integer"),
            push_batch=int_at_least(s, "DISPATCHER_PUSH_BATCH", 1, "a positive integer"),
            flush_interval=positive_float(s, "DISPATCHER_FLUSH_INTERVAL"),
            heartbeat_interval=positive_float(s, "DISPATCHER_HEARTBEAT_INTERVAL"),
            timeout=positive_float(s, "DISPATCHER_TIMEOUT"),
            stats_interval=positive_float(s, "DISPATCHER_STATS_INTERVAL"),
            replay_seconds=positive_float(s, "DISPATCHER_REPLAY_SECONDS"),
            handoff_timeout=positive_float(s, "DISPATCHER_HANDOFF_TIMEOUT"),
            # a fetch must end for the fence to hold (docs/protocol.md, Fenced ownership)
            download_timeout=positive_float(s, "DOWNLOAD_TIMEOUT", "seconds > 0 under the "
                                            "dispatcher (a fetch must end: the fence)"),
            node_header=node_header,
            key_by=key_kind(s),
            curve=cls._curve_keys(s),
        )

    @staticmethod
    def _curve_keys(s: BaseSettings) -> ClientKeys | None:
        """DISPATCHER_CURVE_SECRET_KEY_FILE + DISPATCHER_CURVE_SERVER_KEY_FILE, read now."""
        secret_name, server_name = "DISPATCHER_CURVE_SECRET_KEY_FILE", "DISPATCHER_CURVE_SERVER_KEY_FILE"
        secret_file, server_file = str(s.get(secret_name) or ""), str(s.get(server_name) or "")
        if not secret_file and not server_file:
            return None
        if not secret_file or not server_file:
            raise ValueError(f"{secret_name} and {server_name}: expected both (CURVE) or neither, "
                             f"got {secret_file!r} and {server_file!r}")
        try:
            public, secret = read_certificate(secret_file, secret=True)
        except CurveKeyError as exc:
            raise ValueError(f"{secret_name}: expected this node's CURVE key pair file (crawlproj keys: "
                             f"clients/<name>.key_secret), got {secret_file!r}: {exc}") from None
        try:
            server, _ = read_certificate(server_file, secret=False)
        except CurveKeyError as exc:
            raise ValueError(f"{server_name}: expected the dispatcher's public key file (crawlproj keys: "
                             f"dispatcher.key), got {server_file!r}: {exc}") from None
        assert secret is not None
        return ClientKeys(public, secret, server)
