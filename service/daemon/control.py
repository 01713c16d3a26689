"""The control socket: one REP socket, JSON request in, JSON reply out.

Requests (PROTOCOL.md): ``{"cmd": "status"}``, ``{"cmd": "config"}``,
``{"cmd": "set", "params": {...}}``, ``{"cmd": "abort"}``, ``{"cmd": "republish"}``.
Every request gets exactly one reply, ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``;
a malformed or unknown request is answered with the reason, never with silence (a REP
socket that does not answer is stuck for good).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

import zmq

from holostream.service.daemon.curve import Curve
from holostream.shared.messages import Limits, ProtocolError, clip, load_json, shown

log = logging.getLogger(__name__)

COMMANDS = ("status", "config", "set", "abort", "republish")
CHANGING = ("set", "abort")  # with CURVE on, only the admin keys may send these
MAX_REQUEST_BYTES = 1 << 20
_REQUEST_LIMITS = Limits(max_header_bytes=MAX_REQUEST_BYTES)

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlError(ValueError):
    """A control request that cannot be carried out; the message is sent back as ``error``."""


def parse_request(frames: list[bytes]) -> dict[str, Any]:
    """Decode one request (a single JSON object with a known ``cmd``).

    Raises
    ------
    ControlError
        With the reason: multipart, too large, not UTF-8 JSON, not an object, unknown cmd.
    """
    if len(frames) != 1:
        raise ControlError(f"expected one JSON part, got {len(frames)} parts")
    raw = frames[0]
    if len(raw) > MAX_REQUEST_BYTES:
        raise ControlError(f"request is {len(raw)} bytes, more than {MAX_REQUEST_BYTES}")
    try:  # bounded like ingest headers: no deep nesting, no 5,000-digit integers
        request = load_json(raw, _REQUEST_LIMITS, "request")
    except ProtocolError as exc:
        raise ControlError(exc.reason) from None
    if not isinstance(request, dict):
        raise ControlError(f"request must be a JSON object, got {type(request).__name__}")
    cmd = request.get("cmd")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise ControlError(f"unknown cmd {shown(cmd)} (known: {', '.join(COMMANDS)})")
    params = request.get("params")
    if cmd == "set" and (not isinstance(params, dict) or not params):
        raise ControlError('"set" needs a non-empty "params" object, e.g. {"binning": 2}')
    return request


class Control:
    """The daemon's REP socket and the dispatch of requests to ``handlers[cmd]``.

    Parameters
    ----------
    context : zmq.Context
    address : str
        Bound address, e.g. ``tcp://127.0.0.1:5570``.
    handlers : dict
        ``cmd -> handler(request) -> reply fields``. A handler raises
        :class:`ControlError` (or ``ValueError``) to refuse a request with its reason.
    curve : Curve, optional
        CURVE server keys (with the ZAP thread already running on ``context``); ``set`` and
        ``abort`` are then refused unless the client's key is one of ``curve.admins``.
    """

    def __init__(self, context: zmq.Context, address: str, handlers: dict[str, Handler],
                 curve: Curve | None = None):
        missing = set(COMMANDS) - set(handlers)
        if missing:
            raise ValueError(f"control handlers missing for {sorted(missing)}")
        self.handlers = handlers
        self.socket = context.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.curve = curve
        if curve is not None:
            curve.serve(self.socket)
        self.socket.bind(address)
        self.address = address
        self.requests = 0
        self.errors = 0

    def reply_for(self, frames: list[bytes], user_id: str | None = None) -> dict[str, Any]:
        """The reply to one request from the client key ``user_id`` (z85), as a dict with ``ok``."""
        try:
            request = parse_request(frames)
            if self.curve is not None and request["cmd"] in CHANGING and not self.curve.may_change(user_id):
                raise ControlError(f"{request['cmd']!r} is allowed only to the admin keys "
                                   f"([security] admin_keys); this client's key is not one")
            reply = self.handlers[request["cmd"]](request)
        except ValueError as exc:  # ControlError, SettingsError and friends: a refusal
            self.errors += 1
            return {"ok": False, "error": clip(str(exc), 640)}
        except Exception as exc:  # noqa: BLE001 - a bug must still be answered, not hang the client
            self.errors += 1
            log.exception("control request failed")
            return {"ok": False, "error": clip(f"internal error: {type(exc).__name__}: {exc}", 640)}
        return {"ok": True, **reply}

    def handle(self) -> None:
        """Receive one pending request (the poller said POLLIN) and send its reply."""
        frames = self.socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
        self.requests += 1
        # with CURVE, the ZAP handler named the client by its public key
        user_id = frames[0].get("User-Id") if self.curve is not None else None
        reply = self.reply_for([f.bytes for f in frames], user_id)
        if not reply["ok"]:
            log.warning("control: %s", reply["error"])
        self.socket.send(json.dumps(reply).encode("utf-8"))

    def close(self) -> None:
        """Close the socket."""
        self.socket.close(linger=0)
