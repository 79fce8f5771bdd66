"""nx-27017 (a MongoDB wire-protocol server) keeping its data in a directory, on a fixed port, so
that a test or a benchmark can stop it (an outage) and start it again with its data."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from crawlproj.tools.mongo_server import nx_binary
from crawlproj.tools.runner import stop_process

START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NxServer:
    """``start()``, ``stop()``, ``start()`` again: same port, same data."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.uri = f"mongodb://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        import pymongo

        self.starts += 1
        log = self.workdir / f"nx-{self.starts}.log"
        self.proc = subprocess.Popen(
            [nx_binary(), "--data-dir", str(self.workdir / "data"), "--host", "127.0.0.1", "-p", str(self.port),
             "--log-file", str(log), "--pid-file", str(self.workdir / "nx.pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=300)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                try:
                    client.admin.command("ping")
                    return
                except pymongo.errors.PyMongoError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise RuntimeError(f"nx-27017 did not answer on port {self.port} (see {log})") from None
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 15)  # its SIGTERM handler can hang (then SIGKILL); data is committed
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
