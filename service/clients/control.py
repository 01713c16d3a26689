"""The control socket's client: one JSON request, one JSON reply (PROTOCOL.md, "Control")."""

from __future__ import annotations

import json
from typing import Any

import zmq

from holostream.service.daemon.curve import connect_as_client

DEFAULT_CONTROL = "tcp://127.0.0.1:5570"


class NoAnswer(RuntimeError):
    """The daemon did not reply in time (not running, wrong address, or stuck)."""


def request(address: str, message: dict[str, Any], timeout_s: float = 2.0,
            context: zmq.Context | None = None, curve: tuple[str, str] | None = None) -> dict[str, Any]:
    """Send one control request and return the decoded reply.

    A fresh REQ socket per request: after a timeout a REQ socket cannot send again, and
    with linger 0 closing it never hangs.

    Raises
    ------
    NoAnswer
        No reply within ``timeout_s`` seconds (also: a CURVE key the daemon does not accept).
    """
    context = context or zmq.Context.instance()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        if curve is not None:  # (client_secret_file, server_public_file)
            connect_as_client(sock, *curve)
        sock.connect(address)
        sock.send(json.dumps(message).encode("utf-8"))
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise NoAnswer(f"no answer from the holostream daemon at {address} within {timeout_s:g} s "
                           "(is `holostream serve` running, with this --control address?)")
        return json.loads(sock.recv().decode("utf-8"))
    finally:
        sock.close(linger=0)


# ---- what every command that talks to the control socket shares ---------------------------
def add_control_options(parser) -> None:
    """``--control ADDR``, ``--config FILE`` (its ``[control] address``) and ``--timeout S``."""
    parser.add_argument("--control", metavar="ADDR",
                        help=f"control (REP) address of the daemon (default: [control] address of --config, "
                             f"else {DEFAULT_CONTROL})")
    parser.add_argument("--config", metavar="FILE", help="the daemon's TOML configuration, to find its control address")
    parser.add_argument("--timeout", metavar="S", type=float, default=2.0,
                        help="seconds to wait for an answer (default 2)")
    add_curve_options(parser)


def add_curve_options(parser) -> None:
    """``--curve-key FILE`` and ``--server-key FILE``: every client of the daemon's three sockets."""
    parser.add_argument("--curve-key", metavar="FILE",
                        help="this client's NAME.key_secret, when the daemon requires CURVE (docs/security.md)")
    parser.add_argument("--server-key", metavar="FILE", help="the daemon's public server.key (with --curve-key)")


def curve_of(args) -> tuple[str, str] | None:
    """``(client secret key file, server public key file)`` of the CURVE options, or None.

    Raises
    ------
    ValueError
        ``--curve-key`` without ``--server-key`` (CURVE needs both).
    """
    if getattr(args, "curve_key", None) and not getattr(args, "server_key", None):
        raise ValueError("--curve-key needs --server-key (the daemon's public server.key)")
    return (args.curve_key, args.server_key) if getattr(args, "curve_key", None) else None


def control_address(args) -> str:
    """The address ``add_control_options`` chose: ``--control``, else the TOML's, else the default.

    Raises
    ------
    ValueError
        When ``--config`` cannot be read or is invalid (the message names the key).
    """
    if args.control:
        return args.control
    if args.config:
        from holostream.service.config import ConfigError, load_config
        try:
            bound = load_config(args.config).control.address
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        # a socket bound on every interface is reached on this machine through loopback
        return bound.replace("://*:", "://127.0.0.1:").replace("://0.0.0.0:", "://127.0.0.1:")
    return DEFAULT_CONTROL


def ask(args, command: str, message: dict[str, Any]) -> dict[str, Any] | None:
    """One request for the ``holostream COMMAND`` commands; None after printing why it failed.

    Failures (bad ``--config``, no answer, a refusal) are one line on stderr, naming the command.
    """
    import sys

    from holostream.service.daemon.curve import KeyFileError

    try:
        reply = request(control_address(args), message, args.timeout, curve=curve_of(args))
    except (ValueError, NoAnswer, KeyFileError) as exc:
        print(f"holostream {command}: {exc}", file=sys.stderr)
        return None
    if not reply.get("ok"):
        print(f"holostream {command}: the daemon refused: {reply.get('error')}", file=sys.stderr)
        return None
    return reply
