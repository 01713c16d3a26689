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
