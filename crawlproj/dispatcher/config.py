"""The dispatcher's configuration: defaults, limits and :class:`Config`, checked when built.

Every field is a command-line option ``--<field-with-dashes>`` and an environment variable
``CRAWLPROJ_DISPATCHER_<FIELD>`` (:mod:`.cli`). Building a :class:`Config` reads no file and
opens nothing; a bad value raises :class:`~.errors.ConfigError` naming the option, its variable,
the value and what is expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .frontier import DEFAULT_COMMIT_INTERVAL, DEFAULT_HOT_SEEN, DEFAULT_READAHEAD
from .seen import DEFAULT_FILTER_MIB, FILTER_MIB_MAX

ENV_PREFIX = "CRAWLPROJ_DISPATCHER_"
DEFAULT_BIND = "tcp://127.0.0.1:5570"
DEFAULT_STORE = "dispatcher-store"
DEFAULT_PARTITIONS = 1024
DEFAULT_HEARTBEAT_INTERVAL = 2.0  # seconds between node heartbeats (told in "welcome")
DEFAULT_HEARTBEAT_TIMEOUT = 10.0  # a node silent this long is dead
DEFAULT_LEASE_TIMEOUT = 600.0  # a lease not acked, released or renewed by then goes back
RENEWALS_PER_LEASE_TIMEOUT = 4  # nodes renew their leases this often per lease time-out
DEFAULT_SEEDS_KEY = "broad:start_urls"
DEFAULT_SEEDS_POLL = 1.0  # seconds between Redis seed polls
DEFAULT_SERIES_INTERVAL = 1.0
DEFAULT_SERIES_POINTS = 3600
DEFAULT_TIMINGS_INTERVAL = 60.0
DEFAULT_REVISIT_SHARE = 0.5  # docs/revisits.md
KEY_BY = ("domain", "host")


def option(name: str) -> str:
    """``--heartbeat-timeout (CRAWLPROJ_DISPATCHER_HEARTBEAT_TIMEOUT)`` for a field name."""
    return f"--{name.replace('_', '-')} ({ENV_PREFIX}{name.upper()})"


def _bad(name: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{option(name)}: expected {expected}, got {value!r}")


DEFAULT_BALANCE_INTERVAL = 1.0  # seconds between two looks at the nodes' backlogs (0: never)


@dataclass
class Config:
    bind: str = DEFAULT_BIND
    store: str = DEFAULT_STORE
    partitions: int = DEFAULT_PARTITIONS
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    lease_timeout: float = DEFAULT_LEASE_TIMEOUT
    fence: float | None = None  # None: halfway between heartbeat_interval and heartbeat_timeout
    keep_alive: bool = False
    seeds: list[str] = field(default_factory=list)
    seeds_file: str | None = None
    seeds_redis: str | None = None
    seeds_key: str = DEFAULT_SEEDS_KEY
    seeds_poll_interval: float = DEFAULT_SEEDS_POLL
    key_by: str = "domain"
    readahead: int = DEFAULT_READAHEAD
    hot_seen: int = DEFAULT_HOT_SEEN
    seen_filter_mib: int = DEFAULT_FILTER_MIB  # Bloom filter of the seen index (crawlproj.dispatcher.seen)
    commit_interval: float = DEFAULT_COMMIT_INTERVAL
    balance_interval: float = DEFAULT_BALANCE_INTERVAL  # seconds between backlog balance checks (0: off)
    restart_hold: float | None = None  # None: heartbeat_timeout when resuming a store
    min_nodes: int = 1  # no partition is assigned before this many nodes are alive
    curve_secret_key: str | None = None  # CURVE: this dispatcher's key pair (crawlproj keys)
    curve_authorized_dir: str | None = None  # CURVE: the allowed clients' public *.key files
    http_port: int | None = None  # HTTP API, metrics and status page (0: a free port; None: off)
    http_host: str = "127.0.0.1"
    series_interval: float = DEFAULT_SERIES_INTERVAL  # seconds between two points of the time series
    series_points: int = DEFAULT_SERIES_POINTS  # points kept (older ones thinned out, never dropped whole)
    timings_interval: float = DEFAULT_TIMINGS_INTERVAL  # seconds between TIMINGS lines in the log
    revisit_share: float = DEFAULT_REVISIT_SHARE  # most of a partition's waiting rows that are revisits

    def __post_init__(self) -> None:
        self.validate()

    @property
    def fence_seconds(self) -> float:
        """How long after its last answered heartbeat a node may start a fetch (docs/protocol.md)."""
        if self.fence is not None:
            return self.fence
        return (self.heartbeat_interval + self.heartbeat_timeout) / 2

    @property
    def renew_interval(self) -> float:
        """Seconds between two lease renewals of a node (told in "welcome")."""
        return self.lease_timeout / RENEWALS_PER_LEASE_TIMEOUT

    def validate(self) -> None:
        """Raise ConfigError for the first bad field (files named here are not opened)."""
        if self.partitions < 1:
            raise _bad("partitions", self.partitions, "an integer >= 1")
        for name in ("heartbeat_interval", "lease_timeout", "commit_interval", "series_interval",
                     "timings_interval"):
            if not getattr(self, name) > 0:
                raise _bad(name, getattr(self, name), "a number of seconds > 0")
        if not self.heartbeat_timeout > self.heartbeat_interval:
            raise _bad("heartbeat_timeout", self.heartbeat_timeout,
                       f"more seconds than --heartbeat-interval ({self.heartbeat_interval})")
        fence = self.fence_seconds
        if not self.heartbeat_interval < fence < self.heartbeat_timeout:
            raise ConfigError(
                f"{option('fence')}: expected more seconds than {option('heartbeat_interval')} "
                f"({self.heartbeat_interval}) and fewer than {option('heartbeat_timeout')} "
                f"({self.heartbeat_timeout}), got {fence!r}: a node may fetch only that long "
                "after its last heartbeat answer, so it must stop before it is declared dead")
        if self.key_by not in KEY_BY:
            raise _bad("key_by", self.key_by, " or ".join(repr(k) for k in KEY_BY))
        if not self.bind.startswith(("tcp://", "ipc://")):
            raise _bad("bind", self.bind, "a tcp:// or ipc:// endpoint")
        if bool(self.curve_secret_key) != bool(self.curve_authorized_dir):
            raise ConfigError(f"{option('curve_secret_key')} and {option('curve_authorized_dir')} "
                              f"go together (got {self.curve_secret_key!r} and "
                              f"{self.curve_authorized_dir!r})")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise _bad("http_port", self.http_port, "a port number (0: a free one)")
        if not 1 <= self.seen_filter_mib <= FILTER_MIB_MAX:
            raise _bad("seen_filter_mib", self.seen_filter_mib, f"MiB between 1 and {FILTER_MIB_MAX}")
        if self.min_nodes < 1:
            raise _bad("min_nodes", self.min_nodes, "an integer >= 1")
        if not self.balance_interval >= 0:
            raise _bad("balance_interval", self.balance_interval, "a number of seconds >= 0 (0: off)")
        if self.series_points < 2:
            raise _bad("series_points", self.series_points, "an integer >= 2")
        if not 0 <= self.revisit_share <= 1:
            raise _bad("revisit_share", self.revisit_share, "a share between 0 and 1")
