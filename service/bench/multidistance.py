"""Multi-distance benchmark: accuracy and per-stage cost by distance count, HoToPy beside us.

Run: ``holostream bench --multidistance --no-peers --json benchmarks/cpu-multidistance.json``
(``--md-size``, ``--md-angles``; HoToPy is compared when it is installed).

One simulated scan (workers/multisimulate.py): a mixed-material phantom (per-object δ/β
log-uniform in [30, 1000]), four distances of an ID16-like magnified cone beam (fixed focus
and detector, sample moved), stage offsets, Poisson noise. For 1–4 distances and each
chain it reconstructs δ and β volumes with :class:`workers.multipipeline.MultiDistancePipeline`
(offsets measured) and reports their correlation with the voxelised truth and the time of
each stage per angle. HoToPy's multi-distance ``holo.CTF`` (torch, CPU) runs on the very
same scaled, registered and padded stacks, followed by the same ramp filter and
back-projection, so only the phase retrieval differs; its regularisation is given the same
two-level values as ours and, separately, the best of a small sweep.
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np

from holostream.workers.backend import get_backend
from holostream.workers.binning import binned_center_px
from holostream.workers.fbp import angle_weights, backproject
from holostream.workers.fresnel import fresnel_number
from holostream.workers.multipipeline import MultiDistancePipeline
from holostream.workers.multisimulate import cone_beam_distances, simulate_multidistance
from holostream.workers.phantom import mixed_material_phantom
from holostream.workers.physics import phase_to_delta_px

ENERGY_KEV, DELTA_BETA = 17.5, 200.0
SOURCE_DISTANCES_M = (0.007, 0.0076, 0.009, 0.0115)
FOCUS_DETECTOR_M, DETECTOR_PIXEL_M = 0.5, 7e-6
SHIFTS_PX = ((0, 0), (1.3, -0.8), (-0.6, 2.1), (2.2, 1.4))
CHAINS = ("paganin", "ctf", "ctf_mixed", "ctf, ap**10(delta_beta=200)", "ctf_mixed, ap**10")


def correlation(a, b) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def simulate(size: int, angles: int, seed: int = 1):
    distances = cone_beam_distances(FOCUS_DETECTOR_M, SOURCE_DISTANCES_M, DETECTOR_PIXEL_M, SHIFTS_PX)
    pixel = distances[0].effective()[2]
    # Objects of the same size in metres at every frame size (those of the 48² unit test),
    # more of them on a larger frame: small features are where one distance fails.
    scale = 48.0 / size
    phantom = mixed_material_phantom(3, 0.4 * size * pixel, 0.8 * size * pixel,
                                     n_objects=int(12 / scale**2), delta_range=(2e-6, 6e-6),
                                     size_range=(0.08 * scale, 0.25 * scale), max_tries=20000)
    return simulate_multidistance(phantom, distances, n_projections=angles, rows=size, cols=size,
                                  energy_kev=ENERGY_KEV, seed=seed)


def pipeline_for(scan, which, chain, backend):
    effective = [scan.effective[i] for i in which]
    scans = [scan.scans[i] for i in which]
    pipeline = MultiDistancePipeline(
        scans[0].projections.shape[1:], [s.darks.mean(0) for s in scans],
        [s.flats.mean(0) for s in scans], binning=1, chain=chain, filter="ram-lak",
        energy_kev=ENERGY_KEV, distances_m=[e[1] for e in effective],
        pixel_sizes_m=[e[2] for e in effective], delta_beta=DELTA_BETA, backend=backend)
    if len(which) > 1:
        n = scans[0].projections.shape[0]
        sample = range(0, n, max(1, n // 6))
        pipeline.measure_shifts(np.stack([pipeline.transmission([s.projections[a] for s in scans])
                                          for a in sample]))
    return pipeline, scans


def run_stages(pipeline, scans, retrieve, backend, batch: int = 16):
    """Volumes of δ and β with the stages timed; ``retrieve(aligned) -> (phase, attenuation)``."""
    n_angles, rows, cols = scans[0].projections.shape
    angles = np.radians(scans[0].angles_deg)
    weights = angle_weights(angles)
    center = binned_center_px(cols, 1, 0.0)
    volumes = [np.zeros((rows, cols, cols), np.float32) for _ in range(2)]
    seconds = dict.fromkeys(("flatfield", "scale", "phase", "ramp", "backproject"), 0.0)
    for start in range(0, n_angles, batch):
        part = slice(start, min(start + batch, n_angles))
        t0 = time.perf_counter()
        stack = np.stack([pipeline.transmission([s.projections[a] for s in scans])
                          for a in range(part.start, part.stop)])
        t1 = time.perf_counter()
        aligned = pipeline.scale(stack)
        t2 = time.perf_counter()
        phase, attenuation = retrieve(aligned)
        t3 = time.perf_counter()
        filtered = [pipeline.ramp(phase_to_delta_px(phase, ENERGY_KEV, pipeline.voxel_size_m)),
                    pipeline.ramp(phase_to_delta_px(-attenuation, ENERGY_KEV, pipeline.voxel_size_m))]
        t4 = time.perf_counter()
        for volume, f in zip(volumes, filtered):
            backproject(volume, f, angles[part], weights[part], center, backend)
        t5 = time.perf_counter()
        for key, dt in zip(seconds, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            seconds[key] += dt
    per_angle_ms = {k: 1e3 * v / n_angles for k, v in seconds.items()}
    return volumes, per_angle_ms


def hotopy_retrieval(pipeline, alpha, homogeneous: bool, threads: int):
    """HoToPy's multi-distance CTF on our padding: ``aligned -> (phase, attenuation)``."""
    import torch
    from hotopy import holo

    torch.set_num_threads(threads)
    padding = pipeline.phase.padding
    fnums = [fresnel_number(pipeline.voxel_size_m, z, ENERGY_KEV) for z in pipeline.distances_m]
    ctf = holo.CTF(padding.padded_shape, fnums, alpha=alpha,
                   betadelta=1.0 / DELTA_BETA if homogeneous else None, dtype=torch.float32)

    ctf(torch.ones((len(fnums), *padding.padded_shape)))  # warm-up: torch's first call is slow

    def retrieve(aligned):
        phases, attenuations = [], []
        for stack in padding.pad(np.asarray(aligned, np.float32)):
            x = ctf(torch.from_numpy(np.ascontiguousarray(stack)))
            x = x.cpu().numpy()
            if homogeneous:
                phase = padding.crop(np.asarray(x, np.float32))
                attenuation = -phase / DELTA_BETA
            else:
                # HoToPy's generic CTF returns the stack (phase, log-amplitude) of the object
                # exp(i·phase + log-amplitude): our B is minus the second.
                phase = padding.crop(np.asarray(x[0], np.float32))
                attenuation = -padding.crop(np.asarray(x[1], np.float32))
            phases.append(phase)
            attenuations.append(attenuation)
        return np.stack(phases), np.stack(attenuations)
    return retrieve


def run_multidistance(size: int = 128, angles: int = 180, threads: int | None = None,
                      hotopy: bool = True, log=print) -> dict:
    """Simulate, reconstruct with every chain and distance count (and HoToPy); the report."""
    threads = threads or len(os.sched_getaffinity(0))
    backend = get_backend("cpu", threads=threads)
    t0 = time.perf_counter()
    scan = simulate(size, angles)
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "size": size, "angles": angles, "threads": threads, "objects": len(scan.phantom.objects),
              "simulate_s": time.perf_counter() - t0,
              "effective": [{"magnification": m, "distance_m": z, "pixel_size_m": p}
                            for m, z, p in scan.effective], "runs": []}

    def record(name, n, volumes, stages, pipeline):
        row = {"method": name, "distances": n, "corr_delta": correlation(volumes[0], scan.truth_delta),
               "corr_beta": correlation(volumes[1], scan.truth_beta), "ms_per_angle": stages,
               "shifts_px": np.round(pipeline.shifts_px, 3).tolist()}
        report["runs"].append(row)
        log(f"{name:30s} n={n} δ {row['corr_delta']:.3f} β {row['corr_beta']:.3f} "
            f"phase {stages['phase']:.2f} ms/angle, all stages {sum(stages.values()):.2f} ms/angle")

    for chain in CHAINS:
        for n in (1, 2, 3, 4):
            if chain.startswith("ctf_mixed") and n == 1:
                continue
            pipeline, scans = pipeline_for(scan, list(range(n)), chain, backend)
            volumes, stages = run_stages(pipeline, scans, pipeline.phase, backend)
            record(chain, n, volumes, stages, pipeline)
    if hotopy:
        try:
            import hotopy  # noqa: F401 - only whether it is there
        except ImportError as err:
            report["hotopy"] = f"not installed ({err})"
            return report
        pipeline, scans = pipeline_for(scan, [0, 1, 2, 3], "ctf", backend)
        for label, alpha, homogeneous in (
                ("hotopy-ctf (1e-7, 1e-3)", (1e-7, 1e-3), True),
                ("hotopy-ctf (0, 0.3)", (0.0, 0.3), True),
                ("hotopy-ctf (1e-3, 1e-2)", (1e-3, 1e-2), True),
                ("hotopy-ctf generic (1e-3, 1e-2)", (1e-3, 1e-2), False)):
            retrieve = hotopy_retrieval(pipeline, alpha, homogeneous, threads)
            volumes, stages = run_stages(pipeline, scans, retrieve, backend)
            record(label, 4, volumes, stages, pipeline)
    return report
