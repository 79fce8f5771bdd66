"""A MongoDB for a local crawl: ``MONGO_URI`` when given, else the pinned nx-27017 on a free port.

    with MongoServer(workdir / "mongo.db") as mongo:   # or MongoServer() for an in-memory one
        mongo.uri            # "mongodb://127.0.0.1:PORT/"
        mongo.count("crawlproj", "pages")

nx-27017 is a MongoDB wire-protocol server on SQLite; ``./dev`` installs it in its own
virtualenv (``.venv-mongo/``, pin ``NX_VERSION`` in ``dev``) so its pins never meet ours. The
demo and the tests start it here, the one place that knows how.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from scrapy.settings import Settings

from crawlproj.addons import SETTINGS_MODULE
from crawlproj.tools.runner import stop_process

ROOT = Path(__file__).resolve().parents[2]  # the checkout (.venv-mongo/ lives there)
BINARY_ENV = "NX27017_BIN"
START_TIMEOUT = 30.0  # seconds for nx-27017 to answer ping
URI_TIMEOUT = 10.0  # seconds for a MONGO_URI to answer
STOP_TIMEOUT = 10.0


class MongoServerError(RuntimeError):
    """No MongoDB to use: nx-27017 is missing or did not start, or MONGO_URI does not answer."""


def nx_binary() -> str:
    """The nx-27017 executable: $NX27017_BIN, the checkout's .venv-mongo/, or one on PATH."""
    for candidate in (os.environ.get(BINARY_ENV), str(ROOT / ".venv-mongo" / "bin" / "nx-27017"),
                      shutil.which("nx-27017")):
        if candidate and os.path.exists(candidate):
            return candidate
    raise MongoServerError(f"nx-27017 not found: set MONGO_URI or {BINARY_ENV} "
                           "(./dev setup and ./dev demo install it in .venv-mongo/)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class MongoServer:
    """``MONGO_URI`` (``uri``, or the environment's) if set, else nx-27017 started on ``db``
    (a SQLite file; None: in memory). A context manager; ``close()`` stops what it started."""

    def __init__(self, db: str | os.PathLike[str] | None = None, uri: str | None = None,
                 log_path: str | os.PathLike[str] | None = None, timeout: float | None = None):
        import pymongo

        self.proc: subprocess.Popen[bytes] | None = None
        self.db = str(db) if db is not None else "memory"
        self.uri = uri if uri is not None else os.environ.get("MONGO_URI", "")
        self.port = 0
        self._rundir: tempfile.TemporaryDirectory[str] | None = None
        if not self.uri:
            self.port = _free_port()
            # nx-27017 writes its pid file and log where told and deletes the pid file at exit:
            # never a shared path (its defaults are in /tmp), never a device such as /dev/null
            self._rundir = tempfile.TemporaryDirectory(prefix="nx-27017-")
            log = str(log_path) if log_path else os.path.join(self._rundir.name, "nx-27017.log")
            pid_file = os.path.join(self._rundir.name, "nx-27017.pid")
            # its own process group: a Ctrl-C in the terminal stops the crawl first, then this
            self.proc = subprocess.Popen(
                [nx_binary(), "--db", self.db, "--host", "127.0.0.1", "-p", str(self.port),
                 "--log-file", log, "--pid-file", pid_file],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                process_group=0)
            self.uri = f"mongodb://127.0.0.1:{self.port}/"
        self.client: Any = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=500)
        try:
            self._wait(timeout or (START_TIMEOUT if self.proc is not None else URI_TIMEOUT))
        except BaseException:
            self.close()
            raise

    @property
    def embedded(self) -> bool:
        """nx-27017 started here (not a MONGO_URI of the user's)."""
        return self.proc is not None

    def _wait(self, timeout: float) -> None:
        import pymongo.errors

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise MongoServerError(f"nx-27017 exited at start (exit code {self.proc.returncode})")
            try:
                self.client.admin.command("ping")
                return
            except pymongo.errors.PyMongoError as exc:  # not listening yet
                last = exc
            time.sleep(0.05)  # the poll interval of a deadline-bound wait
        reason = str(last).split(" (configured timeouts", 1)[0].split(", Timeout:", 1)[0]
        raise MongoServerError(f"no MongoDB answered at {self.uri} in {timeout:g} s: {reason}")

    def count(self, database: str, collection: str) -> int:
        return int(self.client[database][collection].count_documents({}))

    def close(self) -> None:
        self.client.close()
        if self.proc is not None:
            stop_process(self.proc, STOP_TIMEOUT)
        if self._rundir is not None:
            self._rundir.cleanup()

    def __enter__(self) -> MongoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def mongo_names(settings: dict[str, Any]) -> tuple[str, str]:
    """MONGO_DATABASE and MONGO_COLLECTION of the nodes (the project's unless overridden)."""
    project = Settings()
    project.setmodule(SETTINGS_MODULE)
    project.update({k: v for k, v in settings.items() if k.startswith("MONGO_")})
    return project.get("MONGO_DATABASE"), project.get("MONGO_COLLECTION")


def mongo_query(mongo: MongoServer, database: str, collection: str) -> list[str]:
    """Command lines a user can paste to look at the items (the embedded server served again)."""
    uri = mongo.uri
    lines = []
    if mongo.embedded:
        uri = "mongodb://127.0.0.1:27017/"
        lines.append(f"{nx_binary()} --db {mongo.db} -p 27017 &   # serve the demo's data again")
    lines.append(f"{sys.executable} -c \"import pymongo; c = pymongo.MongoClient('{uri}')"
                 f"['{database}']['{collection}']; print(c.count_documents({{}}), "
                 f"c.find_one({{}}, {{'_id': 0, 'url': 1, 'status': 1, 'title': 1}}))\"")
    return lines
