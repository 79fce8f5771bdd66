"""Fixtures that start real servers on free ports and stop them afterwards.

- ``synthweb``: a factory for synthetic-web server processes (with access logs).
- ``redis_url``: Debian's redis-server, one per session.
- ``mongo_uri``: ``MONGO_URI`` if set, else the nx-27017 MongoDB-protocol server in memory.
- ``zmq_context``: linger 0; a socket left open makes ``term()`` hang, which fails the test.

Under pytest-xdist (``./dev test`` runs workers) the tests in ``ALONE`` run with no other test
beside them: they read the machine's own rates and CPU figures.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from crawlproj.tools.mongo_server import MongoServer, MongoServerError
from crawlproj.tools.runner import stop_process
from crawlproj_testing.synthweb.model import WebSpec
from crawlproj_testing.synthweb.process import SynthWebProcess

ROOT = Path(__file__).resolve().parent.parent

#: Node id prefixes of the tests that run alone under pytest-xdist: the fault drills diagnose a
#: crawl from its rates and CPU figures, which the other workers' tests would change.
ALONE = ("tests/test_observability.py::test_fault_drill_", "tests/test_observability_drills.py::")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns a truthy value or ``timeout`` passes (then fail)."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the service may not be up yet
            last_exc = exc
        # not a synchronisation sleep: the poll interval of a deadline-bound wait
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last error: {last_exc!r}")


def machine_python(venv: Path, *paths: Path) -> Path:
    """A Python like a scrapyd machine's: this venv's packages (the dependencies), not crawlproj.

    A path line in a .pth file puts the test venv's site-packages on sys.path without running its
    .pth files, so the editable install of crawlproj and crawlproj_testing is not visible: only an
    egg can provide crawlproj. ``paths`` go on sys.path the same way.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    lines = [sysconfig.get_paths()["purelib"], *map(str, paths)]
    Path(site, "crawlproj-deps.pth").write_text("\n".join(lines) + "\n")
    return python


@contextmanager
def _turn(alone: bool) -> Iterator[None]:
    """Under pytest-xdist: a shared lock for a test, an exclusive one for a test that runs alone.

    Whoever waits for the lock holds the gate first, so a test waiting to run alone keeps new
    tests from starting until the running ones are done.
    """
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None:
        yield
        return
    base = Path(tempfile.gettempdir()) / f"crawlproj-tests-{run}"
    with open(f"{base}.gate", "a") as gate, open(f"{base}.lock", "a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(gate, fcntl.LOCK_UN)
        yield  # closing the files releases both


def _runs_alone(item: pytest.Item) -> bool:
    return item.nodeid.startswith(ALONE)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests that run alone go last: under pytest-xdist's ``load`` distribution the others
    share the workers first, and the machine is drained for the lone ones once, not per test."""
    items.sort(key=_runs_alone)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    with _turn(_runs_alone(item)):
        yield


@pytest.fixture
def synthweb(tmp_path: Path) -> Iterator[Callable[..., SynthWebProcess]]:
    started: list[SynthWebProcess] = []

    def start(spec: WebSpec = WebSpec(), **kwargs: Any) -> SynthWebProcess:
        log = tmp_path / f"access-{len(started)}.log"
        proc = SynthWebProcess(spec, access_log=log, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(binary):
        pytest.fail("redis-server is not installed (the README test command installs it)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        wait_until(client.ping, 20, "redis-server to answer PING")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        stop_process(proc, 10)


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    try:
        server = MongoServer()
    except MongoServerError as exc:
        pytest.fail(str(exc))
    with server:
        yield server.uri


@pytest.fixture
def zmq_context() -> Iterator[Any]:
    import zmq

    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    yield ctx
    done = threading.Event()

    def term() -> None:
        ctx.term()
        done.set()

    threading.Thread(target=term, daemon=True).start()
    if not done.wait(5):
        pytest.fail("ZeroMQ context did not terminate within 5 s: a socket was left open")
