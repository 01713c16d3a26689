"""The viewer process: one SUB socket on the daemon, one web page for any number of browsers.

aiohttp serves the page (``/``, ``/static/...``), a JSON snapshot (``/api/state``) and a
WebSocket (``/ws``) per browser. The SUB socket runs as a task of the same event loop and
keeps only the newest status and volume (:class:`ViewState`); each browser has its own
sender that wakes up when something changed and sends the newest state, so a slow browser
skips pictures instead of holding up the others, and nothing ever waits on the daemon.

WebSocket messages to the page: JSON text ``{"type": "hello" | "status", ...}`` and binary
``image`` messages (:mod:`.wire`) with the central slices and, when asked for, one more
slice. From the page: ``{"type": "slice", "axis": "z", "index": 12}`` or
``{"type": "slice", "axis": null}`` (no extra slice).

Re-tuning (``POST /api/set`` with ``{"cor_px": 6.5}``, ``{"filter": "hann"}``, ``{"delta_beta": 400}``
or ``{"phase": "paganin, ap**8"}``): the viewer, started with the daemon's
control address, forwards the request as ``{"cmd": "set", "params": ...}`` and answers with
the daemon's reply. Only the keys of :data:`RETUNE_KEYS` pass: the page is an operator's
view, not a second control socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from aiohttp import WSMsgType, web

from holostream import __version__
from holostream.service.clients.control import NoAnswer
from holostream.service.clients.control import request as control_request
from holostream.service.clients.subscriber import MessageError, decode
from holostream.service.daemon.curve import connect_as_client
from holostream.service.view.state import AXES, ViewState, cut, scan_key
from holostream.service.view.wire import dumps, pack
from holostream.shared.settings import FILTERS

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"

#: Messages the SUB socket queues: few, since only the newest one is shown.
RCVHWM = 4
#: What the page may re-tune through ``/api/set``: the centre (unbinned detector pixels), the FBP
#: filter, δ/β and the phase chain (text, checked by the daemon).
RETUNE_KEYS = ("cor_px", "filter", "delta_beta", "phase")
#: Longest chain text passed on (a page is not a way to send the daemon megabytes).
_MAX_CHAIN_CHARS = 200
#: Seconds the viewer waits for the daemon's answer to a re-tuning request.
CONTROL_TIMEOUT_S = 5.0


@dataclass(eq=False)  # identity: each browser is one entry of a set
class Client:
    """One browser: its WebSocket, what it was last sent and the extra slice it asked for."""

    ws: web.WebSocketResponse
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sent_status: int = -1
    sent_picture: int = -1
    axis: str | None = None
    index: int = 0


class Viewer:
    """The SUB socket task and the browsers' WebSockets around one :class:`ViewState`."""

    def __init__(self, publish: str, volumes: bool = True, control: str | None = None,
                 curve: tuple[str, str] | None = None):
        self.publish = publish
        self.control = control
        self.curve = curve  # (client secret key file, server public key file) for a daemon with CURVE
        self.volumes = volumes
        self.state = ViewState()
        self.status_version = 0
        self.clients: set[Client] = set()
        self.context = zmq.asyncio.Context()

    # ---- the daemon's side -------------------------------------------------------------
    async def feed(self) -> None:
        """Receive published messages forever; keep the newest and wake every browser."""
        sock = self.context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, RCVHWM)
        for topic in (b"status", b"volume" if self.volumes else b"preview"):
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        if self.curve is not None:
            connect_as_client(sock, *self.curve)
        sock.connect(self.publish)
        try:
            while True:
                frames = await sock.recv_multipart()
                try:
                    topic, header, arrays = decode(frames)
                    changed = self.state.take(topic, header, arrays)
                except (MessageError, ValueError, KeyError, IndexError) as exc:
                    log.warning("published message skipped: %s", exc)
                    continue
                if changed:
                    if topic == "status":
                        self.status_version += 1
                    for client in self.clients:
                        client.wake.set()
        finally:
            sock.close(linger=0)

    # ---- the browsers' side ------------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        """The first message to a page: what this viewer is connected to."""
        return {"type": "hello", "publish": self.publish, "volumes": self.volumes,
                "control": self.control, "retune": list(RETUNE_KEYS) if self.control else [],
                "holostream_version": __version__, "axes": list(AXES)}

    def status_message(self, now: float) -> dict[str, Any]:
        """The newest status with its age (seconds since the daemon sent it, by our clock)."""
        status = self.state.status or {}
        sent = float(status.get("timestamp", self.state.status_received))
        return {"type": "status", "status": status, "age_s": max(0.0, now - sent)}

    def image_message(self, client: Client, now: float) -> bytes:
        """The newest picture as a binary message: three central cuts and the client's slice."""
        picture = self.state.picture
        header = picture.header
        entries = [{"name": axis, "axis": axis, "index": int(i)} for axis, i in zip(AXES, picture.indices)]
        arrays = list(picture.cuts)
        if client.axis is not None and picture.volume is not None:
            extra, index = cut(picture.volume, client.axis, client.index)
            entries.append({"name": "chosen", "axis": client.axis, "index": index})
            arrays.append(extra)
        meta = {"type": "image", "scan_key": scan_key(header), "header": header,
                "scale": list(self.state.scale()), "shape": list(picture.shape),
                "version": picture.version, "has_volume": picture.volume is not None,
                "age_s": max(0.0, now - float(header.get("timestamp", picture.received))),
                "arrays": entries}
        return pack(meta, arrays)

    async def _send_loop(self, client: Client) -> None:
        """Send this browser what changed, whenever woken; newest state only."""
        await client.ws.send_str(dumps(self.hello()))
        client.wake.set()
        while True:
            await client.wake.wait()
            client.wake.clear()
            now = time.time()
            if self.state.status is not None and client.sent_status != self.status_version:
                client.sent_status = self.status_version
                await client.ws.send_str(dumps(self.status_message(now)))
            picture = self.state.picture
            if picture is not None and client.sent_picture != picture.version:
                client.sent_picture = picture.version
                await client.ws.send_bytes(self.image_message(client, now))

    def _request(self, client: Client, text: str) -> None:
        """Take one request of a page (the extra slice it wants)."""
        try:
            request = json.loads(text)
            if request.get("type") != "slice":
                raise ValueError(f"unknown request type {request.get('type')!r}")
            axis = request.get("axis")
            if axis is not None and axis not in AXES:
                raise ValueError(f"axis {axis!r} is not one of {', '.join(AXES)}")
            client.axis, client.index = axis, int(request.get("index", 0))
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("page request ignored: %s", exc)
            return
        client.sent_picture = -1  # resend the picture with the new slice
        client.wake.set()

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        """``/ws``: one browser, until it goes away."""
        ws = web.WebSocketResponse(heartbeat=20.0)
        await ws.prepare(request)
        client = Client(ws)
        self.clients.add(client)
        sender = asyncio.create_task(self._send_loop(client))
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self._request(client, message.data)
        finally:
            self.clients.discard(client)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
        return ws

    async def api_set(self, request: web.Request) -> web.Response:
        """``POST /api/set``: forward a re-tuning to the daemon's control socket; its reply.

        400 for a request the viewer refuses, 503 without a control address or without an
        answer, else 200 with the daemon's reply (``ok`` false when the daemon refused).
        """
        if not self.control:
            return _json({"ok": False, "error": "this viewer was started without --control"}, 503)
        try:
            params = retune_params(await request.json())
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            return _json({"ok": False, "error": str(exc)}, 400)
        message = {"cmd": "set", "params": params}
        loop = asyncio.get_running_loop()
        try:  # a blocking REQ round trip, off the event loop: the pictures keep flowing
            reply = await loop.run_in_executor(None, partial(control_request, self.control, message, CONTROL_TIMEOUT_S, curve=self.curve))
        except NoAnswer as exc:
            return _json({"ok": False, "error": str(exc)}, 503)
        log.info("re-tuning %s: %s", params, "ok" if reply.get("ok") else reply.get("error"))
        return _json(reply, 200)

    async def api_state(self, request: web.Request) -> web.Response:
        """``/api/state``: the newest status and volume header as JSON (for scripts)."""
        picture = self.state.picture
        body = {**self.hello(), "type": "state", "messages": self.state.messages,
                "browsers": len(self.clients),
                "status": self.status_message(time.time()) if self.state.status else None,
                "volume": picture.header if picture else None,
                "scale": list(self.state.scale()) if picture else None}
        return web.Response(text=dumps(body), content_type="application/json")


def retune_params(body: Any) -> dict[str, Any]:
    """The parameters of a ``/api/set`` body: :data:`RETUNE_KEYS` only, each checked.

    Raises
    ------
    ValueError
        Not a JSON object, an unknown key, a ``cor_px`` or ``delta_beta`` that is not a finite
        number, a ``filter`` that is not one of :data:`holostream.shared.settings.FILTERS`, a
        ``phase`` that is not a short text (the daemon parses it).
    """
    if not isinstance(body, dict) or not body:
        raise ValueError(f"expected a JSON object with one of {', '.join(RETUNE_KEYS)}")
    unknown = sorted(set(body) - set(RETUNE_KEYS))
    if unknown:
        raise ValueError(f"cannot re-tune {', '.join(unknown)} from the viewer (only {', '.join(RETUNE_KEYS)})")
    params: dict[str, Any] = {}
    if "filter" in body:
        if body["filter"] not in FILTERS:
            raise ValueError(f"filter must be one of {', '.join(FILTERS)}, not {body['filter']!r}")
        params["filter"] = body["filter"]
    for key in ("cor_px", "delta_beta"):
        if key in body:
            value = body[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{key} must be a finite number, not {value!r}")
            params[key] = float(value)
    if "phase" in body:
        if not isinstance(body["phase"], str) or not 0 < len(body["phase"]) <= _MAX_CHAIN_CHARS:
            raise ValueError(f"phase must be a chain text of 1 to {_MAX_CHAIN_CHARS} characters")
        params["phase"] = body["phase"]
    return params


def _json(body: dict[str, Any], status: int) -> web.Response:
    return web.Response(text=dumps(body), status=status, content_type="application/json")


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


def make_app(viewer: Viewer) -> web.Application:
    """The aiohttp application of ``viewer``; the SUB task starts and stops with it."""
    app = web.Application()
    app.router.add_get("/", _index)
    app.router.add_get("/ws", viewer.websocket)
    app.router.add_get("/api/state", viewer.api_state)
    app.router.add_post("/api/set", viewer.api_set)
    app.router.add_static("/static/", STATIC)

    async def feed_task(app: web.Application):
        task = asyncio.create_task(viewer.feed())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        viewer.context.term()

    async def close_browsers(app: web.Application) -> None:
        for client in list(viewer.clients):
            await client.ws.close(code=1001, message=b"viewer stopping")

    app.cleanup_ctx.append(feed_task)
    app.on_shutdown.append(close_browsers)
    return app


async def serve(viewer: Viewer, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM; print the page's address once it is listening."""
    runner = web.AppRunner(make_app(viewer), handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        for address in runner.addresses:
            print(f"holostream view: http://{address[0]}:{address[1]}/ shows {viewer.publish}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
