"""ZeroMQ CURVE on the daemon's sockets: key files, the ZAP authenticator, who may change things.

Keys are made with ``holostream keys`` (``zmq.auth.create_certificates``): ``NAME.key`` holds
the public key, ``NAME.key_secret`` the public and the secret key. The daemon reads its own
pair from ``[security] server_key`` (the ``.key_secret`` file), accepts the clients whose
public ``.key`` files lie in ``[security] client_keys`` (a directory), and lets only the keys
in ``[security] admin_keys`` send the control commands that change things (``set``, ``abort``).

Each process that binds a socket runs its own authenticator thread (ZAP is per context):
ingest in the ingest process, publish and control in the daemon.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)

_TCP_HOST = re.compile(r"^tcp://(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:]+)):")


class KeyFileError(ValueError):
    """A key file or key directory that cannot be used; the message names the path and why."""


def make_key_pair(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write a new CURVE key pair ``NAME.key`` (public) and ``NAME.key_secret`` (mode 0600).

    Refuses to replace an existing pair (a lost secret key locks out its holder).

    Returns
    -------
    (public_file, secret_file) : tuple of Path
    """
    directory = Path(directory)
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
        raise KeyFileError(f"key name {name!r} is not 1-64 letters, digits, '.', '_', '-'")
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise KeyFileError(f"{path} exists; remove it first to make a new key pair")
    directory.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o077)  # the secret file is never readable by others, not even briefly
    try:
        public_made, secret_made = zmq.auth.create_certificates(str(directory), name)
    finally:
        os.umask(old_umask)
    os.chmod(public_made, 0o644)
    return Path(public_made), Path(secret_made)


def load_secret(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys of a ``.key_secret`` file."""
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read the key pair {path}: {exc}") from None
    if secret is None:
        raise KeyFileError(f"{path} holds no secret key (give the .key_secret file)")
    return public, secret


def load_public(path: str | os.PathLike) -> bytes:
    """z85 public key of a ``.key`` (or ``.key_secret``) file."""
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read the public key {path}: {exc}") from None
    return public


def public_keys_in(directory: str | os.PathLike) -> frozenset[bytes]:
    """z85 public keys of every ``*.key`` file in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise KeyFileError(f"key directory {directory} does not exist")
    return frozenset(load_public(path) for path in sorted(directory.glob("*.key")))


def is_loopback(address: str) -> bool:
    """True for ``ipc://``, ``inproc://`` and tcp on 127.0.0.0/8, ::1 or ``localhost``."""
    if not address.startswith("tcp://"):
        return True
    match = _TCP_HOST.match(address)
    host = (match.group("v6") or match.group("host")) if match else ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name or a host name: reachable from elsewhere
        return False


@dataclass(frozen=True)
class Curve:
    """The server side of CURVE for one process: its key pair and the allowed client keys.

    Parameters
    ----------
    public, secret : bytes
        The server's z85 key pair.
    clients_dir : str
        Directory of the allowed clients' ``*.key`` files (read by the authenticator).
    admins : frozenset of bytes
        z85 public keys allowed to send ``set`` and ``abort``.
    """

    public: bytes
    secret: bytes
    clients_dir: str
    admins: frozenset[bytes]

    @classmethod
    def from_files(cls, server_key: str, client_keys: str, admin_keys: str | None) -> "Curve":
        public, secret = load_secret(server_key)
        public_keys_in(client_keys)  # fail at start, with the path, not at the first client
        admins = public_keys_in(admin_keys) if admin_keys else frozenset()
        return cls(public, secret, str(client_keys), admins)

    def start_authenticator(self, context: zmq.Context) -> ThreadAuthenticator:
        """Start the ZAP thread of ``context`` accepting the listed client keys; stop() it at the end."""
        auth = ThreadAuthenticator(context, log=logging.getLogger(f"{__name__}.zap"))
        auth.start()
        auth.configure_curve(domain="*", location=self.clients_dir)
        return auth

    def serve(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE server (call before bind)."""
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True

    def may_change(self, user_id: str | None) -> bool:
        """True when the client key ``user_id`` (z85, ZAP's User-Id) may send set/abort."""
        return user_id is not None and user_id.encode("ascii", "replace") in self.admins


def connect_as_client(socket: zmq.Socket, client_secret_file: str, server_public_file: str) -> None:
    """Make ``socket`` a CURVE client of the server whose public key file is given (before connect)."""
    public, secret = load_secret(client_secret_file)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = load_public(server_public_file)
