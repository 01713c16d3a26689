"""Live throughput of a multi-distance scan against the same scan at one distance.

A real daemon (``holostream serve`` child process, loopback ports, pool mode on the CPU)
reconstructs the files ``holostream simulate --distances N`` writes: once only the
reference distance (``stream_scan`` of ``scan_1.nx``: a single-distance scan), once all N
distances (``stream_distances``), with the same settings (CTF, binning 1 unless asked).
The figure is angles per second from the first message sent to the final volume on a
SUB socket (every frame in, every group reconstructed, the final volume assembled and
published). Beside it, in the same run, the offline reconstruction of the same N files
(``reconstruct_distances``, one process): live against offline on the same machine.

Run: ``python -m holostream.service.bench.livedistances --json benchmarks/cpu-live-distances.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from holostream.service.bench.serving import cpu_name, free_address, serving, subscribed


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m holostream.service.bench.livedistances",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=96, help="detector frame side (default 96)")
    parser.add_argument("--angles", type=int, default=120, help="angles (default 120)")
    parser.add_argument("--distances", type=int, default=4, help="distances (default 4)")
    parser.add_argument("--phase", default="ctf", help="phase retrieval (default ctf)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="best of N scans per figure, after a warm-up (default 3)")
    parser.add_argument("--json", metavar="FILE", help="write the figures here")
    return parser.parse_args(argv)


def _final_after(sub, scan_id: str, start: float, timeout_s: float) -> tuple[float, dict]:
    """Seconds from ``start`` until the final volume of ``scan_id`` arrived, and its header."""
    from holostream.service.clients.subscriber import decode

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not sub.poll(500):
            continue
        topic, header, _ = decode(sub.recv_multipart())
        if topic == "volume" and header.get("scan_id") == scan_id and header["final"]:
            return time.monotonic() - start, header
    raise RuntimeError(f"no final volume of {scan_id} within {timeout_s:.0f} s")


def measure(args: argparse.Namespace, scans, ingest: str, publish: str) -> dict:
    """Best-of-``repeat`` seconds per scan, one distance and all of them."""
    import threading

    from holostream.service.clients.detector import stream_scan
    from holostream.service.clients.distances import stream_distances

    sub = subscribed(publish)
    overrides = {"phase": args.phase, "publish_interval_s": 2.0}
    n = len(scans)
    shifts = [[0.0, 0.0]] * n  # the "given" case: what the files' stage offsets are does not matter here
    figures = {}
    for label, send in (("1", lambda sid: stream_scan(ingest, scans[0], sid, reconstruction=overrides)),
                        (str(n), lambda sid: stream_distances(ingest, scans, sid, reconstruction=overrides)),
                        (f"{n}_offsets_given", lambda sid: stream_distances(ingest, scans, sid, reconstruction=overrides,
                                                                            shifts_px=shifts))):
        seconds = []
        for r in range(-1, args.repeat):  # -1: a warm-up scan (imports, FFT plans), not counted
            scan_id = f"live_{label}d_{r}"
            start = time.monotonic()
            sender = threading.Thread(target=send, args=(scan_id,), daemon=True)
            sender.start()
            elapsed, header = _final_after(sub, scan_id, start, 600)
            sender.join(30)
            assert header["n_projections_used"] == args.angles, header
            if r >= 0:
                seconds.append(elapsed)
        figures[label] = {"seconds": [round(s, 3) for s in seconds], "best_s": round(min(seconds), 3),
                          "angles_per_s": round(args.angles / min(seconds), 2)}
    sub.close()
    return figures


def offline_seconds(args: argparse.Namespace, scans) -> float:
    """Seconds of ``reconstruct_distances`` of the same files, one process (best of ``repeat``)."""
    from holostream.service.offline_distances import reconstruct_distances
    from holostream.shared.settings import ReconstructionSettings
    from holostream.workers.backend import get_backend

    best = np.inf
    for _ in range(args.repeat):
        start = time.perf_counter()
        reconstruct_distances(scans, ReconstructionSettings(phase=args.phase), scans[0].delta_beta,
                              scans[0].cor_px or 0.0, get_backend("cpu"))
        best = min(best, time.perf_counter() - start)
    return round(float(best), 3)


def per_angle_ms(args: argparse.Namespace, scans, angles: int = 20) -> dict:
    """Milliseconds per angle of each stage in one process (CPU, 1 thread), 1 and N distances.

    The live figures are end to end; this says where a worker's time goes.
    """
    from holostream.service.offline_distances import make_pipeline
    from holostream.workers import fbp
    from holostream.workers.backend import get_backend
    from holostream.workers.flatfield import average_frames
    from holostream.workers.phasing import default_chain
    from holostream.workers.pipeline import ProjectionPipeline
    from holostream.shared.settings import ReconstructionSettings

    backend = get_backend("cpu", threads=1)
    settings = ReconstructionSettings(phase=args.phase)
    ref = scans[0]
    single = ProjectionPipeline(ref.frame_shape, average_frames(ref.darks, backend), average_frames(ref.flats, backend),
                                binning=1, chain=default_chain(args.phase, settings.iterations, ref.delta_beta),
                                filter=settings.filter, energy_kev=ref.energy_kev, distance_m=ref.distance_m,
                                pixel_size_m=ref.pixel_size_m, delta_beta=ref.delta_beta, backend=backend,
                                pad_mode=settings.pad_mode)
    multi = make_pipeline(scans, settings, ref.delta_beta, backend)
    n = ref.frame_shape[1]
    volume = np.zeros((ref.frame_shape[0], n, n), np.float32)
    stages = {"1": {"transmission": [], "phase_filter": [], "backprojection": []},
              str(len(scans)): {"transmission": [], "phase_filter": [], "backprojection": []}}
    for a in range(1, angles + 1):  # angle 0 once more at the end: the first call sets up FFT plans
        a %= angles
        for label, pipeline, raw in (("1", single, ref.projections[a:a + 1]),
                                     (str(len(scans)), multi, [s.projections[a:a + 1] for s in scans])):
            t0 = time.perf_counter()
            transmission = pipeline.transmission(raw, [a]) if label == "1" else pipeline.transmission(raw)
            t1 = time.perf_counter()
            filtered = pipeline.filtered_from_transmission(transmission[None])
            filtered = [filtered[0]] if label == "1" else [f[0] for f in filtered]  # δ (and β)
            t2 = time.perf_counter()
            for f in filtered:
                fbp.backproject(volume, f[None], np.array([0.1 * a]), np.array([0.01]), 0.0, backend)
            t3 = time.perf_counter()
            for stage, t in zip(stages[label], (t1 - t0, t2 - t1, t3 - t2)):
                stages[label][stage].append(t)
    return {label: {stage: round(1e3 * float(np.median(t)), 2) for stage, t in per.items()}
            for label, per in stages.items()}


def main(argv: list[str] | None = None) -> int:
    from holostream.service.files.nxtomo import read_scan

    args = _args(argv)
    folder = Path(tempfile.mkdtemp(prefix="holostream-livedist-"))
    subprocess.run([sys.executable, "-m", "holostream.service.cli", "simulate", "-o", str(folder / "s.nx"),
                    "--distances", str(args.distances), "--size", str(args.size), "--projections",
                    str(args.angles), "--seed", "1"], check=True, capture_output=True)
    scans = [read_scan(str(folder / f"s_{i}.nx")) for i in range(1, args.distances + 1)]
    ingest, publish, control = free_address(), free_address(), free_address()
    log_path = folder / "serve.log"
    try:
        with serving(["--ingest", ingest, "--publish", publish, "--control", control,
                      "--workers", str(args.workers)], log_path, control):
            figures = measure(args, scans, ingest, publish)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    offsets = [float(s) for s in re.findall(r"offsets measured on \d+ groups in ([0-9.]+) s", log_path.read_text())]
    offline = offline_seconds(args, scans)
    stages = per_angle_ms(args, scans)
    n = str(args.distances)
    result = {
        "benchmark": "live multi-distance throughput: angles/s, first message → final volume on a subscriber",
        "workload": {"size": args.size, "angles": args.angles, "distances": args.distances, "phase": args.phase,
                     "binning": 1, "workers": args.workers, "mode": "pool", "order": "angle",
                     "darks_flats_per_distance": [len(scans[0].darks), len(scans[0].flats)]},
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "load_average_1min_at_end": round(os.getloadavg()[0], 2)},
        "command": "python -m holostream.service.bench.livedistances " + " ".join(argv or sys.argv[1:]),
        "live": figures,
        "cost_ratio_per_angle": round(figures["1"]["angles_per_s"] / figures[n]["angles_per_s"], 2),
        "cost_ratio_per_angle_offsets_given": round(
            figures["1"]["angles_per_s"] / figures[f"{n}_offsets_given"]["angles_per_s"], 2),
        "offset_measurement_in_ingest_s": offsets,
        "per_angle_ms_one_process": stages,
        "offline_same_files_s": offline,
        "offline_angles_per_s": round(args.angles / offline, 2),
        "live_over_offline": round((args.angles / figures[n]["best_s"]) / (args.angles / offline), 2),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
