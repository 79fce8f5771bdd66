"""``crawlproj profile PID``: a flame graph of a running node with py-spy.

    crawlproj profile 12345                      # 30 s, idle time shown, profile-12345.svg
    crawlproj profile 12345 --no-idle -d 60      # only where the CPU goes

Idle time is shown by default: a crawler that waits (on a database, the network, a lock) shows
where it waits; ``--no-idle`` leaves it out, to see what burns CPU. py-spy attaches with ptrace:
run it as the node's user with ptrace allowed (root, or CAP_SYS_PTRACE in a container).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"<title>(.+?) \((\d[\d,]*) samples?, ([\d.]+)%\)</title>")


def py_spy() -> str:
    """The py-spy executable beside this Python (the pinned dependency), else on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    found = str(here) if here.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("crawlproj profile: needs py-spy: pip install 'crawlproj[tools]'")
    return found


def build_command(pid: int, output: str, duration: float, rate: int, idle: bool,
                  subprocesses: bool, native: bool) -> list[str]:
    cmd = [py_spy(), "record", "--pid", str(pid), "--output", output, "--format", "flamegraph",
           "--duration", str(max(1, round(duration))), "--rate", str(rate)]
    if idle:
        cmd.append("--idle")
    if subprocesses:
        cmd.append("--subprocesses")
    if native:
        cmd.append("--native")
    return cmd


def top_frames(svg: str | Path, count: int = 10) -> list[tuple[str, int, float]]:
    """The widest frames of a py-spy flame graph: (function (file:line), samples, percent)."""
    frames = []
    for name, samples, pct in _FRAME.findall(Path(svg).read_text(errors="replace")):
        if name != "all":
            frames.append((name, int(samples.replace(",", "")), float(pct)))
    frames.sort(key=lambda f: -f[1])
    return frames[:count]


def command(args: argparse.Namespace) -> int:
    """A flame graph of a running node (py-spy); idle time shown unless --no-idle."""
    if args.pid <= 0:
        print(f"crawlproj profile: PID must be a positive integer, got {args.pid}", file=sys.stderr)
        return 2
    if args.duration <= 0 or args.rate <= 0:
        print("crawlproj profile: --duration and --rate must be > 0", file=sys.stderr)
        return 2
    try:
        os.kill(args.pid, 0)
    except ProcessLookupError:
        print(f"crawlproj profile: no process {args.pid}", file=sys.stderr)
        return 2
    except PermissionError:
        pass  # it exists; py-spy will say whether it may attach
    output = args.output or f"profile-{args.pid}.svg"
    cmd = build_command(args.pid, output, args.duration, args.rate, args.idle,
                        args.subprocesses, args.native)
    print(f"profiling {args.pid} for {args.duration:.0f} s ({'idle shown' if args.idle else 'idle excluded'})",
          flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not Path(output).exists():
        err = (done.stderr or done.stdout).strip()
        hint = ""
        if "ptrace" in err.lower() or "permission" in err.lower():
            hint = " (py-spy needs ptrace: run as root or the node's user, or with CAP_SYS_PTRACE)"
        print(f"crawlproj profile: py-spy failed{hint}: {err}", file=sys.stderr)
        return 1
    print(f"flame graph: {output}")
    for name, samples, pct in top_frames(output, args.top):
        print(f"  {pct:5.1f}%  {samples:6d}  {name}")
    return 0


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("profile", help=command.__doc__, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pid", type=int, help="process id of the node (a `scrapy crawl` process)")
    p.add_argument("-d", "--duration", type=float, default=30.0, help="seconds to sample (default %(default)s)")
    p.add_argument("-o", "--output", default=None, help="SVG flame graph (default profile-PID.svg)")
    p.add_argument("--rate", type=int, default=100, help="samples per second (default %(default)s)")
    p.add_argument("--no-idle", dest="idle", action="store_false",
                   help="leave out idle time (threads waiting), to see only what burns CPU")
    p.add_argument("--subprocesses", action="store_true", help="profile child processes too")
    p.add_argument("--native", action="store_true", help="include native (C) frames")
    p.add_argument("--top", type=int, default=10, help="widest frames printed (default %(default)s)")
    p.set_defaults(func=command)
