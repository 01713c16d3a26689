"""Re-tuning latency: from ``set {"cor_px": x}`` / ``set {"filter": w}`` to the new volume on a subscriber.

A real daemon (``holostream serve`` child process, loopback ports) reconstructs a simulated
scan at ``holostream demo`` size (256² frames, binning 2, 180 projections → 128³). As soon as
a volume arrives with no request pending, the next change is asked for on the control
socket, a centre and a filter in turn; the figure is the time from sending that request to
the arrival, on a SUB socket, of the first volume whose header says it was made with the
asked value. During the scan that is a live volume of the scan being reconstructed; after
its end, the completed scan's final volume republished from the kept sinogram. It includes
the daemon's re-tune thread (``service/daemon/retune.py``: the back-projection of every
arrived projection, re-filtered when the filter changed) and the transfer. The control
replies are timed too: they must not wait for a back-projection.

Run: ``python -m holostream.service.bench.retune --json benchmarks/cpu-retune.json`` (or
``holostream bench --retune [pool|split] --json FILE``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from holostream.service.bench.serving import cpu_name, free_address, serving, subscribed

#: Centres asked for in turn (unbinned px); consecutive ones differ, so each is a change.
CENTRES_PX = (3.0, -3.0, 1.5, -1.5, 4.5, -4.5, 2.0, -2.0, 0.5, -0.5, 3.5, -3.5)
#: Filters asked in turn, between the centres (the scan's own is ram-lak: all re-tunable).
FILTERS_IN_TURN = ("hann", "shepp-logan", "cosine", "ram-lak")
#: δ/β asked in turn (phase retrieval again from the transmissions both modes keep).
DELTA_BETAS = (100.0, 400.0, 150.0, 300.0)


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m holostream.service.bench.retune", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256, help="detector frame side (default 256)")
    parser.add_argument("--projections", type=int, default=180, help="projections (default 180)")
    parser.add_argument("--binning", type=int, default=2, help="pixel binning (default 2)")
    parser.add_argument("--phase", default="ap", help="phase retrieval (default ap, as holostream demo)")
    parser.add_argument("--fps", type=float, default=20.0, help="projections per second (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--publish-interval-s", type=float, default=1.0, help="live volume period (default 1)")
    parser.add_argument("--mode", choices=("pool", "split"), default="pool",
                        help="[workers] mode of the daemon (both keep transmissions: δ/β is timed too)")
    parser.add_argument("--kept-retunes", type=int, default=8,
                        help="re-tunes of the completed scan's final volume (default 8)")
    parser.add_argument("--json", metavar="FILE", help="write the figures here")
    return parser.parse_args(argv)


def _asks():
    """``(key, value)`` pairs asked in turn: a centre, a filter, a δ/β, ...

    Consecutive values of each key differ, also where the lists start again: each is a change.
    """
    i = 0
    while True:
        yield "cor_px", CENTRES_PX[i % len(CENTRES_PX)]
        yield "filter", FILTERS_IN_TURN[i % len(FILTERS_IN_TURN)]
        yield "delta_beta", DELTA_BETAS[i % len(DELTA_BETAS)]
        i += 1


def _made_with(header: dict, key: str, value) -> bool:
    """True when a volume header says it was made with ``key = value`` by the operator."""
    if key == "cor_px":
        return header.get("cor_source") == "operator" and header["cor_px"] == value
    return header.get(key) == value


def _summary(samples: list[tuple[str, float, float, int]]) -> dict:
    """Latencies per re-tuned key: all of them, median and max (seconds)."""
    out = {}
    for key in ("cor_px", "filter", "delta_beta"):
        total = np.array([t for k, t, _, _ in samples if k == key])
        if key == "delta_beta" and not total.size:
            continue
        out[key] = {"latency_s": [round(float(t), 3) for t in total],
                    "request_to_published_s": [round(p, 3) for k, _, p, _ in samples if k == key],
                    "projections": [n for k, _, _, n in samples if k == key],
                    "median_s": round(float(np.median(total)), 3) if total.size else None,
                    "max_s": round(float(total.max()), 3) if total.size else None}
    return out


def measure(args: argparse.Namespace, ingest: str, publish: str, control: str) -> dict:
    """Stream one scan, re-tune it at every live volume, then re-tune its kept final volume.

    Returns the latencies in seconds: live (the scan being reconstructed) and kept (the
    completed scan's final volume, republished), per key, and the control replies.
    """
    from holostream.service.clients.control import request
    from holostream.service.clients.detector import simulated_scan_data, stream_scan
    from holostream.service.clients.subscriber import decode

    scan = simulated_scan_data(args.size, args.projections)
    scan_id = "retune_0001"
    sub = subscribed(publish)
    overrides = {"binning": args.binning, "phase": args.phase, "publish_interval_s": args.publish_interval_s}
    streamer = threading.Thread(target=stream_scan, args=(ingest, scan, scan_id, args.fps),
                                kwargs={"reconstruction": overrides}, daemon=True)
    streamer.start()
    live, kept, replies, refused = [], [], [], []
    pending, asks = None, _asks()
    deadline = time.monotonic() + args.projections / args.fps + 120
    shape, final_seq = None, None
    while time.monotonic() < deadline:
        if not sub.poll(1000):
            continue
        topic, header, _ = decode(sub.recv_multipart())
        if topic != "volume" or header.get("scan_id") != scan_id:
            continue
        shape = header["shape"]
        if pending is not None:
            key, value, sent = pending
            if not _made_with(header, key, value):
                if not header["final"]:
                    continue
            else:
                (kept if final_seq is not None else live).append(
                    (key, time.time() - sent, float(header["timestamp"]) - sent,
                     int(header["n_projections_used"])))
                pending = None
        if header["final"] and final_seq is None:
            final_seq = header["seq"]  # from now on: re-tunes of the kept scan
            streamer.join(30)
        if final_seq is not None and len(kept) >= args.kept_retunes:
            break
        for key, value in asks:  # the next change, asked as soon as the previous one arrived
            sent = time.time()
            reply = request(control, {"cmd": "set", "params": {key: value}}, 60.0)
            replies.append(time.time() - sent)
            if reply.get("ok") and not reply.get("not_retuned"):
                pending = (key, value, sent)
                break
            refused.append(reply.get("error") or reply.get("not_retuned"))
            if len(refused) > 3:
                raise RuntimeError(f"the daemon refuses re-tunes: {refused}")
    sub.close()
    return {"volume_shape": shape, "refused": refused,
            "live": _summary(live), "kept": _summary(kept),
            "control_reply_s": [round(r, 4) for r in replies],
            "control_reply_median_s": round(float(np.median(replies)), 4) if replies else None,
            "control_reply_max_s": round(float(np.max(replies)), 4) if replies else None}


def isolated_recentre_s(n_groups: int, n: int, repeat: int = 2) -> float:
    """Seconds of the re-tune thread's back-projection alone (its backend: CPU, every core)."""
    from holostream.service.daemon.centre import recentred_volume
    from holostream.workers.backend import get_backend

    backend = get_backend("cpu", threads=len(os.sched_getaffinity(0)))
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
    ingest, publish, control = free_address(), free_address(), free_address()
    log = Path(tempfile.mkdtemp(prefix="holostream-retune-")) / "serve.log"
    config = log.with_suffix(".toml")
    config.write_text(f'[workers]\nmode = "{args.mode}"\ndevice = "cpu"\n')
    try:
        with serving(["--config", str(config), "--ingest", ingest, "--publish", publish, "--control", control,
                      "--workers", str(args.workers)], log, control):
            figures = measure(args, ingest, publish, control)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    result = {"benchmark": "re-tune centre of rotation / FBP filter / δ/β → re-tuned volume on a subscriber",
              "workload": {"size": args.size, "n_projections": args.projections, "binning": args.binning,
                           "phase": args.phase, "fps": args.fps, "workers": args.workers, "mode": args.mode,
                           "publish_interval_s": args.publish_interval_s},
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                          "python": platform.python_version(), "numpy": np.__version__},
              "command": "python -m holostream.service.bench.retune " + " ".join(argv or sys.argv[1:]),
              **figures,
              "recentre_back_projection_alone_s": isolated_recentre_s(args.projections,
                                                                      args.size // args.binning)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if figures["live"]["cor_px"]["latency_s"] and figures["kept"]["cor_px"]["latency_s"] else 1


if __name__ == "__main__":
    sys.exit(main())
