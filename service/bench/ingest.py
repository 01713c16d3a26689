"""Ingest throughput against a bare pyzmq PUSH/PULL loop, same frames, same run.

A separate sender process pushes ``n`` frames (default 2048×2048 uint16) over loopback TCP,
first to a bare PULL loop that only receives (``recv_multipart(copy=False)``), then to the
real ingest process (validation, one copy into the shared-memory ring, task dispatch). The
worker side is played by a thread that frees each slot as soon as its task arrives, so the
figure is the ingest's own rate, not the reconstruction's. Used by ``holostream bench --ingest``.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time

import numpy as np
import zmq

from holostream.service.config import IngestConfig
from holostream.service.daemon.channels import make_channels, spawn_context
from holostream.service.daemon.ingest import run_ingest
from holostream.shared.messages import (
    ScanInfo,
    encode_frame,
    encode_scan_end,
    encode_scan_start,
)
from holostream.shared.scanbuffers import sweep
from holostream.shared.settings import ReconstructionSettings

SCAN_ID = "ingest_bench"


def _scan(n: int, shape: tuple[int, int]) -> ScanInfo:
    return ScanInfo(SCAN_ID, shape, "uint16", 1, 1, n, 17.5, 0.05, 1e-6, 200.0,
                    angle_start_deg=0.0, angle_step_deg=180.0 / n, reconstruction={"binning": 4})


def _push(address: str, n: int, shape: tuple[int, int], as_scan: bool) -> None:
    """Sender process: ``n`` projection frames (plus scan_start, one dark, one flat, scan_end)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 8)
    sock.connect(address)
    image = np.random.default_rng(0).integers(0, 60000, shape, dtype=np.uint16)
    if as_scan:
        sock.send_multipart(encode_scan_start(_scan(n, shape)))
        for kind in ("dark", "flat"):
            sock.send_multipart(encode_frame(SCAN_ID, kind, 0, image), copy=False)
    for i in range(n):
        sock.send_multipart(encode_frame(SCAN_ID, "projection", i, image, angle_deg=i * 180.0 / n), copy=False)
    if as_scan:
        sock.send_multipart(encode_scan_end(SCAN_ID))
    sock.close(linger=-1)
    ctx.term()


def bare_rate(n: int, shape: tuple[int, int]) -> float:
    """Frames/s of a PULL loop that only receives (timed from the first frame)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    sender = spawn_context().Process(target=_push, args=(f"tcp://127.0.0.1:{port}", n, shape, False))
    sender.start()
    try:
        sock.recv_multipart(copy=False)
        t0 = time.perf_counter()
        for _ in range(n - 1):
            sock.recv_multipart(copy=False)
        return (n - 1) / (time.perf_counter() - t0)
    finally:
        sender.join()
        sock.close(linger=0)
        ctx.term()


def ingest_rate(n: int, shape: tuple[int, int], ring_slots: int = 64, timeout_s: float = 300.0) -> float:
    """Frames/s through the ingest process, from the first dispatched task to scan_complete."""
    address = f"tcp://127.0.0.1:{_free_port()}"
    channels = make_channels()
    prefix = f"holostream_{os.getpid()}_bench"
    config = IngestConfig(address=address, ring_slots=ring_slots, rcvhwm=8)
    ingest = spawn_context().Process(target=run_ingest,
                                     args=(config, ReconstructionSettings(), 1, prefix, channels))
    ingest.start()
    first: list[float] = []
    stop = threading.Event()

    def free_slots() -> None:  # the worker side: give each slot back at once
        while not stop.is_set():
            try:
                task = channels.tasks.get(timeout=0.05)
            except queue.Empty:
                continue
            if not first:
                first.append(time.perf_counter())
            channels.done.put({"type": "done", "scan_seq": task["scan_seq"], "group": task["group"],
                               "slots": task["slots"], "worker": 0, "error": None, "seconds": 0.0})

    helper = threading.Thread(target=free_slots, daemon=True)
    helper.start()
    sender = spawn_context().Process(target=_push, args=(address, n, shape, True))
    sender.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                event = channels.events.get(timeout=1.0)
            except queue.Empty:
                continue
            if event["type"] == "scan_complete":
                return (n - 1) / (time.perf_counter() - first[0])
        raise TimeoutError(f"ingest did not complete {n} frames in {timeout_s} s")
    finally:
        stop.set()
        helper.join()
        channels.stop.set()
        sender.join(30)
        ingest.join(30)
        sweep(prefix)


def _free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def compare(n: int = 200, shape: tuple[int, int] = (2048, 2048), repeat: int = 3) -> dict:
    """Best of ``repeat`` for both loops, alternated so that both see the same machine load."""
    frame_bytes = shape[0] * shape[1] * 2
    bare, ours = [], []
    for _ in range(repeat):
        bare.append(bare_rate(n, shape))
        ours.append(ingest_rate(n, shape))
    best_bare, best_ours = max(bare), max(ours)
    return {"frames": n, "frame_shape": list(shape), "dtype": "uint16",
            "bare_pyzmq_frames_per_s": best_bare, "bare_pyzmq_GB_per_s": best_bare * frame_bytes / 1e9,
            "ingest_frames_per_s": best_ours, "ingest_GB_per_s": best_ours * frame_bytes / 1e9,
            "ratio_ingest_over_bare": best_ours / best_bare,
            "all_runs_frames_per_s": {"bare": bare, "ingest": ours}}
