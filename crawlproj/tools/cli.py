"""The ``crawlproj`` command."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from crawlproj.tools import cluster, deploy
from crawlproj.observability import cli as observability
from crawlproj.security import curve

# Services with their own argument parsers: the rest of the command line goes to them.
SERVICES = {
    "synthweb": ("crawlproj_testing.synthweb.server", "serve the synthetic web on 127.0.0.1"),
    "dispatcher": ("crawlproj.dispatcher.cli", "run the ZeroMQ dispatcher"),
}


class SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser: its --help shows every option's default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = kwargs.get("formatter_class", argparse.HelpFormatter)
        if not issubclass(given, argparse.ArgumentDefaultsHelpFormatter):  # e.g. a raw description
            given = type(f"Defaults{given.__name__}", (argparse.ArgumentDefaultsHelpFormatter, given), {})
        kwargs["formatter_class"] = given
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The ``crawlproj`` parser; SERVICES have their own (their --help is theirs)."""
    parser = argparse.ArgumentParser(prog="crawlproj", description="Distributed broad crawling for Scrapy")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=SubcommandParser)
    cluster.add_arguments(sub)
    deploy.add_arguments(sub)
    observability.add_arguments(sub)  # top, logs, diagnose, profile
    curve.add_arguments(sub)  # keys
    for name, (_module, help_text) in SERVICES.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in SERVICES:
        module = importlib.import_module(SERVICES[args.command][0])
        return int(module.main(rest) or 0)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
