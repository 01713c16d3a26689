"""The distributed engine's costs: start-up, overhead per angle-group task, series scaling.

- ``engine_overhead``: a local cluster of worker processes is started, then tasks that
  each carry one binned projection (``side``² float32, the payload of one angle group handed
  to a remote reconstructor) and return its sum are run one at a time and many at once;
  the overhead is the wall time per task minus the sum itself. Dask always; Ray too when it
  is importable (it is not a dependency: the comparison that chose Dask).
- ``series_scaling``: the same series of small scans through ``run_series`` on 1 and on 2
  worker processes; efficiency = t₁ / (2·t₂).
- ``live_bytes``: bytes each design of live multi-GPU reconstruction moves per volume.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np


def _payload_sum(a: np.ndarray) -> float:
    return float(a.sum(dtype=np.float64))


def _dask_overhead(workers: int, side: int, n_tasks: int) -> dict[str, Any]:
    import distributed

    t0 = time.perf_counter()
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None, silence_logs=40)
    client = distributed.Client(cluster)
    client.wait_for_workers(workers)
    start_s = time.perf_counter() - t0
    try:
        payload = np.random.default_rng(0).random((side, side), dtype=np.float32)
        client.submit(_payload_sum, payload, pure=False).result()  # warm: imports, first transfer
        t0 = time.perf_counter()
        for _ in range(n_tasks):
            client.submit(_payload_sum, payload, pure=False).result()
        serial_s = (time.perf_counter() - t0) / n_tasks
        t0 = time.perf_counter()
        client.gather([client.submit(_payload_sum, payload, pure=False) for _ in range(n_tasks)])
        batch_s = (time.perf_counter() - t0) / n_tasks
    finally:
        client.close()
        cluster.close()
    return {"start_s": start_s, "task_round_trip_s": serial_s, "task_throughput_s": batch_s}


def _ray_overhead(workers: int, side: int, n_tasks: int) -> dict[str, Any]:
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    remote_sum = ray.remote(_payload_sum)
    try:
        ray.get(remote_sum.remote(np.zeros(4, np.float32)))  # a worker is up
        start_s = time.perf_counter() - t0
        payload = np.random.default_rng(0).random((side, side), dtype=np.float32)
        ray.get(remote_sum.remote(payload))
        t0 = time.perf_counter()
        for _ in range(n_tasks):
            ray.get(remote_sum.remote(payload))
        serial_s = (time.perf_counter() - t0) / n_tasks
        t0 = time.perf_counter()
        ray.get([remote_sum.remote(payload) for _ in range(n_tasks)])
        batch_s = (time.perf_counter() - t0) / n_tasks
    finally:
        ray.shutdown()
    return {"start_s": start_s, "task_round_trip_s": serial_s, "task_throughput_s": batch_s}


def engine_overhead(workers: int = 2, side: int = 682, n_tasks: int = 100) -> dict[str, Any]:
    """Start-up and per-task costs of Dask (and Ray, if installed) on this machine."""
    payload = np.random.default_rng(0).random((side, side), dtype=np.float32)
    t0 = time.perf_counter()
    for _ in range(n_tasks):
        _payload_sum(payload)
    compute_s = (time.perf_counter() - t0) / n_tasks
    report = {"workers": workers, "payload_bytes": payload.nbytes, "tasks": n_tasks,
              "compute_per_task_s": compute_s, "engines": {"dask": _dask_overhead(workers, side, n_tasks)}}
    try:
        import ray
    except ImportError:
        ray = None
    if getattr(ray, "init", None) is None:  # absent, or only a namespace folder of that name
        report["engines"]["ray"] = "not installed"
    else:
        report["engines"]["ray"] = _ray_overhead(workers, side, n_tasks)
    for row in report["engines"].values():
        if isinstance(row, dict):
            row["overhead_per_task_s"] = row["task_round_trip_s"] - compute_s
    return report


def series_scaling(folder: str | Path, options: dict[str, Any], repeat: int = 1) -> dict[str, Any]:
    """Wall time of one series on 1 and 2 local worker processes; efficiency t₁/(2·t₂)."""
    import tempfile

    from holostream.service.cluster.engine import close, connect
    from holostream.service.cluster.series import find_scans, run_series

    scans = find_scans([str(folder)])
    times = {}
    for workers in (1, 2):
        best = float("inf")
        for _ in range(repeat):
            client = connect(None, workers)
            try:
                client.wait_for_workers(workers)
                with tempfile.TemporaryDirectory() as out:
                    report = run_series(scans, Path(out), options, client)
                if report.failed:
                    raise RuntimeError(f"series failed: {report.failed[0]['error']}")
                best = min(best, report.seconds)
            finally:
                close(client)
        times[workers] = best
    return {"scans": len(scans), "seconds_1_worker": times[1], "seconds_2_workers": times[2],
            "speed_up": times[1] / times[2], "efficiency": times[1] / (2 * times[2])}


def live_bytes(n_projections: int = 833, side: int = 682, gpus: int = 4, volumes_published: int = 1) -> dict:
    """Bytes moved per volume by the two designs of a live scan on ``gpus`` reconstructors.

    *angle split*: each reconstructor gets 1/gpus of the binned projections and keeps a
    whole partial volume; every published volume gathers ``gpus`` partial volumes.
    *slab split*: each reconstructor gets the rows of its slab of every projection and keeps
    its slab of the volume; a published volume gathers one volume's worth of slabs.
    """
    projections = n_projections * side * side * 4
    volume = side ** 3 * 4
    return {"projections_bytes": projections, "volume_bytes": volume, "gpus": gpus,
            "volumes_published": volumes_published,
            "angle_split_bytes": projections + volumes_published * gpus * volume,
            "slab_split_bytes": projections + volumes_published * volume}


def simulated_series(folder: str | Path, n_scans: int = 6, size: int = 64, n_projections: int = 90) -> Path:
    """Write ``n_scans`` small simulated scans (NXtomo, δ/β 200) into ``folder``; returns it."""
    from holostream.service.files.nxtomo import write_scan
    from holostream.workers.phantom import random_phantom
    from holostream.workers.simulate import simulate_scan

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    radius_m = 0.4 * size * 1.0e-6
    for i in range(n_scans):
        phantom = random_phantom(300 + i, radius_m=radius_m, height_m=0.85 * size * 1.0e-6, n_objects=6,
                                 size_range=(0.2, 0.4), materials=((1.0e-6, 5.0e-9),))
        scan = simulate_scan(phantom, seed=i, n_projections=n_projections, rows=size, cols=size,
                             pixel_size_m=1.0e-6, distance_m=0.05, energy_kev=17.5, binning=1,
                             n_darks=3, n_flats=3)
        write_scan(str(folder / f"scan{i:03d}.nx"), scan, delta_beta=200.0)
    return folder


def cluster_report(repeat: int = 1) -> dict[str, Any]:
    """Everything ``holostream bench --cluster`` reports (a temporary series of 6 scans of 64²)."""
    import tempfile

    from holostream.service.cli import build_parser

    argv = ["reconstruct", "scan.nx", "-o", "volume.h5", "--phase", "ap", "--iterations", "10"]
    options = vars(build_parser(argv).parse_args(argv))
    with tempfile.TemporaryDirectory() as folder:
        scaling = series_scaling(simulated_series(folder), options, repeat)
    return {"engine_overhead": engine_overhead(), "series_scaling": {**scaling, "chain": "paganin + ap10"},
            "live_bytes_reference": live_bytes()}
