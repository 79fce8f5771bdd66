"""`./dev demo`, the main job, as a user runs it: the whole mission into MongoDB, and Ctrl-C.

Each test runs the real command (dispatcher, nodes, synthetic web, the embedded nx-27017 or
MONGO_URI) and reads what the user reads: its output, its exit code, the nodes' logs, the
MongoDB collection.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, wait_until

from crawlproj.tools.mongo_server import MongoServer

DEMO_TIMEOUT = 300
SUMMARY_LINES = ("wall time", "pages fetched", "items scraped", "dispatcher", "MongoDB",
                 "query it", "HTTP statuses", "ground truth", "logs")


def figure(output: str, pattern: str) -> re.Match[str]:
    match = re.search(pattern, output, re.M)
    assert match, f"no line matching {pattern!r} in:\n{output}"
    return match


def node_stats(workdir: Path) -> dict[str, dict[str, object]]:
    return {p.name.split(".")[0]: json.loads(p.read_text()) for p in sorted(workdir.glob("node*.stats.json"))}


def documents(workdir: Path, output: str) -> int:
    """The documents in the demo's collection, counted here (the embedded server served again)."""
    database, collection = figure(output, r"^MongoDB +\d+ documents in (\w+)\.(\w+)").groups()
    with MongoServer(workdir / "mongo.db") as mongo:  # MONGO_URI instead when set
        return mongo.count(database, collection)


def assert_summary(output: str) -> None:
    summary = output.split("=== summary ===", 1)[1]
    for name in SUMMARY_LINES:
        assert re.search(rf"^{name}\b", summary, re.M), f"summary without {name!r}:\n{summary}"
    wall = float(figure(summary, r"^wall time +([\d.]+) s").group(1))
    pages, rate = figure(summary, r"^pages fetched +(\d+) \(([\d.]+) pages/s overall\)").groups()
    assert wall >= 1.0 and int(pages) > 0
    assert abs(float(rate) - int(pages) / wall) <= 0.1 * float(rate) + 0.1  # pages / wall, no absurd rate


def test_demo_writes_every_item_to_mongodb_and_says_so(tmp_path):
    workdir = tmp_path / "demo"
    proc = subprocess.run([str(ROOT / "dev"), "demo", "--hosts", "10", "--workdir", str(workdir)],
                          capture_output=True, text=True, timeout=DEMO_TIMEOUT, stdin=subprocess.DEVNULL)
    output = proc.stdout
    assert proc.returncode == 0, output + proc.stderr
    assert_summary(output)
    stats = node_stats(workdir)
    items = sum(int(s["item_scraped_count"]) for s in stats.values())
    pages = sum(int(s["response_received_count"]) for s in stats.values())
    assert items > 100
    line = figure(output, r"^MongoDB +(\d+) documents in \w+\.\w+ = (\d+) items scraped \((\d+) pages fetched\)")
    assert [int(g) for g in line.groups()] == [items, items, pages]
    assert documents(workdir, output) == items
    assert re.search(r"^finished last +\S+ \(node\d\): \d+ pages, one each [\d.]+ s, set by ", output, re.M)
    assert figure(output, r"^ground truth +(\d+)/(\d+) ").group(1) == figure(output, r"^ground truth +(\d+)/(\d+) ").group(2)


def interrupted_demo(tmp_path: Path, times: int) -> tuple[Path, str]:
    """Run the demo in a session of its own (as a terminal does), send SIGINT to its process
    group ``times`` times once it fetched 100 pages (each after the previous one was taken in),
    and return its work directory and output once it exited with 130."""
    workdir = tmp_path / "demo"
    out = tmp_path / "out.txt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with out.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "crawlproj.tools.cli", "demo", "--hosts", "60",
                                 "--workdir", str(workdir)], stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        try:
            wait_until(lambda: re.search(r"pages +([1-9]\d{2,})", out.read_text()), 120,
                       "the demo to fetch 100 pages")
            os.killpg(proc.pid, signal.SIGINT)
            if times > 1:
                wait_until(lambda: "Ctrl-C: stopping the nodes" in out.read_text(), 30, "the first Ctrl-C")
                os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(DEMO_TIMEOUT) == 130
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and str(workdir) in _cmdline(pid)], \
        "a child of the demo outlived it"
    return workdir, out.read_text()


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace")
    except OSError:
        return ""


def test_ctrl_c_in_a_terminal_stops_the_nodes_once_and_prints_the_whole_summary(tmp_path):
    """SIGINT to the demo's whole process group, as a terminal sends it: the nodes finish
    gracefully (no forced shutdown), the dispatcher answers the summary, the figures are true."""
    workdir, output = interrupted_demo(tmp_path, 1)
    assert "Ctrl-C: stopping the nodes gracefully" in output and "forcing" not in output
    assert_summary(output)
    stats = node_stats(workdir)
    assert set(stats) == {"node1", "node2"}
    assert {s["finish_reason"] for s in stats.values()} == {"shutdown"}
    for name in stats:
        log = (workdir / f"{name}.log").read_text()
        assert "shutting down gracefully" in log and "forcing unclean shutdown" not in log, name
    # a node that started late (a loaded machine) may have scraped nothing: Scrapy then has no key
    items = sum(int(s.get("item_scraped_count", 0)) for s in stats.values())
    assert figure(output, r"^items scraped +(\d+)").group(1) == str(items)
    assert documents(workdir, output) == items  # the items of a graceful stop are all written
    assert "Crawl finished" not in (workdir / "dispatcher.log").read_text()  # stopped, not finished


def test_a_second_ctrl_c_forces_and_the_summary_still_comes(tmp_path):
    """The second SIGINT forces the nodes down if they are still stopping; if they have already
    stopped, it is only acknowledged. Either way: exit 130, the whole summary, no traceback."""
    workdir, output = interrupted_demo(tmp_path, 2)
    assert "Traceback" not in output
    assert ("second Ctrl-C: forcing the nodes down" in output
            or "stopping already: the dispatcher, then the summary" in output), output
    assert_summary(output)


FAKE_APT = """#!/bin/sh
# apt-get held by another process for the first $BUSY calls, then fine
n=$(cat "$CALLS" 2>/dev/null || echo 0); echo $((n + 1)) > "$CALLS"
if [ "$n" -lt "$BUSY" ]; then
    echo "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (apt-get)" >&2
    exit 100
fi
echo "apt-get $*" >> "$CALLS.done"
"""


def apt_get_of_dev(tmp_path: Path, busy: int, wait: int) -> subprocess.CompletedProcess[str]:
    """``apt_get install -y redis-server`` of ./dev with an apt-get whose lock is held ``busy`` times."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "apt-get").write_text(FAKE_APT)
    (bin_dir / "apt-get").chmod(0o755)
    (bin_dir / "id").write_text("#!/bin/sh\necho 0\n")  # as root: no sudo
    (bin_dir / "id").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls"),
           "BUSY": str(busy), "APT_LOCK_WAIT": str(wait), "APT_LOCK_RETRY": "0.1"}
    return subprocess.run(["bash", "-c", f"source {ROOT / 'dev'} && apt_get install -y redis-server"],
                          capture_output=True, text=True, env=env, timeout=60)


def test_dev_waits_for_the_dpkg_lock_with_a_message_and_a_bound(tmp_path):
    proc = apt_get_of_dev(tmp_path, busy=3, wait=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ("== waiting for the dpkg lock: another apt-get or dpkg is running "
                           "(up to 30 s, APT_LOCK_WAIT)\n")
    assert (tmp_path / "calls").read_text().strip() == "4"
    assert (tmp_path / "calls.done").read_text() == "apt-get -qq install -y redis-server\n"
    held = tmp_path / "held"
    held.mkdir()
    proc = apt_get_of_dev(held, busy=10**6, wait=1)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == "== gave up after 1 s waiting for the dpkg lock (APT_LOCK_WAIT)"
