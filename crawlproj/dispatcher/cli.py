"""``crawlproj dispatcher`` / ``python -m crawlproj.dispatcher``: options, environment, start-up.

When ready it prints exactly one line, ``DISPATCHER LISTENING tcp://HOST:PORT``, on stdout
(then ``DISPATCHER HTTP http://HOST:PORT`` with ``--http-port``); process runners wait for it
(crawlproj.tools.dispatcher_process). Every option can also be set by an environment variable
``CRAWLPROJ_DISPATCHER_<OPTION>``; the command line wins.

It exits (0) once the crawl has finished and every node that registered has left, unless
``--keep-alive`` (never finish: wait for new seeds) or ``--stay`` (finish, then keep answering
"status" until SIGTERM, as the local cluster does to read the final figures).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from crawlproj.observability.dispatcher import DispatcherObserver

from .config import (
    DEFAULT_BALANCE_INTERVAL,
    DEFAULT_BIND,
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_LEASE_TIMEOUT,
    DEFAULT_PARTITIONS,
    DEFAULT_SEEDS_KEY,
    DEFAULT_SEEDS_POLL,
    DEFAULT_SERIES_INTERVAL,
    DEFAULT_SERIES_POINTS,
    DEFAULT_STORE,
    DEFAULT_REVISIT_SHARE,
    DEFAULT_TIMINGS_INTERVAL,
    ENV_PREFIX,
    KEY_BY,
    Config,
)
from .errors import ConfigError, DispatcherError
from .frontier import DEFAULT_COMMIT_INTERVAL, DEFAULT_HOT_SEEN, DEFAULT_READAHEAD
from .seeds import check_seeds_file, seed_urls
from .seen import DEFAULT_FILTER_MIB
from .service import Dispatcher

logger = logging.getLogger("crawlproj.dispatcher")

LISTENING_PREFIX = "DISPATCHER LISTENING "
HTTP_PREFIX = "DISPATCHER HTTP "
REFUSAL_PREFIX = "crawlproj dispatcher: "  # the one line on stderr when it refuses to start

Service = Callable[..., Dispatcher]


def _env(name: str, default: Any, kind: Callable[[str], Any] = str) -> Any:
    """The value of CRAWLPROJ_DISPATCHER_<NAME> read as ``kind``, else ``default``."""
    var = ENV_PREFIX + name.upper()
    value = os.environ.get(var)
    if value is None:
        return default
    try:
        return kind(value)
    except ValueError:
        expected = {int: "an integer", float: "a number"}.get(kind, "a value")
        raise ConfigError(f"{var}: expected {expected}, got {value!r}") from None


def _env_bool(name: str) -> bool:
    value = os.environ.get(ENV_PREFIX + name.upper(), "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    """The option parser, its defaults taken from the environment (ConfigError if one is bad)."""
    p = argparse.ArgumentParser(
        prog="crawlproj dispatcher", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="The ZeroMQ dispatcher of a crawlproj crawl. It exits once the crawl has "
                    "finished and every node has left, unless --keep-alive or --stay. Every "
                    "option can also be set by an environment variable "
                    f"{ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}BIND); the command line wins.")
    p.add_argument("--bind", default=_env("bind", DEFAULT_BIND),
                   help="ROUTER endpoint; port 0 or '*' picks a free port")
    p.add_argument("--store", default=_env("store", DEFAULT_STORE),
                   help="directory of the SQLite frontier store")
    p.add_argument("--partitions", type=int, default=_env("partitions", DEFAULT_PARTITIONS, int),
                   help="virtual partitions P, fixed for the life of a crawl")
    p.add_argument("--heartbeat-interval", type=float,
                   default=_env("heartbeat_interval", DEFAULT_HEARTBEAT_INTERVAL, float),
                   help="seconds between the heartbeats it expects of a node (told in its welcome)")
    p.add_argument("--heartbeat-timeout", type=float,
                   default=_env("heartbeat_timeout", DEFAULT_HEARTBEAT_TIMEOUT, float),
                   help="seconds without a word from a node before it is dead (its leases go back)")
    p.add_argument("--lease-timeout", type=float,
                   default=_env("lease_timeout", DEFAULT_LEASE_TIMEOUT, float),
                   help="seconds a lease stays unacked before its request goes back to the frontier")
    p.add_argument("--fence", type=float, default=_env("fence", None, float),
                   help="seconds after its last answered heartbeat a node may still start a "
                        "fetch; between --heartbeat-interval and --heartbeat-timeout (unset: "
                        "halfway; docs/protocol.md, Fenced ownership)")
    p.add_argument("--keep-alive", action="store_true", default=_env_bool("keep_alive"),
                   help="never send 'finished' and never exit: wait for new seeds when the "
                        "frontier is empty (a continuous crawl fed through --seeds-redis)")
    p.add_argument("--stay", action="store_true", default=_env_bool("stay"),
                   help="after the crawl finished, keep answering status until SIGTERM instead "
                        "of exiting once every node has left")
    p.add_argument("--seeds", default=_env("seeds", ""),
                   help="comma-separated seed URLs; an entry without '://' is not a URL and is "
                        "refused (a file of seeds goes to --seeds-file)")
    p.add_argument("--seeds-file", default=_env("seeds_file", None), metavar="PATH",
                   help="path of a file of seed URLs, one a line ('#' comments); a missing file "
                        "stops the start ('file not found'), lines that are not UTF-8 are skipped "
                        "and counted")
    p.add_argument("--seeds-redis", default=_env("seeds_redis", None),
                   help="Redis URL to pop seeds from (a list or set, scrapy-redis convention)")
    p.add_argument("--seeds-key", default=_env("seeds_key", DEFAULT_SEEDS_KEY),
                   help="the Redis key of --seeds-redis")
    p.add_argument("--seeds-poll-interval", type=float,
                   default=_env("seeds_poll_interval", DEFAULT_SEEDS_POLL, float),
                   help="seconds between polls of --seeds-redis")
    p.add_argument("--key-by", choices=KEY_BY, default=_env("key_by", "domain"),
                   help="politeness key of seeds; must match the nodes' setting")
    p.add_argument("--readahead", type=int, default=_env("readahead", DEFAULT_READAHEAD, int),
                   help="requests per partition kept in memory")
    p.add_argument("--hot-seen", type=int, default=_env("hot_seen", DEFAULT_HOT_SEEN, int),
                   help="recent fingerprints kept in memory before asking SQLite")
    p.add_argument("--seen-filter-mib", type=int,
                   default=_env("seen_filter_mib", DEFAULT_FILTER_MIB, int),
                   help="MiB of RAM for the Bloom filter that spares new URLs a seen-index lookup")
    p.add_argument("--commit-interval", type=float,
                   default=_env("commit_interval", DEFAULT_COMMIT_INTERVAL, float),
                   help="longest time (s) writes stay uncommitted; a crash "
                        "loses nothing either way (at-least-once), only re-crawls more")
    p.add_argument("--balance-interval", type=float,
                   default=_env("balance_interval", DEFAULT_BALANCE_INTERVAL, float),
                   help="seconds between two looks at the nodes' backlogs, moving a partition "
                        "from the most loaded node to the least when that helps (0: never)")
    p.add_argument("--revisit-share", type=float,
                   default=_env("revisit_share", DEFAULT_REVISIT_SHARE, float),
                   help="most of a partition's waiting requests that may be revisits when new "
                        "URLs wait too (docs/revisits.md)")
    p.add_argument("--restart-hold", type=float, default=_env("restart_hold", None, float),
                   help="seconds to wait for nodes to re-register before assigning partitions "
                        "when resuming a store (None: the heartbeat time-out)")
    p.add_argument("--min-nodes", type=int, default=_env("min_nodes", 1, int),
                   help="assign no partition before this many nodes are alive, so the first node "
                        "does not crawl alone while the others start")
    p.add_argument("--http-port", type=int, default=_env("http_port", None, int),
                   help="serve the HTTP API (/api/state, /api/series), Prometheus /metrics and a "
                        "live status page on this port (0: a free one; None: off)")
    p.add_argument("--http-host", default=_env("http_host", "127.0.0.1"),
                   help="address the HTTP API listens on")
    p.add_argument("--series-interval", type=float,
                   default=_env("series_interval", DEFAULT_SERIES_INTERVAL, float),
                   help="seconds between points of the cluster's time series")
    p.add_argument("--series-points", type=int,
                   default=_env("series_points", DEFAULT_SERIES_POINTS, int),
                   help="points kept; past that the series is thinned out")
    p.add_argument("--timings-interval", type=float,
                   default=_env("timings_interval", DEFAULT_TIMINGS_INTERVAL, float),
                   help="seconds between TIMINGS lines in the log")
    p.add_argument("--curve-secret-key", default=_env("curve_secret_key", None), metavar="FILE",
                   help="CURVE: this dispatcher's key pair (crawlproj keys: dispatcher.key_secret); "
                        "with --curve-authorized-dir, only those clients can talk to it")
    p.add_argument("--curve-authorized-dir", default=_env("curve_authorized_dir", None), metavar="DIR",
                   help="CURVE: directory of the allowed clients' public *.key files (SIGHUP re-reads it)")
    p.add_argument("--log-level", default=_env("log_level", "INFO"),
                   help="DEBUG, INFO, WARNING or ERROR")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    """The service's Config; ConfigError for seeds that are not URLs or a missing seeds file."""
    seeds = seed_urls(args.seeds)
    if args.seeds_file:
        check_seeds_file(args.seeds_file)
    return Config(
        bind=args.bind, store=args.store, partitions=args.partitions,
        heartbeat_interval=args.heartbeat_interval, heartbeat_timeout=args.heartbeat_timeout,
        lease_timeout=args.lease_timeout, fence=args.fence, keep_alive=args.keep_alive, seeds=seeds,
        seeds_file=args.seeds_file, seeds_redis=args.seeds_redis, seeds_key=args.seeds_key,
        seeds_poll_interval=args.seeds_poll_interval, key_by=args.key_by,
        readahead=args.readahead, hot_seen=args.hot_seen,
        seen_filter_mib=args.seen_filter_mib, commit_interval=args.commit_interval,
        restart_hold=args.restart_hold, min_nodes=args.min_nodes, curve_secret_key=args.curve_secret_key,
        curve_authorized_dir=args.curve_authorized_dir, http_port=args.http_port,
        http_host=args.http_host, series_interval=args.series_interval,
        series_points=args.series_points, timings_interval=args.timings_interval,
        revisit_share=args.revisit_share, balance_interval=args.balance_interval,
    )


def done(dispatcher: Dispatcher) -> bool:
    """The crawl finished and every node that registered has left (or died)."""
    nodes = dispatcher.nodes.values()
    return dispatcher.finished and bool(nodes) and not any(n.alive for n in nodes)


def _refuse(exc: Exception) -> int:
    print(f"{REFUSAL_PREFIX}{exc}", file=sys.stderr, flush=True)
    return 2


GC_THRESHOLDS = (100_000, 50, 100)  # young-generation allocations between collections, then 1 : 50 : 100


def tune_gc() -> None:
    """What start-up built lives as long as the process: freeze it out of the collector's scans,
    and collect the young generation every GC_THRESHOLDS[0] allocations rather than 700 (a push
    allocates a few containers per link, nearly all freed by reference counting; measured with
    bench/bench_dispatcher.py)."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def main(argv: list[str] | None = None, service: Service = Dispatcher) -> int:
    """Run the dispatcher until SIGTERM/SIGINT; 2 on a bad option or a failed store.

    ``service`` builds the service from ``(config, instrument=...)`` (tests pass a subclass).
    """
    try:
        args = build_parser().parse_args(argv)
    except ConfigError as exc:
        return _refuse(exc)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s [%(name)s] %(levelname)s: %(message)s")
    try:
        config = config_from_args(args)
        observer = DispatcherObserver(config.series_interval, config.series_points,
                                      config.timings_interval)
        dispatcher = service(config, instrument=observer)
    except DispatcherError as exc:
        return _refuse(exc)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("Received signal %d: shutting down", signum)
        dispatcher.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if dispatcher.curve is not None:
        curve = dispatcher.curve
        signal.signal(signal.SIGHUP, lambda signum, frame: curve.reload())
    try:
        endpoint = dispatcher.bind()
        http_url = ""
        if config.http_port is not None:
            try:
                http_url = observer.start_http(config.http_host, config.http_port)
            except OSError as exc:
                raise ConfigError(f"cannot serve HTTP on port {config.http_port}: {exc}") from exc
        dispatcher.load_initial_seeds()
        print(f"{LISTENING_PREFIX}{endpoint}", flush=True)
        if http_url:
            print(f"{HTTP_PREFIX}{http_url}", flush=True)
        if config.keep_alive:
            logger.info("--keep-alive: serving until SIGTERM, the crawl never finishes")
        elif args.stay:
            logger.info("--stay: after the crawl finished, serving status until SIGTERM")
        else:
            logger.info("Exits when the crawl has finished and every node has left "
                        "(--stay or --keep-alive to keep it running)")
        tune_gc()
        dispatcher.run(until=None if args.stay or config.keep_alive else lambda: done(dispatcher))
        if done(dispatcher):
            logger.info("Crawl finished and every node left: exiting")
    except (DispatcherError, sqlite3.Error) as exc:
        return _refuse(exc)
    finally:
        try:
            dispatcher.close()
        except sqlite3.Error as exc:
            logger.error("Closing the store failed: %s (a restart resumes from the last commit)", exc)
    logger.info("Dispatcher stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
