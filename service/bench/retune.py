"""Re-tuning latency: from ``set {"cor_px": x}`` to the re-centred volume on a subscriber.

A real daemon (``holostream serve`` child process, loopback ports) reconstructs a simulated
scan at ``holostream demo`` size (256² frames, binning 2, 180 projections → 128³). Each time
a live volume arrives with no request pending, a new centre is asked for on the control
socket; the figure is the time from sending that request to the arrival, on a SUB socket, of
the first volume whose header carries ``cor_source: "operator"`` and the asked ``cor_px``.
It includes the wait for the daemon's next publication tick (``publish_interval_s``), the
re-back-projection from the kept sinogram and the transfer.

Run: ``python -m holostream.service.bench.retune --json benchmarks/cpu-retune.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

#: Centres asked for in turn (unbinned px); consecutive ones differ, so each is a change.
CENTRES_PX = (3.0, -3.0, 1.5, -1.5, 4.5, -4.5, 2.0, -2.0, 0.5, -0.5, 3.5, -3.5)


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m holostream.service.bench.retune", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256, help="detector frame side (default 256)")
    parser.add_argument("--projections", type=int, default=180, help="projections (default 180)")
    parser.add_argument("--binning", type=int, default=2, help="pixel binning (default 2)")
    parser.add_argument("--phase", default="ap", help="phase retrieval (default ap, as holostream demo)")
    parser.add_argument("--fps", type=float, default=20.0, help="projections per second (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--publish-interval-s", type=float, default=1.0, help="live volume period (default 1)")
    parser.add_argument("--json", metavar="FILE", help="write the figures here")
    return parser.parse_args(argv)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


def _free_address() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def measure(args: argparse.Namespace, ingest: str, publish: str, control: str) -> dict:
    """Stream one scan and re-centre it at every live volume; the latencies in seconds."""
    from holostream.service.clients.control import request
    from holostream.service.clients.detector import simulated_scan_data, stream_scan
    from holostream.service.clients.subscriber import decode

    scan = simulated_scan_data(args.size, args.projections)
    scan_id = "retune_0001"
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for topic in (b"volume", b"status"):
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(publish)
    if not sub.poll(20_000):
        raise RuntimeError("no status from the daemon within 20 s")
    overrides = {"binning": args.binning, "phase": args.phase, "publish_interval_s": args.publish_interval_s}
    streamer = threading.Thread(target=stream_scan, args=(ingest, scan, scan_id, args.fps),
                                kwargs={"reconstruction": overrides}, daemon=True)
    streamer.start()
    samples, replies, refused = [], [], []
    pending, asked = None, 0
    deadline = time.monotonic() + args.projections / args.fps + 120
    shape = None
    while time.monotonic() < deadline:
        if not sub.poll(1000):
            continue
        topic, header, _ = decode(sub.recv_multipart())
        if topic != "volume" or header.get("scan_id") != scan_id:
            continue
        shape = header["shape"]
        if header["final"]:
            break
        if pending is not None:
            value, sent = pending
            if header.get("cor_source") == "operator" and header["cor_px"] == value:
                samples.append((time.time() - sent, float(header["timestamp"]) - sent,
                                int(header["n_projections_used"])))
                pending = None
            continue
        value = CENTRES_PX[asked % len(CENTRES_PX)]
        asked += 1
        sent = time.time()
        reply = request(control, {"cmd": "set", "params": {"cor_px": value}}, 60.0)
        replies.append(time.time() - sent)
        if not reply.get("ok"):  # the scan was complete meanwhile
            refused.append(reply.get("error"))
            continue
        pending = (value, sent)
    streamer.join(30)
    sub.close()
    latencies = np.array([total for total, _, _ in samples])
    return {"volume_shape": shape, "re_tunes": len(samples), "refused": refused,
            "latency_s": [round(total, 3) for total, _, _ in samples],
            "request_to_published_s": [round(published, 3) for _, published, _ in samples],
            "projections_in_recentred_volume": [n for _, _, n in samples],
            "latency_median_s": round(float(np.median(latencies)), 3) if samples else None,
            "latency_max_s": round(float(latencies.max()), 3) if samples else None,
            "control_reply_median_s": round(float(np.median(replies)), 4) if replies else None}


def isolated_recentre_s(n_groups: int, n: int, repeat: int = 2) -> float:
    """Seconds of the daemon's re-centring back-projection alone (its backend: CPU, 1 thread)."""
    from holostream.service.daemon.centre import recentred_volume
    from holostream.workers.backend import get_backend

    backend = get_backend("cpu", threads=1)
    sinogram = np.random.default_rng(0).standard_normal((n_groups, n, n)).astype(np.float32)
    angles = np.linspace(0, np.pi, n_groups, endpoint=False)
    groups = {g: (float(a), 1.0 / n_groups, 1) for g, a in enumerate(angles)}
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        recentred_volume(sinogram, groups, 1.5, (n, n, n), backend, final=False)
        best = min(best, time.perf_counter() - start)
    return round(float(best), 3)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    from holostream.service.clients.control import NoAnswer, request

    ingest, publish, control = _free_address(), _free_address(), _free_address()
    log = tempfile.NamedTemporaryFile("w", prefix="holostream-retune-", suffix=".log", delete=False)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "holostream.service.cli", "serve", "--ingest", ingest, "--publish", publish,
         "--control", control, "--workers", str(args.workers)],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                request(control, {"cmd": "status"}, 0.5)
                break
            except NoAnswer:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    print(f"the daemon did not start; see {log.name}", file=sys.stderr)
                    return 1
        figures = measure(args, ingest, publish, control)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
    result = {"benchmark": "re-tune centre of rotation → re-centred volume on a subscriber",
              "workload": {"size": args.size, "n_projections": args.projections, "binning": args.binning,
                           "phase": args.phase, "fps": args.fps, "workers": args.workers,
                           "publish_interval_s": args.publish_interval_s},
              "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(),
                          "python": platform.python_version(), "numpy": np.__version__},
              "command": "python -m holostream.service.bench.retune " + " ".join(argv or sys.argv[1:]),
              **figures,
              "recentre_back_projection_alone_s": isolated_recentre_s(args.projections,
                                                                      args.size // args.binning)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if figures["re_tunes"] else 1


if __name__ == "__main__":
    sys.exit(main())
