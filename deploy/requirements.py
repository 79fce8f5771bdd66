"""Print crawlproj's pinned requirements from pyproject.toml, one a line, without crawlproj itself.

    python deploy/requirements.py                       # the dependencies of a node or dispatcher
    python deploy/requirements.py --extra scrapyd       # ... plus scrapyd: a scrapyd machine
    pip install -r <(python deploy/requirements.py --extra scrapyd)

A scrapyd machine needs crawlproj's dependencies but must not have crawlproj installed: an
installed copy comes first on sys.path and shadows every egg that `crawlproj deploy` uploads.
pyproject.toml stays the one list of pins; extras that name crawlproj[...] are expanded.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
SELF = re.compile(r"^crawlproj\[([^\]]*)\]$")


def requirements(project: dict[str, object], extras: list[str]) -> list[str]:
    deps = list(project.get("dependencies", []))  # type: ignore[call-overload]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})  # type: ignore[assignment]
    todo, done = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in done:
            continue
        if extra not in optional:
            raise SystemExit(f"pyproject.toml has no extra {extra!r} (extras: {', '.join(optional)})")
        done.add(extra)
        for req in optional[extra]:
            nested = SELF.match(req.replace(" ", ""))
            if nested:
                todo += [e for e in nested.group(1).split(",") if e]
            else:
                deps.append(req)
    return list(dict.fromkeys(deps))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extra", action="append", default=[], help="an extra of pyproject.toml (repeatable)")
    parser.add_argument("--pyproject", default=str(PYPROJECT))
    args = parser.parse_args(argv)
    with open(args.pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    print("\n".join(requirements(project, args.extra)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
