"""A hostile web for the hardening tests: traps, bombs, odd URLs, SSRF bait.

Run as a process (``python tests/hostile_web.py --log FILE``): serves every host name on
127.0.0.1 (the crawler resolves ``*.test`` there), prints ``HOSTILE LISTENING <port>`` when
ready and appends one JSON line per request to ``--log``: host, path, status. :class:`HostileWeb`
starts and stops it.

Pages (any host unless said otherwise):
    /                index: links to everything below, and to loopback addresses (SSRF bait)
    /big             3 MiB with Content-Length           (> the tests' DOWNLOAD_MAXSIZE)
    /big-stream      3 MiB without Content-Length, streamed until the client hangs up
    /bomb            gzip Content-Encoding: ~32 KiB that inflate to 32 MiB
    /loop/a, /loop/b redirect to each other
    /cal/N           an endless calendar: links to /cal/N+1 and /cal/N-1 (cal.hostile.test)
    /s/SID/          a new session id in every link (sess.hostile.test)
    /long            a link of more than URLLENGTH_LIMIT characters; /long-redirect: a redirect to one
    /rel/...         a relative link "x/" to itself: /rel/x/x/x/...
    /malformed       broken markup, NUL bytes, unclosed tags
    /latin1          ISO-8859-1 bytes declared as UTF-8; /nocharset: the same without a charset
    /odd             links to one URL spelt several ways (case, fragments, query order), IDN, %-escapes
    /robots.txt      404 (allow all)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import select
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from crawlproj.tools.runner import stop_process

LISTENING = "HOSTILE LISTENING "
BIG_BYTES = 3 * 1024 * 1024
BOMB_BYTES = 32 * 1024 * 1024
LONG_URL_CHARS = 3000
STARTUP_TIMEOUT = 20.0

#: Links of /odd that are one URL spelt in several ways (the crawl fetches it once) ...
ODD_SAME = ("HTTP://ODD.Hostile.TEST:{port}/Path?b=2&a=1#frag", "http://odd.hostile.test:{port}/Path?a=1&b=2",
            "http://odd.hostile.test:{port}/Path?a=1&b=2#other")
#: ... and odd but distinct URLs: IDN host, percent-escapes, non-ASCII path and query.
ODD_OTHERS = ("http://bücher.hostile.test:{port}/ä?x=ü", "/percent/%7Euser/a%2Fb/%41",
              "/percent/~user/a%2Fb/A", "/space here/", "#top", "mailto:someone@hostile.test",
              "http://[bad/", "javascript:void(0)")
#: Loopback addresses other than the allowed 127.0.0.1, in several spellings (SSRF bait).
SSRF_BAIT = ("http://127.0.0.2:{port}/", "http://[::1]:{port}/", "http://2130706434:{port}/",
             "http://0x7f000003:{port}/")


def _page(links: list[str], title: str = "page", extra: str = "") -> bytes:
    anchors = "".join(f'<a href="{link}">{i}</a>\n' for i, link in enumerate(links))
    return f"<html><head><title>{title}</title></head><body>{anchors}{extra}</body></html>".encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HostileServer

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].lower()
        try:
            status = self._route(host, self.path)
        except (BrokenPipeError, ConnectionResetError):
            status = -1  # the client hung up (a download cancelled at its max size)
            self.close_connection = True
        self.server.record(host, self.path, status)

    def _send(self, status: int, body: bytes, ctype: str = "text/html", **headers: str) -> int:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)
        return status

    def _route(self, host: str, path: str) -> int:
        port = self.server.server_address[1]
        if path == "/robots.txt":
            return self._send(404, b"none", "text/plain")
        if path == "/":
            links = ["/big", "/big-stream", "/bomb", "/loop/a", f"http://cal.hostile.test:{port}/cal/0",
                     f"http://sess.hostile.test:{port}/s/start/", "/long", "/long-redirect", "/rel/", "/malformed",
                     "/latin1", "/nocharset", "/odd", *(b.format(port=port) for b in SSRF_BAIT)]
            return self._send(200, _page(links, "index"))
        if path == "/big":
            return self._send(200, b"x" * BIG_BYTES)
        if path == "/big-stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Connection", "close")
            self.end_headers()
            chunk = b"y" * 65536
            for _ in range(BIG_BYTES // len(chunk)):
                self.wfile.write(chunk)
            self.close_connection = True
            return 200
        if path == "/bomb":
            return self._send(200, self.server.bomb(), Content_Encoding="gzip")
        if path in ("/loop/a", "/loop/b"):
            target = "/loop/b" if path == "/loop/a" else "/loop/a"
            return self._send(302, b"", Location=target)
        if path.startswith("/cal/"):
            n = int(path.rsplit("/", 1)[1] or 0)
            return self._send(200, _page([f"/cal/{n + 1}", f"/cal/{n - 1}"], f"month {n}"))
        if path.startswith("/s/"):
            sid = hashlib.sha1(path.encode()).hexdigest()[:16]
            return self._send(200, _page([f"/s/{sid}/", "/s/start/"], "session"))
        if path == "/long":
            return self._send(200, _page(["/long-target?q=" + "z" * LONG_URL_CHARS], "long"))
        if path == "/long-redirect":
            return self._send(302, b"", Location="/long-target?r=" + "z" * LONG_URL_CHARS)
        if path.startswith("/rel/"):
            return self._send(200, _page(["x/"], "relative"))
        if path == "/malformed":
            body = (b"<html><title>broken</title><body><a href='/malformed-target'>ok</a>"
                    b"<div><p><a href=\"/unterminated\x00\"<table><tr><td></b></i><a href=/noquotes>x"
                    b"<a href='javascript:alert(1)'>j</a><!-- unclosed comment <a href='/hidden'>")
            return self._send(200, body)
        if path == "/latin1":
            return self._send(200, "<html><title>café crème</title><a href='/malformed-target'>é</a>"
                              .encode("latin-1"), "text/html; charset=utf-8")
        if path == "/nocharset":
            return self._send(200, b"<html><title>\xff\xfe\x00bin</title>\x80\x81\x82</html>", "text/html")
        if path == "/odd":
            links = [u.format(port=port) for u in (*ODD_SAME, *ODD_OTHERS)]
            return self._send(200, _page(links, "odd"))
        return self._send(200, _page([], f"leaf {path[:100]}"))


class HostileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, log_path: str):
        super().__init__((host, 0), Handler)
        self.log_file = open(log_path, "a", encoding="utf-8")
        self.lock = threading.Lock()
        self._bomb: bytes | None = None

    def bomb(self) -> bytes:
        with self.lock:
            if self._bomb is None:
                self._bomb = gzip.compress(b"\0" * BOMB_BYTES, compresslevel=9)
            return self._bomb

    def record(self, host: str, path: str, status: int) -> None:
        with self.lock:
            self.log_file.write(json.dumps({"host": host, "path": path, "status": status}) + "\n")
            self.log_file.flush()


class HostileWeb:
    """The hostile web in a child process; a context manager."""

    def __init__(self, log_path: Path, host: str = "127.0.0.1"):
        self.log_path = log_path
        self.proc = subprocess.Popen([sys.executable, __file__, "--log", str(log_path), "--host", host],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], STARTUP_TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith(LISTENING):
            self.stop()
            raise RuntimeError(f"the hostile web did not start: {line!r}")
        self.port = int(line[len(LISTENING):])

    def requests(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text(encoding="utf-8").splitlines() if line]

    def stop(self) -> None:
        stop_process(self.proc, 10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> HostileWeb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    server = HostileServer(args.host, args.log)
    print(f"{LISTENING}{server.server_address[1]}", flush=True)
    server.serve_forever()  # until SIGTERM


if __name__ == "__main__":
    main()
