"""The reconstruction chain benchmark: projections per second of each stage and of the whole chain.

Every figure is a best-of-``--repeat`` wall time, with device synchronisation, on synthetic
but physically sized data (a phantom's Fresnel intensity, raw uint16 frames with darks and
flats). Peers (nabu's CPU Paganin, astra-toolbox's CPU FBP) run on the same arrays in the
same process, and the report gives the ratios. The JSON printed (or written with ``--json``)
is what BENCHMARKS.md quotes.
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass

import numpy as np

#: Presets: binned projection side, projections per volume, pixel/angle binning, iterations.
PRESETS = {
    "demo": {"size": 128, "n_projections": 180, "binning": 2, "angle_binning": 1, "iterations": 10},
    "id16b": {"size": 682, "n_projections": 833, "binning": 3, "angle_binning": 3, "iterations": 10},
}
ENERGY_KEV, DISTANCE_M, PIXEL_SIZE_M, DELTA_BETA = 17.5, 0.05, 1.0e-6, 200.0


@dataclass
class Timing:
    """Best wall time of a stage over some projections."""

    seconds: float
    projections: int

    @property
    def per_second(self) -> float:
        return self.projections / self.seconds


def best_time(fn, repeat: int, sync=lambda: None) -> float:
    """Best wall time of ``fn()`` (seconds) over ``repeat`` runs after one warm-up."""
    fn()
    sync()
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def synthetic_intensity(size: int, n: int, seed: int = 0) -> np.ndarray:
    """Near-field intensities of random spheres, float32 of shape (n, size, size)."""
    from holostream.workers.backend import get_backend
    from holostream.workers.fresnel import FresnelPropagator
    from holostream.workers.physics import delta_px_to_phase

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    thickness = np.zeros((size, size), np.float32)
    for _ in range(12):
        cy, cx = rng.uniform(0.25, 0.75, 2) * size
        r = rng.uniform(0.03, 0.12) * size
        thickness += 2 * np.sqrt(np.clip(r * r - (yy - cy) ** 2 - (xx - cx) ** 2, 0, None))
    delta_px = 1e-6 * thickness * 0.05
    phase = delta_px_to_phase(delta_px, ENERGY_KEV, PIXEL_SIZE_M)
    wave = np.exp((1j + 1.0 / DELTA_BETA) * phase).astype(np.complex64)
    prop = FresnelPropagator((size, size), PIXEL_SIZE_M, DISTANCE_M, ENERGY_KEV, get_backend("cpu"))
    one = np.abs(prop.forward(wave)) ** 2
    noise = rng.normal(1.0, 0.01, (n, size, size)).astype(np.float32)
    return (one[None] * noise).astype(np.float32)


def stage_timings(backend, preset: dict, batch: int, iterations: int, repeat: int) -> dict:
    """Time each stage of the chain on ``batch`` projections at the preset's size."""
    from holostream.workers import fbp
    from holostream.workers.flatfield import FlatField
    from holostream.workers.phasing import PhaseRetrieval, default_chain

    xp, size, b = backend.xp, preset["size"], preset["binning"]
    sync = backend.synchronize
    geometry = dict(pixel_size_m=PIXEL_SIZE_M * b, distance_m=DISTANCE_M, energy_kev=ENERGY_KEV,
                    delta_beta=DELTA_BETA, backend=backend)
    out: dict[str, dict] = {}

    raw_side = size * b
    rng = np.random.default_rng(1)
    raw = backend.asarray(rng.integers(900, 1100, (batch, raw_side, raw_side), dtype=np.uint16))
    dark = backend.asarray(np.full((raw_side, raw_side), 100, np.float32))
    flat = backend.asarray(np.full((raw_side, raw_side), 1000, np.float32))
    flatfield = FlatField(dark, flat, backend)
    t = best_time(lambda: flatfield.binned(raw, b), repeat, sync)
    out["flatfield+binning"] = _row(Timing(t, batch), raw_bytes=raw.nbytes)

    intensity = backend.asarray(synthetic_intensity(size, batch))
    for name, chain in (("paganin", default_chain("paganin", 0, DELTA_BETA)),
                        (f"paganin+ap{iterations}", default_chain("ap", iterations, DELTA_BETA))):
        retrieval = PhaseRetrieval(chain, (size, size), **geometry)
        out[name] = _row(Timing(best_time(lambda: retrieval(intensity), repeat, sync), batch))

    ramp = fbp.RampFilter(size, backend, window="ram-lak")
    out["ramp filter"] = _row(Timing(best_time(lambda: ramp(intensity), repeat, sync), batch))

    filtered = ramp(intensity)
    angles = np.linspace(0, np.pi, batch, endpoint=False)
    weights = fbp.angle_weights(angles)
    volume = xp.zeros((size, size, size), xp.float32)
    t = best_time(lambda: fbp.backproject(volume, filtered, angles, weights, 0.0, backend), repeat, sync)
    out["back-projection"] = _row(Timing(t, batch))
    out.update(whole_scan_timings(backend, size, min(math.ceil(preset["n_projections"]
                                                               / preset["angle_binning"]), 720), repeat))
    return out


#: Detector rows the whole-scan stages are timed on (their cost is linear in the rows).
_ROWS_TIMED = 16


def whole_scan_timings(backend, size: int, n_angles: int, repeat: int) -> dict:
    """Stages that work on a whole scan at once: the sorting ring filter, the centre estimate.

    The ring filter is timed on ``_ROWS_TIMED`` rows of ``n_angles`` projections and scaled to
    ``size`` rows (its cost is linear in the rows), so its row reads as seconds per projection
    of the preset; the centre estimate is once per scan (at most ~100 projections, 128 rows).
    """
    from holostream.workers.cor import estimate_cor
    from holostream.workers.ring import remove_stripes

    rng = np.random.default_rng(2)
    rows = min(_ROWS_TIMED, size)
    stack = backend.asarray(rng.normal(0, 1, (n_angles, rows, size)).astype(np.float32))
    t = best_time(lambda: remove_stripes("sorting", stack, backend), repeat, backend.synchronize)
    out = {"ring filter (sorting)": {**_row(Timing(t * size / rows, n_angles)),
                                     "note": f"timed on {rows} rows, scaled to {size}"}}
    host = backend.to_host(stack)[:, :, :]
    angles = np.linspace(0.0, 360.0, n_angles, endpoint=False)
    t = best_time(lambda: estimate_cor(host, angles), repeat)
    out["centre estimate"] = {"seconds_per_scan": t * min(size, 128) / rows, "angles": n_angles,
                              "note": f"360° pairs, timed on {rows} rows, scaled to {min(size, 128)}"}
    return out


def _row(timing: Timing, raw_bytes: int | None = None) -> dict:
    row = {"seconds": timing.seconds, "projections": timing.projections,
           "projections_per_s": timing.per_second}
    if raw_bytes is not None:
        row["raw_GB_per_s"] = raw_bytes / timing.seconds / 1e9
    return row


def peer_comparison(size: int, n_angles: int, repeat: int) -> dict:
    """Our Paganin vs nabu's and our FBP vs astra's CPU FBP, same arrays, same process."""
    from holostream.workers import fbp
    from holostream.workers.backend import get_backend
    from holostream.workers.phasing import PhaseRetrieval, default_chain

    backend = get_backend("cpu")
    report: dict[str, dict] = {}
    intensity = synthetic_intensity(size, 8)
    ours = PhaseRetrieval(default_chain("paganin", 0, DELTA_BETA), (size, size), pixel_size_m=PIXEL_SIZE_M,
                          distance_m=DISTANCE_M, energy_kev=ENERGY_KEV, delta_beta=DELTA_BETA, backend=backend)
    t_ours = best_time(lambda: ours(intensity), repeat)
    try:
        from nabu.preproc.phase import PaganinPhaseRetrieval
    except ImportError as exc:
        report["paganin_vs_nabu"] = {"skipped": f"nabu not importable: {exc}"}
    else:
        nabu = PaganinPhaseRetrieval((size, size), distance=DISTANCE_M, energy=ENERGY_KEV,
                                     delta_beta=DELTA_BETA, pixel_size=PIXEL_SIZE_M)
        t_nabu = best_time(lambda: [nabu.retrieve_phase(p) for p in intensity], repeat)
        a, b = ours(intensity[0]).ravel(), nabu.retrieve_phase(intensity[0]).ravel()
        report["paganin_vs_nabu"] = {
            "size": size, "projections": 8, "ours_s": t_ours, "nabu_s": t_nabu,
            "speed_ratio_ours_over_nabu": t_nabu / t_ours,
            "correlation": float(np.corrcoef(a, b)[0, 1])}

    angles = np.linspace(0, np.pi, n_angles, endpoint=False)
    sinogram, truth = disk_sinogram(size, max(8, size // 4), angles)
    coords = np.arange(size) - (size - 1) / 2
    fov = coords[:, None] ** 2 + coords[None, :] ** 2 < (0.45 * size) ** 2
    t_ours = best_time(lambda: fbp.reconstruct(sinogram, angles, 0.0, backend), repeat)
    try:
        import astra
    except ImportError as exc:
        report["fbp_vs_astra"] = {"skipped": f"astra not importable: {exc}"}
        return report
    vol_geom = astra.create_vol_geom(size, size)
    proj_geom = astra.create_proj_geom("parallel", 1.0, size, angles)
    projector = astra.create_projector("linear", proj_geom, vol_geom)

    astra_volume = np.zeros((sinogram.shape[1], size, size), np.float32)

    def astra_fbp():
        for z in range(sinogram.shape[1]):
            sid = astra.data2d.create("-sino", proj_geom, sinogram[:, z, :])
            rid = astra.data2d.create("-vol", vol_geom)
            cfg = astra.astra_dict("FBP")
            cfg.update(ProjectorId=projector, ProjectionDataId=sid, ReconstructionDataId=rid)
            alg = astra.algorithm.create(cfg)
            astra.algorithm.run(alg)
            astra_volume[z] = astra.data2d.get(rid)
            astra.algorithm.delete(alg)
            astra.data2d.delete([sid, rid])

    t_astra = best_time(astra_fbp, repeat)
    ours_volume = fbp.reconstruct(sinogram, angles, 0.0, backend)
    # astra's image rows run the other way along y (checked in tests/peers/test_fbp_astra.py)
    a, b = ours_volume.ravel(), astra_volume[:, ::-1, :].ravel()

    def error(volume):  # relative RMS error against the exact disks, inside the field of view
        diff = volume[:, fov] - truth[fov]
        return float(np.linalg.norm(diff) / (np.linalg.norm(truth[fov]) * np.sqrt(len(volume))))
    report["fbp_vs_astra"] = {
        "correlation": float(np.corrcoef(a, b)[0, 1]),
        "relative_difference": float(np.linalg.norm(a - b) / np.linalg.norm(b)),
        "error_vs_truth_ours": error(ours_volume), "error_vs_truth_astra": error(astra_volume[:, ::-1, :]),
        "slices": sinogram.shape[1], "size": size, "angles": n_angles, "ours_s": t_ours,
        "astra_cpu_s": t_astra, "speed_ratio_ours_over_astra": t_astra / t_ours}
    return report


def disk_sinogram(size: int, nz: int, angles_rad, seed: int = 3):
    """Exact parallel-beam sinogram of random disks (the same in every slice).

    Returns the sinogram float32 of shape (n_angles, nz, size), line integrals in pixels,
    and the true image float32 (size, size) sampled at voxel centres.
    """
    rng = np.random.default_rng(seed)
    disks = [(*rng.uniform(-0.25, 0.25, 2) * size, rng.uniform(0.05, 0.15) * size, rng.uniform(0.5, 1.5))
             for _ in range(6)]
    coords = np.arange(size) - (size - 1) / 2
    rows = np.zeros((len(angles_rad), size))
    image = np.zeros((size, size))
    for x0, y0, r, value in disks:
        centre = x0 * np.cos(angles_rad) + y0 * np.sin(angles_rad)
        rows += value * 2 * np.sqrt(np.clip(r * r - (coords[None, :] - centre[:, None]) ** 2, 0, None))
        image += value * ((coords[None, :] - x0) ** 2 + (coords[:, None] - y0) ** 2 < r * r)
    sinogram = np.repeat(rows[:, None, :], nz, axis=1).astype(np.float32)
    return sinogram, image.astype(np.float32)


def _binning_process(barrier, results, n_frames: int, side: int, b: int, k: int) -> None:
    """One pool process: flat-field, bin b×b and average groups of k of ``n_frames`` raw frames."""
    from holostream.workers.backend import get_backend
    from holostream.workers.flatfield import FlatField

    backend = get_backend("cpu", threads=1)
    raw = np.random.default_rng(0).integers(900, 1100, (n_frames, side, side), dtype=np.uint16)
    flatfield = FlatField(np.full((side, side), 100, np.float32), np.full((side, side), 1000, np.float32), backend)
    flatfield.binned(raw[:k], b)  # warm-up
    barrier.wait()
    t0 = time.perf_counter()
    for start in range(0, n_frames, k):
        flatfield.binned(raw[start : start + k], b).mean(axis=0)
    results.put(time.perf_counter() - t0)


def pool_binning_throughput(processes: int, frames_per_process: int = 48, side: int = 2048,
                            b: int = 3, k: int = 3) -> dict:
    """Raw GB/s of dark/flat correction + b×b and k-angle binning on ``processes`` processes at once.

    Each process works on frames already in its memory (as the worker pool reads the
    shared-memory ring); the wall time is the slowest process's.
    """
    from holostream.service.daemon.channels import spawn_context

    ctx = spawn_context()
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_binning_process, args=(barrier, results, frames_per_process, side, b, k))
             for _ in range(processes)]
    for p in procs:
        p.start()
    seconds = max(results.get(timeout=600) for _ in procs)
    for p in procs:
        p.join()
    raw_bytes = processes * frames_per_process * side * side * 2
    return {"processes": processes, "frames": processes * frames_per_process, "frame_side": side,
            "binning": b, "angle_binning": k, "seconds": seconds, "raw_GB_per_s": raw_bytes / seconds / 1e9,
            "frames_per_s": processes * frames_per_process / seconds}


def machine() -> dict:
    """Name the machine the figures come from."""
    cpu = platform.processor() or platform.machine()  # where /proc/cpuinfo names no model
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "numpy": np.__version__}


