"""``python -m slow_dispatcher --message-delay SECONDS [dispatcher options]``: the dispatcher,
slowed down by a planted fault (observability_faults.SlowDispatcher). Test-only: tests/ must be
on PYTHONPATH (tests/test_observability.py's fault drills set it)."""

from __future__ import annotations

import argparse
import functools
import sys

from observability_faults import SlowDispatcher

from crawlproj.dispatcher.cli import main as dispatcher_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slow_dispatcher", add_help=False)
    parser.add_argument("--message-delay", type=float, required=True)
    args, rest = parser.parse_known_args(argv)
    if args.message_delay < 0:
        parser.error(f"--message-delay: expected seconds >= 0, got {args.message_delay}")
    return dispatcher_main(rest, service=functools.partial(SlowDispatcher, message_delay=args.message_delay))


if __name__ == "__main__":
    sys.exit(main())
