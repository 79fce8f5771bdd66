"""Run the dispatcher as a child process: the one way tests, benchmarks and runners start it.

    with DispatcherProcess(tmp_path / "store", "--partitions", "64") as d:
        d.endpoint            # "tcp://127.0.0.1:PORT"
        d.status()["frontier"]
        d.kill(); d.restart()  # kill -9, then the same store and port again

    with DispatcherProcess(store, "--http-port", "0") as d:
        d.http_url            # "http://127.0.0.1:PORT" (the line after LISTENING), else ""

It runs with ``--stay`` (status answers after the crawl finished, for the caller to read)
unless ``stay=False``, and in a process group of its own: a Ctrl-C in the terminal reaches the
caller only, which stops the nodes first and the dispatcher last.

    request_state("tcp://host:5570")  # the same status round trip with any running dispatcher
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO, Any

import zmq

from crawlproj.wire.protocol import ProtocolError, decode_from_dispatcher, encode
from crawlproj.tools.runner import stop_process
from crawlproj.security.curve import ClientKeys

from crawlproj.dispatcher.errors import DispatcherError, StartError
from crawlproj.dispatcher.cli import HTTP_PREFIX, LISTENING_PREFIX, REFUSAL_PREFIX

DISPATCHER_MODULE = "crawlproj.dispatcher"
STARTUP_TIMEOUT = 30.0  # seconds for the LISTENING line
STOP_TIMEOUT = 10.0  # seconds a SIGTERM gets before SIGKILL
STATUS_TIMEOUT = 5.0
REBIND_TIMEOUT = 10.0  # a restart on the same port retries this long if the port is still busy
LOG_TAIL_BYTES = 4000


def request_state(endpoint: str, timeout: float = STATUS_TIMEOUT, keys: ClientKeys | None = None,
                  context: zmq.Context[Any] | None = None) -> dict[str, Any]:
    """The dispatcher's "state" map, by one status round trip on a fresh DEALER.

    A CURVE dispatcher is asked with ``keys``, else with those named by
    CRAWLPROJ_CURVE_SECRET_KEY_FILE / CRAWLPROJ_CURVE_SERVER_KEY_FILE (CurveKeyError if they
    cannot be read). No answer, a bad frame or a socket error is a DispatcherError. Without a
    ``context`` one is made for the call and terminated after it.
    """
    ctx: zmq.Context[Any] = zmq.Context() if context is None else context
    try:
        sock = ctx.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTING_ID, f"monitor-{uuid.uuid4().hex[:12]}".encode())
            keys = keys if keys is not None else ClientKeys.from_env()
            if keys is not None:
                keys.apply(sock)
            sock.connect(endpoint)
            sock.send(encode("status"))
            if not sock.poll(int(timeout * 1000), zmq.POLLIN):
                raise DispatcherError(f"no answer to status from the dispatcher at {endpoint} in {timeout:g} s")
            msg = decode_from_dispatcher(sock.recv())
        except (zmq.ZMQError, ProtocolError) as exc:
            raise DispatcherError(f"dispatcher at {endpoint}: {exc}") from exc
        finally:
            sock.close(0)
    finally:
        if context is None:
            ctx.term()
    if msg["t"] != "state":
        raise DispatcherError(f"dispatcher at {endpoint} answered status with {msg['t']}: {msg}")
    state: dict[str, Any] = msg["state"]
    return state


class DispatcherProcess:
    """A running ``python -m crawlproj.dispatcher``; a context manager.

    ``args`` are extra command-line options (``--partitions``, ``--seeds``...). ``module`` is the
    module run with ``-m`` (tests run one of their own that wraps the service). Its log (stderr)
    goes to ``log_path`` (default: ``dispatcher.log`` beside the store directory). With a CURVE
    dispatcher (``--curve-secret-key``), ``status()`` authenticates with ``curve`` keys, else with
    those named by CRAWLPROJ_CURVE_SECRET_KEY_FILE / CRAWLPROJ_CURVE_SERVER_KEY_FILE.
    """

    def __init__(self, store: str | os.PathLike[str], *args: str, port: int = 0,
                 host: str = "127.0.0.1", env: dict[str, str] | None = None,
                 log_path: str | os.PathLike[str] | None = None,
                 startup_timeout: float = STARTUP_TIMEOUT, curve: ClientKeys | None = None,
                 module: str = DISPATCHER_MODULE, stay: bool = True) -> None:
        self.store = Path(store)
        self.module = module
        self.stay = stay
        self.curve = curve  # a CURVE dispatcher's monitor keys (None: CRAWLPROJ_CURVE_* or none)
        self.args = list(args)
        self.host = host
        self.env = env
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else self.store.parent / f"{self.store.name}.log"
        self._ctx: zmq.Context[Any] | None = None
        self._log: IO[bytes] | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.endpoint = ""
        self.http_url = ""
        self._stdout = b""  # read from the pipe, not yet split into lines
        self.port = port
        self.starts = 0
        self._start(port)

    # -- process control ---------------------------------------------------------------------------

    def _start(self, port: int, extra: list[str] | None = None) -> None:
        bind = f"tcp://{self.host}:{port if port else '*'}"
        cmd = [sys.executable, "-m", self.module, "--bind", bind, "--store",
               str(self.store), *(["--stay"] if self.stay else []), *self.args, *(extra or [])]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        env = {**os.environ, **(self.env or {})}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     env=env, stdin=subprocess.DEVNULL, process_group=0)
        self.starts += 1
        self._stdout = b""
        self.endpoint = self._read_endpoint()
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        if any(a == "--http-port" or a.startswith("--http-port=") for a in [*self.args, *(extra or [])]):
            self.http_url = self._read_line(HTTP_PREFIX)

    def _read_endpoint(self) -> str:
        return self._read_line(LISTENING_PREFIX)

    def _read_line(self, prefix: str) -> str:
        """The rest of the next stdout line that starts with ``prefix``.

        Reads the pipe's descriptor itself: two lines written together must not hide in a
        buffered reader's buffer while select() waits for more."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            while b"\n" in self._stdout:
                raw, self._stdout = self._stdout.split(b"\n", 1)
                line = raw.decode("utf-8", "replace")
                if line.startswith(prefix):
                    return line[len(prefix):].strip()
            ready, _, _ = select.select([fd], [], [], deadline - time.monotonic())
            if not ready:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._stdout += chunk
        rc = self.proc.poll()
        if rc is None:
            self.proc.kill()
            rc = self.proc.wait()
        self._close_pipes()
        tail = self.log_tail()
        refusal = [line for line in tail.splitlines() if line.startswith(REFUSAL_PREFIX)]
        if refusal:  # a bad option: the one line the dispatcher printed says it all
            raise StartError(f"dispatcher did not start (exit code {rc}): "
                             f"{refusal[-1][len(REFUSAL_PREFIX):]}")
        raise StartError(f"dispatcher did not start (exit code {rc}); log tail:\n{tail}")

    def log_tail(self, size: int = LOG_TAIL_BYTES) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-size:].decode("utf-8", "replace")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float) -> int | None:
        """Its exit code once it has exited within ``timeout`` seconds, else None."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (clean shutdown: commit, close); SIGKILL if it does not exit in time."""
        assert self.proc is not None
        code = stop_process(self.proc, timeout)
        self._close_pipes()
        return code

    def kill(self) -> None:
        """kill -9: no commit, no goodbye."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._close_pipes()

    def restart(self, *extra: str) -> None:
        """Start again on the same store and port (stopping it first if it still runs)."""
        if self.running():
            self.terminate()
        deadline = time.monotonic() + REBIND_TIMEOUT
        while True:
            try:
                self._start(self.port, list(extra))
                return
            except StartError:
                if time.monotonic() >= deadline or "cannot bind" not in self.log_tail():
                    raise

    def _close_pipes(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- talking to it ------------------------------------------------------------------------------

    def context(self) -> zmq.Context[Any]:
        if self._ctx is None:
            self._ctx = zmq.Context()
            self._ctx.setsockopt(zmq.LINGER, 0)
        return self._ctx

    def status(self, timeout: float = STATUS_TIMEOUT) -> dict[str, Any]:
        """The dispatcher's "state" map (:func:`request_state`), or DispatcherError."""
        return request_state(self.endpoint, timeout, self.curve, self.context())

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()
        self._close_pipes()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def __enter__(self) -> DispatcherProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
