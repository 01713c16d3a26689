"""Our CPU FBP against astra-toolbox's CPU FBP: same sinogram, same run, same thread count.

astra's CPU ``FBP`` algorithm reconstructs one slice on one thread (measured: CPU time =
wall time); it runs here slice by slice on ``threads`` Python threads at once (astra's
compiled ``algorithm`` module releases the GIL), and ours with the same ``threads``: each
comparison is at an equal thread count, for one thread and for all cores. Accuracy is the
relative RMS error against the exact disks inside the field of view, for both, so a speed
ratio is at equal accuracy or the report says otherwise. Our time is the one-shot
:func:`~holostream.workers.fbp.reconstruct` (ramp filter + back-projection), astra's its
``FBP`` (its filter + back-projection).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def _best(fn, repeat: int):
    """Best wall time of ``fn()`` over ``repeat`` runs (seconds), and the last result."""
    best, result = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return float(best), result


def astra_fbp(sinogram: np.ndarray, angles_rad: np.ndarray, threads: int) -> np.ndarray:
    """astra CPU FBP (linear projector) of ``(n_angles, nz, size)``, in our ``[z, y, x]`` order."""
    import astra

    n_angles, nz, size = sinogram.shape
    vol_geom = astra.create_vol_geom(size, size)
    proj_geom = astra.create_proj_geom("parallel", 1.0, size, angles_rad)
    projector = astra.create_projector("linear", proj_geom, vol_geom)
    out = np.empty((nz, size, size), np.float32)

    def one_slice(z: int) -> None:
        sid = astra.data2d.create("-sino", proj_geom, np.ascontiguousarray(sinogram[:, z, :]))
        rid = astra.data2d.create("-vol", vol_geom)
        cfg = astra.astra_dict("FBP")
        cfg.update(ProjectorId=projector, ProjectionDataId=sid, ReconstructionDataId=rid)
        alg = astra.algorithm.create(cfg)
        try:
            astra.algorithm.run(alg)
            # astra's image rows run the other way along y (tests/peers/test_fbp_astra.py)
            out[z] = astra.data2d.get(rid)[::-1]
        finally:
            astra.algorithm.delete(alg)
            astra.data2d.delete([sid, rid])

    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one_slice, range(nz)))
    finally:
        astra.projector.delete(projector)
    return out


def compare_fbp_with_astra(size: int, n_angles: int, slices: int, threads: int, repeat: int) -> dict:
    """Seconds per volume and error vs the exact phantom, ours and astra's, at 1 and ``threads`` threads.

    Parameters
    ----------
    size : int
        Detector width and slice side, pixels.
    n_angles : int
        Projections over 180°.
    slices : int
        Volume rows reconstructed (astra takes 1.3-2.7 s per 682² slice of 360 angles per
        core on the 2-core development VM). Ours works on 32 rows at a time: a multiple of
        32 is fair to both.
    threads : int
        Threads of the "all cores" comparison.
    repeat : int
        Best of N for ours (after a small warm-up call that compiles the kernel); astra is
        timed ``max(1, repeat - 1)`` times (it compiles nothing, and is slow).

    Returns
    -------
    dict
        Times (s), errors, agreement and ``speed_ratio_*`` (astra time / ours, > 1: ours faster).
    """
    from holostream.workers import fbp
    from holostream.workers.backend import get_backend

    try:
        import astra  # noqa: F401
    except ImportError as exc:
        return {"skipped": f"astra not importable: {exc}"}
    angles = np.linspace(0, np.pi, n_angles, endpoint=False)
    sinogram, truth = disk_sinogram(size, slices, angles)
    coords = np.arange(size) - (size - 1) / 2
    fov = coords[:, None] ** 2 + coords[None, :] ** 2 < (0.45 * size) ** 2

    def error(volume):
        diff = volume[:, fov] - truth[fov]
        return float(np.linalg.norm(diff) / (np.linalg.norm(truth[fov]) * np.sqrt(len(volume))))

    report = {"size": size, "angles": n_angles, "slices": slices, "astra_projector": "linear", "runs": {}}
    for n_threads in sorted({1, threads}):
        backend = get_backend("cpu", threads=n_threads)
        fbp.reconstruct(sinogram[:, :1], angles, 0.0, backend)  # compiles the kernel
        t_ours, ours = _best(lambda: fbp.reconstruct(sinogram, angles, 0.0, backend), repeat)
        t_astra, theirs = _best(lambda: astra_fbp(sinogram, angles, n_threads), max(1, repeat - 1))
        report["runs"][str(n_threads)] = {
            "threads": n_threads, "ours_s": t_ours, "astra_cpu_s": t_astra,
            "speed_ratio_ours_over_astra": t_astra / t_ours,
            "error_vs_truth_ours": error(ours), "error_vs_truth_astra": error(theirs),
            "correlation": float(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]),
            "relative_difference": float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))}
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
