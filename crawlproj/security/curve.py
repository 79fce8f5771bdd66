"""CURVE (CurveZMQ) authentication and encryption of the dispatcher <-> node links.

    crawlproj keys keys/ node1 node2 monitor      # once; again later to add clients

writes (existing keys are never overwritten)::

    keys/dispatcher.key              the dispatcher's public key: every client's server key
    keys/dispatcher.key_secret       the dispatcher's key pair: ``--curve-secret-key``
    keys/authorized/<name>.key       allowed clients' public keys: ``--curve-authorized-dir``
    keys/clients/<name>.key_secret   one client's key pair: a node's DISPATCHER_CURVE_SECRET_KEY_FILE

The files are ZeroMQ certificates (``zmq.auth.create_certificates``). The dispatcher makes its
ROUTER a CURVE server and runs a ZAP handler (``zmq.auth.thread.ThreadAuthenticator``) that admits
exactly the public keys found in the authorized directory (read at start and on SIGHUP): a peer
without CURVE, or with a key not listed, fails the handshake and never gets a message through.
Clients (nodes, monitors) load their key pair and the dispatcher's public key with
:class:`ClientKeys` and apply them to their DEALER before it connects.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

logger = logging.getLogger(__name__)

SERVER_NAME = "dispatcher"
AUTHORIZED_DIR = "authorized"
CLIENTS_DIR = "clients"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
Z85_KEY_LENGTH = 40  # a 32-byte Curve25519 key in Z85
#: Environment of monitors (``DispatcherProcess.status``, ``crawlproj status``) on a CURVE crawl.
ENV_SECRET_KEY_FILE = "CRAWLPROJ_CURVE_SECRET_KEY_FILE"
ENV_SERVER_KEY_FILE = "CRAWLPROJ_CURVE_SERVER_KEY_FILE"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class CurveKeyError(ValueError):
    """A key file that is missing, unreadable or holds no valid key."""


def _valid_key(key: bytes | None) -> bool:
    if key is None or len(key) != Z85_KEY_LENGTH:
        return False
    try:
        z85.decode(key)
    except (ValueError, KeyError, IndexError):
        return False
    return True


def read_certificate(path: str | os.PathLike[str], secret: bool) -> tuple[bytes, bytes | None]:
    """(public key, secret key or None) of a ZeroMQ certificate file; CurveKeyError otherwise."""
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError, UnicodeError) as exc:
        raise CurveKeyError(f"cannot read a CURVE key from {str(path)!r}: {exc}") from exc
    if not _valid_key(public):
        raise CurveKeyError(f"{str(path)!r} holds no valid CURVE public key")
    if secret and not _valid_key(secret_key):
        raise CurveKeyError(f"{str(path)!r} holds no CURVE secret key (a *{SECRET_SUFFIX} file is needed)")
    return public, secret_key


@dataclass(frozen=True)
class ClientKeys:
    """A client's key pair and the dispatcher's public key."""

    public: bytes
    secret: bytes = field(repr=False)
    server: bytes

    @classmethod
    def load(cls, secret_file: str | os.PathLike[str], server_key_file: str | os.PathLike[str]) -> ClientKeys:
        public, secret = read_certificate(secret_file, secret=True)
        server, _ = read_certificate(server_key_file, secret=False)
        assert secret is not None
        return cls(public, secret, server)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClientKeys | None:
        """Keys named by CRAWLPROJ_CURVE_SECRET_KEY_FILE and _SERVER_KEY_FILE; None if unset."""
        env = os.environ if env is None else env
        secret_file, server_file = env.get(ENV_SECRET_KEY_FILE, ""), env.get(ENV_SERVER_KEY_FILE, "")
        if not secret_file and not server_file:
            return None
        if not secret_file or not server_file:
            raise CurveKeyError(f"{ENV_SECRET_KEY_FILE} and {ENV_SERVER_KEY_FILE} go together")
        return cls.load(secret_file, server_file)

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE client of the dispatcher; call it before ``connect``."""
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server)


def read_authorized(directory: str | os.PathLike[str]) -> dict[bytes, str]:
    """{public key: file name} of every ``*.key`` file in ``directory``; CurveKeyError if none."""
    path = Path(directory)
    if not path.is_dir():
        raise CurveKeyError(f"{str(path)!r} is not a directory of authorized *{PUBLIC_SUFFIX} files")
    keys: dict[bytes, str] = {}
    for file in sorted(path.glob(f"*{PUBLIC_SUFFIX}")):
        public, _ = read_certificate(file, secret=False)
        keys[public] = file.name
    if not keys:
        raise CurveKeyError(f"no authorized *{PUBLIC_SUFFIX} files in {str(path)!r}: no client could connect")
    return keys


class KeyRing:
    """The ZAP credentials provider: admits the authorized public keys and counts the verdicts.

    ``callback`` runs in the authenticator's thread; the reactor thread swaps the key set on
    reload (one attribute assignment) and reads the counters.
    """

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        self.keys = read_authorized(self.directory)
        self.allowed = 0
        self.denied = 0
        self._lock = threading.Lock()

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.keys
        with self._lock:
            if ok:
                self.allowed += 1
            else:
                self.denied += 1
        if not ok:
            logger.warning("CURVE: refused a client with an unknown public key %s", key.decode("ascii", "replace"))
        return ok

    def reload(self) -> int:
        """Read the directory again; on error keep the current keys. Returns the key count."""
        try:
            self.keys = read_authorized(self.directory)
        except CurveKeyError as exc:
            logger.error("CURVE: keeping the %d authorized keys: %s", len(self.keys), exc)
        else:
            logger.info("CURVE: %d authorized client keys from %s", len(self.keys), self.directory)
        return len(self.keys)


class CurveServer:
    """Makes a socket a CURVE server admitting only the clients of ``authorized_dir``.

    Create it before the socket binds (the ZAP handler must be listening) and close it before
    the context terminates.
    """

    def __init__(self, ctx: zmq.Context[Any], secret_file: str | os.PathLike[str],
                 authorized_dir: str | os.PathLike[str]):
        public, secret = read_certificate(secret_file, secret=True)
        assert secret is not None
        self.public, self.secret = public, secret
        self.ring = KeyRing(authorized_dir)
        self.auth = ThreadAuthenticator(ctx, log=logging.getLogger("crawlproj.security.zap"))
        self.auth.start()
        self.auth.configure_curve_callback(domain="*", credentials_provider=self.ring)

    def secure(self, sock: zmq.Socket[Any]) -> None:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)

    def reload(self) -> int:
        return self.ring.reload()

    def summary(self) -> dict[str, Any]:
        return {"curve": True, "authorized_keys": len(self.ring.keys),
                "handshakes_allowed": self.ring.allowed, "handshakes_denied": self.ring.denied}

    def close(self) -> None:
        self.auth.stop()


# -- crawlproj keys --------------------------------------------------------------------------------


def _private(path: Path) -> None:
    path.chmod(0o600)


def generate(directory: str | os.PathLike[str], clients: list[str],
             server_name: str = SERVER_NAME) -> list[tuple[Path, str]]:
    """Create the server key pair (if missing) and one key pair per client (if missing).

    Returns (path, "created" | "exists") of every key file concerned.
    """
    for name in [server_name, *clients]:
        if not _NAME.match(name):
            raise CurveKeyError(f"key name {name!r}: expected letters, digits, '.', '_' or '-'")
    root = Path(directory)
    authorized, private = root / AUTHORIZED_DIR, root / CLIENTS_DIR
    for d in (root, authorized, private):
        d.mkdir(parents=True, exist_ok=True)
    private.chmod(0o700)
    done: list[tuple[Path, str]] = []
    server_secret = root / f"{server_name}{SECRET_SUFFIX}"
    if server_secret.exists():
        done.append((server_secret, "exists"))
    else:
        public, secret = zmq.auth.create_certificates(root, server_name)
        _private(Path(secret))
        done += [(Path(public), "created"), (Path(secret), "created")]
    for name in clients:
        secret_file = private / f"{name}{SECRET_SUFFIX}"
        if secret_file.exists():
            done.append((secret_file, "exists"))
            continue
        public, secret = zmq.auth.create_certificates(private, name)
        _private(Path(secret))
        target = authorized / f"{name}{PUBLIC_SUFFIX}"
        shutil.move(public, target)
        done += [(target, "created"), (Path(secret), "created")]
    return done


def keys_command(args: argparse.Namespace) -> int:
    """Create CURVE keys: the dispatcher's pair and one pair per named client."""
    try:
        done = generate(args.directory, args.clients, args.server_name)
    except (CurveKeyError, OSError) as exc:
        print(f"crawlproj keys: {exc}", file=sys.stderr)
        return 2
    for path, what in done:
        print(f"{what:8s} {path}")
    root = Path(args.directory)
    print(f"dispatcher: --curve-secret-key {root / (args.server_name + SECRET_SUFFIX)} "
          f"--curve-authorized-dir {root / AUTHORIZED_DIR}  (kill -HUP reloads the directory)")
    print(f"nodes:      DISPATCHER_CURVE_SECRET_KEY_FILE={root / CLIENTS_DIR}/<name>{SECRET_SUFFIX} "
          f"DISPATCHER_CURVE_SERVER_KEY_FILE={root / (args.server_name + PUBLIC_SUFFIX)}")
    print(f"monitors:   {ENV_SECRET_KEY_FILE}=... {ENV_SERVER_KEY_FILE}=... (same files)")
    return 0


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("keys", help=keys_command.__doc__)
    p.add_argument("directory", help="where the keys go (created if missing)")
    p.add_argument("clients", nargs="*", metavar="NAME",
                   help="clients to create a key pair for (nodes, monitors)")
    p.add_argument("--server-name", default=SERVER_NAME, help="name of the dispatcher's key pair")
    p.set_defaults(func=keys_command)
