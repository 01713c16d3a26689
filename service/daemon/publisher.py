"""The PUB socket: volumes, previews and status, as PROTOCOL.md writes them.

Also the two ways a volume is assembled from the workers' partial accumulators in
shared memory: the live one (sum of partials, normalised by the weights so far) and the
final one (the one-shot FBP of exactly the angles that arrived).

A slow or vanished subscriber never blocks the daemon: the socket has a small send
high-water mark, linger 0, and every send is non-blocking; what cannot be queued is
dropped and counted. A PUB socket drops in silence, so this is an XPUB socket with
``XPUB_NODROP``: a send that would overflow some subscriber's queue fails, is counted in
``dropped``, and is sent again in the lossy mode, which delivers it to every subscriber
that has room (the slow one loses it, as PUB would have done).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import zmq

from holostream.service.config import PublishConfig
from holostream.service.daemon.curve import Curve


def central_slices(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three central cuts of ``volume[z, y, x]``: ``(volume[cz], volume[:, cy], volume[:, :, cx])``.

    Returns C-contiguous float32 arrays of shapes ``(ny, nx)``, ``(nz, nx)``, ``(nz, ny)``.
    """
    nz, ny, nx = volume.shape
    return tuple(np.ascontiguousarray(s, dtype=np.float32)
                 for s in (volume[nz // 2], volume[:, ny // 2], volume[:, :, nx // 2]))


class Publisher:
    """The daemon's publishing (XPUB) socket, bound to ``config.address``."""

    def __init__(self, context: zmq.Context, config: PublishConfig, curve: Curve | None = None):
        self.address = config.address
        self.socket = context.socket(zmq.XPUB)
        if curve is not None:  # subscribers must present a listed key
            curve.serve(self.socket)
        self.socket.setsockopt(zmq.SNDHWM, config.sndhwm)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.XPUB_NODROP, 1)
        self.socket.bind(config.address)
        self.sent = 0
        self.dropped = 0

    def _send(self, parts: list) -> bool:
        """Send to every subscriber that has room; False (and counted) when one had none."""
        self._read_subscriptions()
        try:
            self.socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:  # some subscriber's queue is full: it loses this one, the others do not
            self.dropped += 1
            self.socket.setsockopt(zmq.XPUB_NODROP, 0)
            try:
                self.socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:  # lossy sends never wait; nothing more to do
                pass
            finally:
                self.socket.setsockopt(zmq.XPUB_NODROP, 1)
            return False
        self.sent += 1
        return True

    def _read_subscriptions(self) -> None:
        """Take the (un)subscription messages XPUB hands up, so they never pile up."""
        for _ in range(1000):  # bounded: a flood of subscriptions must not stall a send
            try:
                self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    def publish_volume(self, header: dict[str, Any], volume: np.ndarray) -> bool:
        """Send ``[b"volume", header, payload]``; ``volume`` float32 ``(nz, ny, nx)``.

        Returns False when the message was dropped (send queue full).
        """
        volume = np.ascontiguousarray(volume, dtype="<f4")
        if list(volume.shape) != header["shape"]:
            raise ValueError(f"volume shape {volume.shape} disagrees with header {header['shape']}")
        return self._send([b"volume", json.dumps(header).encode(), memoryview(volume).cast("B")])

    def publish_beta(self, header: dict[str, Any], volume: np.ndarray) -> bool:
        """Publish the β volume of a multi-distance scan (topic ``beta``, δ's header, ``quantity: "beta"``)."""
        volume = np.ascontiguousarray(volume, dtype="<f4")
        return self._send([b"beta", json.dumps(header).encode(), memoryview(volume).cast("B")])

    def publish_preview(self, header: dict[str, Any], volume: np.ndarray) -> bool:
        """Send ``[b"preview", header, z-cut, y-cut, x-cut]`` of ``volume[z, y, x]``.

        ``header`` is the volume's header; the preview's says ``type: preview`` and lists
        the three cuts' ``shapes`` and the ``indices`` (cz, cy, cx) where they were taken.
        """
        cuts = central_slices(volume)
        nz, ny, nx = volume.shape
        head = {k: v for k, v in header.items() if k not in ("shape", "type")}
        head.update(type="preview", axes=["z", "y", "x"], indices=[nz // 2, ny // 2, nx // 2],
                    shapes=[list(c.shape) for c in cuts], dtype="float32")
        return self._send([b"preview", json.dumps(head).encode(),
                           *(memoryview(c.astype("<f4", copy=False)).cast("B") for c in cuts)])

    def publish_status(self, status: dict[str, Any]) -> bool:
        """Send ``[b"status", header]`` with ``type: status`` and ``timestamp`` added."""
        head = dict(status, type="status", timestamp=time.time())
        return self._send([b"status", json.dumps(head).encode()])

    def close(self) -> None:
        """Close the socket (pending messages are discarded: linger 0)."""
        self.socket.close(linger=0)


