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

#: Presets: binned projection side, binned projections per volume (raw frames per tomogram
#: / angle binning, rounded down), pixel/angle binning, iterations.
PRESETS = {
    "demo": {"size": 128, "n_projections": 180, "raw_frames": 180, "binning": 2, "angle_binning": 1,
             "iterations": 10},
    "id16b": {"size": 682, "n_projections": 833, "raw_frames": 2500, "binning": 3, "angle_binning": 3,
              "iterations": 10},
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
#: Rows of the column-mean filter's volume (its back-projection is timed at full speed).
_ROWS_RING_VOLUME = 64


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
    out.update(column_mean_timings(backend, stack, size, repeat))
    host = backend.to_host(stack)[:, :, :]
    angles = np.linspace(0.0, 360.0, n_angles, endpoint=False)
    t = best_time(lambda: estimate_cor(host, angles), repeat)
    out["centre estimate"] = {"seconds_per_scan": t * min(size, 128) / rows, "angles": n_angles,
                              "note": f"360° pairs, timed on {rows} rows, scaled to {min(size, 128)}"}
    return out


def column_mean_timings(backend, stack, size: int, repeat: int) -> dict:
    """The streaming ring filter's two costs: per projection (the workers' running Σ weight·(-ln T))
    and per published volume (the daemon's stripes and their back-projection at every angle),
    timed on ``stack``'s rows and scaled to ``size`` rows like the sorting filter. The phase
    retrieval of the one stripes image per volume is not counted (its row is the chain's)."""
    from holostream.service.daemon.rings import AbsorptionSum
    from holostream.workers import fbp
    from holostream.workers.ring import column_stripes, ring_volume

    n_angles, cols = stack.shape[0], stack.shape[2]
    # enough rows for the compiled back-projector (it takes over from 2²⁴ voxel updates a call)
    rows = min(size, _ROWS_RING_VOLUME)
    stack = backend.xp.concatenate([stack] * -(-rows // stack.shape[1]), axis=1)[:, :rows]
    running = AbsorptionSum("column-mean", (rows, cols), backend)
    transmission = backend.xp.exp(-backend.xp.abs(stack[:1]))
    t_add = best_time(lambda: running.add(transmission, [1.0], [0.0]), repeat, backend.synchronize)
    angles = np.linspace(0.0, math.pi, n_angles, endpoint=False)
    weights = fbp.angle_weights(angles)
    ramp = fbp.RampFilter(cols, backend)

    def publish():
        halves = (stack[: n_angles // 2].mean(axis=0), stack[n_angles // 2 :].mean(axis=0))
        stripes = ramp(column_stripes(backend.xp.stack(halves), backend)[None])[0]
        return ring_volume(stripes, angles, weights, 0.0, (rows, cols, cols), backend)

    t_publish = best_time(publish, repeat, backend.synchronize)
    note = f"timed on {rows} rows, scaled to {size}"
    return {"ring filter (column-mean), running sum": {**_row(Timing(t_add * size / rows, 1)), "note": note},
            "ring filter (column-mean), per published volume": {
                "seconds_per_volume": t_publish * size / rows, "angles": n_angles,
                "note": f"{note}; stripes of the mean, ramp filter, back-projection at every angle"}}


def chain_summary(stages: dict, preset: dict, iterations: int) -> dict:
    """Per-volume time of the whole chain from the stage timings of :func:`stage_timings`.

    ``preset["n_projections"]`` counts binned projections (id16b: 2500 raw frames / 3 = 833
    per volume); each of them averages ``angle_binning`` raw frames, each flat-fielded and
    binned, so that stage counts ``angle_binning`` times per projection.
    """
    chain = ("flatfield+binning", f"paganin+ap{iterations}", "ramp filter", "back-projection")
    frames_per = {"flatfield+binning": preset["angle_binning"]}
    per_projection = sum(frames_per.get(name, 1) * stages[name]["seconds"] / stages[name]["projections"]
                         for name in chain)
    return {"stages": list(chain), "projections_per_s": 1.0 / per_projection,
            "projections_per_volume": preset["n_projections"],
            "seconds_per_volume": per_projection * preset["n_projections"],
            "note": "sum of the stage rates over the binned projections of one volume; flat-field+"
                    "binning counted angle_binning times per projection; back-projection timed with "
                    "`batch` angles per call"}


def _row(timing: Timing, raw_bytes: int | None = None) -> dict:
    row = {"seconds": timing.seconds, "projections": timing.projections,
           "projections_per_s": timing.per_second}
    if raw_bytes is not None:
        row["raw_GB_per_s"] = raw_bytes / timing.seconds / 1e9
    return row


def peer_comparison(size: int, repeat: int) -> dict:
    """Our Paganin vs nabu's, same arrays, same process (FBP vs astra: :mod:`.fbp`)."""
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
    return report


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
            "numpy": np.__version__, "load_average_1_5_15min": os.getloadavg()}


