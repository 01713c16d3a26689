"""``holostream demo``: the live service, a simulated detector and a subscriber, in one go.

Starts ``holostream serve`` as a child process on free loopback ports, streams a simulated
scan into its ingest socket at a detector-like frame rate, receives the live volumes on a
SUB socket, saves the final volume (HDF5) and its three central slices (PNG), stops the
daemon with SIGTERM and prints the figures: frames/s, volumes published, interval between
live volumes, latency from ``scan_end`` to the final volume, and, since the phantom is
known, the correlation of the final volume with the ground truth.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from holostream.service.bench.serving import stop_process


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``holostream demo``."""
    parser.add_argument("--out", default="demo-output", help="folder for PNG slices, HDF5 and JSON figures")
    parser.add_argument("--size", type=int, default=256, help="detector frame side, pixels (default 256)")
    parser.add_argument("--projections", type=int, default=180, help="projections (default 180)")
    parser.add_argument("--fps", type=float, default=60.0, help="projections per second (default 60)")
    parser.add_argument("--binning", type=int, default=2, help="pixel binning (default 2)")
    parser.add_argument("--phase", default="ap", help="phase retrieval (default ap: Paganin + 10 AP)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--publish-interval-s", type=float, default=1.0, help="live volume period (default 1 s)")
    parser.add_argument("--config", metavar="FILE",
                        help="the daemon's TOML configuration (e.g. [workers] device = \"gpu\"); the demo's "
                             "own addresses and --workers override it")


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _request(address: str, message: dict, timeout_s: float) -> dict | None:
    """One control request; None when nobody answers in time."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        sock.send_json(message)
        return sock.recv_json() if sock.poll(int(timeout_s * 1000)) else None
    finally:
        sock.close()


class _Collector(threading.Thread):
    """SUB client: keeps every volume header with its arrival time, and the final arrays."""

    def __init__(self, address: str, scan_id: str):
        super().__init__(daemon=True)
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        for topic in (b"volume", b"preview", b"status"):
            self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.sock.connect(address)
        self.scan_id = scan_id
        self.headers: list[tuple[float, dict]] = []
        self.final_volume = None
        self.final_preview = None
        self.connected = threading.Event()
        self.finished = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        from holostream.service.clients.subscriber import decode

        try:
            while not self.stop.is_set():
                if not self.sock.poll(100):
                    continue
                topic, header, arrays = decode(self.sock.recv_multipart())
                self.connected.set()
                if header.get("scan_id") != self.scan_id:
                    continue
                if topic == "volume":
                    self.headers.append((time.time(), header))
                    if header["final"]:
                        self.final_volume = (header, arrays[0].copy())
                elif topic == "preview" and self.final_volume is not None:
                    self.final_preview = [a.copy() for a in arrays]
                    self.finished.set()
        finally:
            self.sock.close()


def run(args: argparse.Namespace) -> int:
    """Run the whole demo; 0 when a final volume arrived, 1 otherwise."""
    from holostream.service.clients.detector import simulated_scan_data, stream_scan
    from holostream.service.commands.subscribe import write_png
    from holostream.service.files.volume import save_volume_h5

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ingest, publish, control = _free_address(), _free_address(), _free_address()
    print(f"simulating a scan: {args.projections} projections of {args.size}x{args.size} ...", flush=True)
    scan = simulated_scan_data(args.size, args.projections)
    scan_id = "demo_0001"
    log_path = out / "serve.log"
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "holostream.service.cli", "serve", "--ingest", ingest, "--publish", publish,
             "--control", control, "--workers", str(args.workers),
             *(["--config", args.config] if args.config else [])],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    collector = _Collector(publish, scan_id)
    try:
        deadline = time.monotonic() + 60
        while _request(control, {"cmd": "status"}, 0.5) is None:
            if daemon.poll() is not None or time.monotonic() > deadline:
                print(f"holostream demo: the daemon did not start; see {log_path}", file=sys.stderr)
                return 1
        collector.start()
        if not collector.connected.wait(10):
            print("holostream demo: no status message from the daemon", file=sys.stderr)
            return 1
        print(f"service up (ingest {ingest}, publish {publish}, control {control}); streaming at "
              f"{args.fps:g} frames/s ...", flush=True)
        overrides = {"binning": args.binning, "phase": args.phase,
                     "publish_interval_s": args.publish_interval_s}
        result = stream_scan(ingest, scan, scan_id, args.fps, reconstruction=overrides)
        scan_end_time = time.time()
        if not collector.finished.wait(120):
            print(f"holostream demo: no final volume within 120 s; see {log_path}", file=sys.stderr)
            return 1
        status = _request(control, {"cmd": "status"}, 2.0)
    finally:
        collector.stop.set()
        daemon_code = stop_process(daemon, 20.0)

    header, volume = collector.final_volume
    final_time = next(t for t, h in collector.headers if h["final"])
    live = [t for t, h in collector.headers if not h["final"]]
    intervals = np.diff(live) if len(live) > 1 else np.array([])
    for name, image in zip(("slice_z", "slice_y", "slice_x"), collector.final_preview):
        zoom = max(1, 256 // max(image.shape))  # small demo volumes: enlarge for the eye
        write_png(out / f"{scan_id}_{name}.png", np.kron(image, np.ones((zoom, zoom), np.float32)))
    save_volume_h5(out / f"{scan_id}_final.h5", header, volume)
    figures = {
        "frames_sent": result.frames, "frames_per_s": round(result.frames_per_s, 1),
        "stream_GB_per_s": round(result.gb_per_s, 4),
        "volumes_published": len(collector.headers), "live_volumes": len(live),
        "mean_interval_between_live_volumes_s": round(float(intervals.mean()), 3) if intervals.size else None,
        "latency_scan_end_to_final_volume_s": round(final_time - scan_end_time, 3),
        "final_volume_shape": header["shape"],
        "n_projections_used": header["n_projections_used"],
        "n_projections_expected": header["n_projections_expected"],
        "frames_rejected": (status or {}).get("status", {}).get("frames_rejected"),
        "daemon_exit_code": daemon_code,
    }
    figures.update(_accuracy(args, volume))
    (out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"final slices: {out}/{scan_id}_slice_{{z,y,x}}.png; volume: {out}/{scan_id}_final.h5")
    return 0 if daemon_code == 0 else 1


def _accuracy(args: argparse.Namespace, volume: np.ndarray) -> dict:
    """Correlation of the final volume with the simulated phantom inside the reconstruction cylinder."""
    from holostream.service.clients.detector import simulated_truth

    truth = simulated_truth(args.size, args.binning)
    if truth.shape != volume.shape:
        return {"correlation_with_phantom": None}
    n = volume.shape[-1]
    c = np.arange(n) - (n - 1) / 2
    inside = np.broadcast_to(c[:, None] ** 2 + c[None, :] ** 2 < (0.45 * n) ** 2, volume.shape)
    v, t = volume[inside].astype(np.float64), truth[inside].astype(np.float64)
    corr = float(np.corrcoef(v, t)[0, 1])
    # least-squares slope of volume against truth: the absolute scale, insensitive to the
    # low-frequency background that a sum over the cylinder would pick up
    slope = float((v - v.mean()) @ (t - t.mean()) / ((t - t.mean()) @ (t - t.mean())))
    return {"correlation_with_phantom": round(corr, 4), "scale_ratio_to_phantom": round(slope, 4)}
