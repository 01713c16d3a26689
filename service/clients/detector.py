"""A detector stand-in: play a scan into an ingest socket over PUSH (PROTOCOL.md, "Ingest messages").

Sends ``scan_start``, the darks, the flats, the projections (each with its ``angle_deg``) and
``scan_end``, optionally paced at a frame rate. The scan comes from an NXtomo file
(:class:`~holostream.service.files.nxtomo.ScanData`) or from the simulator.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from holostream.service.daemon.curve import connect_as_client

from holostream.shared.messages import (
    DTYPES,
    ScanInfo,
    encode_frame,
    encode_scan_end,
    encode_scan_start,
)

log = logging.getLogger(__name__)


SEND_TIMEOUT_S = 30.0  # longest wait for a receiver (or for back-pressure to ease)


@dataclass(frozen=True)
class StreamResult:
    """What one :func:`stream_scan` sent and how fast."""

    frames: int
    bytes: int
    seconds: float

    @property
    def frames_per_s(self) -> float:
        """Frames (darks, flats, projections) per second."""
        return self.frames / self.seconds if self.seconds > 0 else float("inf")

    @property
    def gb_per_s(self) -> float:
        """Payload gigabytes (1e9 bytes) per second."""
        return self.bytes / 1e9 / self.seconds if self.seconds > 0 else float("inf")


def _wire_dtype(a: np.ndarray) -> np.ndarray:
    """Frames in a protocol dtype: uint16/uint32/float32 as they are, anything else as float32."""
    if any(np.dtype(a.dtype) == np.dtype(d) for d in DTYPES):
        return a
    log.info("sending %s frames as float32", a.dtype)
    return a.astype(np.float32)


def scan_info_of(scan_data, scan_id: str, delta_beta: float | None = None,
                 reconstruction: dict[str, Any] | None = None) -> ScanInfo:
    """The ``scan_start`` announcement of a :class:`~holostream.service.files.nxtomo.ScanData`.

    Raises
    ------
    ValueError
        When δ/β is neither given nor known from the scan.
    """
    delta_beta = delta_beta if delta_beta is not None else scan_data.delta_beta
    if delta_beta is None:
        raise ValueError("delta_beta is unknown for this scan: pass --delta-beta")
    projections = _wire_dtype(scan_data.projections[:1])
    return ScanInfo(
        scan_id=scan_id, shape=tuple(int(n) for n in scan_data.projections.shape[1:]),
        dtype=np.dtype(projections.dtype).name, n_darks=len(scan_data.darks),
        n_flats=len(scan_data.flats), n_projections=len(scan_data.projections),
        energy_kev=float(scan_data.energy_kev), distance_m=float(scan_data.distance_m),
        pixel_size_m=float(scan_data.pixel_size_m), delta_beta=float(delta_beta),
        angles_deg=tuple(float(a) for a in scan_data.angles_deg),
        cor_px=None if scan_data.cor_px is None else float(scan_data.cor_px),  # None: estimate
        reconstruction=dict(reconstruction or {}))


class _Sender:
    """A PUSH socket that waits at most ``timeout_s`` for each message to be accepted."""

    def __init__(self, address: str, bind: bool, sndhwm: int, timeout_s: float,
                 curve: tuple[str, str] | None = None):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        if curve is not None:
            connect_as_client(self.sock, *curve)
        self.sock.setsockopt(zmq.SNDHWM, sndhwm)
        self.sock.setsockopt(zmq.LINGER, int(timeout_s * 1000))  # deliver what is queued at close
        if bind:
            self.sock.bind(address)
        else:
            self.sock.connect(address)
        self.timeout_s = timeout_s

    def send(self, parts: list[Any]) -> None:
        if not self.sock.poll(int(self.timeout_s * 1000), zmq.POLLOUT):
            raise TimeoutError(f"no receiver took a message for {self.timeout_s:.0f} s")
        self.sock.send_multipart(parts, copy=False)

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def stream_scan(socket_address: str, scan_data, scan_id: str, fps: float | None = None, *,
                bind: bool = False, delta_beta: float | None = None,
                reconstruction: dict[str, Any] | None = None, sndhwm: int = 8,
                timeout_s: float = SEND_TIMEOUT_S, extra: dict[int, list[list[Any]]] | None = None,
                curve: tuple[str, str] | None = None) -> StreamResult:
    """Send one whole scan to an ingest socket as a detector would.

    Parameters
    ----------
    socket_address : str
        ZeroMQ address, e.g. ``"tcp://127.0.0.1:5550"``.
    scan_data : ScanData
        ``darks``, ``flats``, ``projections`` ``(n, rows, cols)``, ``angles_deg``,
        ``energy_kev``, ``distance_m``, ``pixel_size_m``, ``cor_px``, ``delta_beta``.
    scan_id : str
    fps : float, optional
        Projections per second to pace the sending at (darks and flats are not paced).
    bind : bool
        Bind the PUSH socket (the service then connects) instead of connecting.
    delta_beta : float, optional
        δ/β to announce when the scan does not know it.
    reconstruction : dict, optional
        Per-scan overrides of the server's settings (``scan_start.reconstruction``).
    sndhwm : int
        Send high-water mark (messages queued before sending blocks).
    timeout_s : float
        Longest wait for the receiver to take one message.
    extra : dict of int to list of message parts, optional
        Messages sent verbatim just before the projection of that index (``-1``: right after
        ``scan_start``); for testing how the service handles malformed input.
    curve : (client_secret_file, server_public_file), optional
        Connect with CURVE (the daemon's ``[security]``; docs/security.md).

    Returns
    -------
    StreamResult
        Frames and payload bytes sent, and the seconds from ``scan_start`` to ``scan_end``.

    Raises
    ------
    TimeoutError
        When nothing receives for ``timeout_s``.
    """
    info = scan_info_of(scan_data, scan_id, delta_beta, reconstruction)
    extra = extra or {}
    sender = _Sender(socket_address, bind, sndhwm, timeout_s, curve)
    frames = nbytes = 0
    try:
        sender.send(encode_scan_start(info))
        start = time.monotonic()
        for message in extra.get(-1, []):
            sender.send(message)
        for kind, stack in (("dark", scan_data.darks), ("flat", scan_data.flats)):
            for index, image in enumerate(stack):
                parts = encode_frame(scan_id, kind, index, _wire_dtype(image))
                sender.send(parts)
                frames, nbytes = frames + 1, nbytes + parts[1].nbytes
        paced_from = time.monotonic()
        for index, (image, angle) in enumerate(zip(scan_data.projections, scan_data.angles_deg)):
            for message in extra.get(index, []):
                sender.send(message)
            if fps:
                # wait for this frame's deadline, not a fixed pause: rates stay exact
                delay = paced_from + index / fps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            parts = encode_frame(scan_id, "projection", index, _wire_dtype(image), angle_deg=float(angle))
            sender.send(parts)
            frames, nbytes = frames + 1, nbytes + parts[1].nbytes
        sender.send(encode_scan_end(scan_id))
    finally:
        sender.close()  # returns once the queued messages are delivered (linger)
    return StreamResult(frames, nbytes, time.monotonic() - start)


_SIM_PIXEL_SIZE_M = 1.0e-6


def simulated_phantom(size: int, seed: int = 0):
    """The random phantom behind :func:`simulated_scan_data` (δ/β = 200 everywhere)."""
    from holostream.workers.phantom import random_phantom

    return random_phantom(seed, radius_m=0.35 * size * _SIM_PIXEL_SIZE_M,
                          height_m=0.6 * size * _SIM_PIXEL_SIZE_M, n_objects=6)


def simulated_scan_data(size: int, n_projections: int, n_darks: int = 5, n_flats: int = 5,
                        seed: int = 0):
    """A small simulated scan of :func:`simulated_phantom`, as ScanData.

    ``size`` × ``size`` frames of 1 µm pixels, 5 cm at 17.5 keV, angles evenly over 180°.
    """
    from holostream.service.files.nxtomo import scan_data_from_simulation
    from holostream.workers.simulate import simulate_scan

    scan = simulate_scan(simulated_phantom(size, seed), n_projections=n_projections, rows=size, cols=size,
                         pixel_size_m=_SIM_PIXEL_SIZE_M, n_darks=n_darks, n_flats=n_flats, seed=seed)
    return scan_data_from_simulation(scan)


def simulated_truth(size: int, binning: int = 1, seed: int = 0) -> np.ndarray:
    """Ground truth δ of :func:`simulated_scan_data` on the grid of a reconstruction with ``binning``.

    Returns
    -------
    ndarray of shape (size // binning, size // binning, size // binning), float32
        ``[z, y, x]``, as the service publishes volumes.
    """
    n = size // binning
    # binned row k averages detector rows k·b … k·b + b - 1 (as in simulate_scan)
    z0_m = ((binning - 1) / 2 - (size - 1) / 2) * _SIM_PIXEL_SIZE_M
    return simulated_phantom(size, seed).voxelize(n, n, _SIM_PIXEL_SIZE_M * binning, z0_m)
