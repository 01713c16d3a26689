"""Phase retrieval against HoToPy: accuracy and speed on the same simulated holograms.

One projection (angle 0°) of two random phantoms is simulated with
:class:`~holostream.workers.simulate.HologramSimulator` (exact line integrals, Fresnel
propagation on a 2× finer grid, pixel-averaged intensity) plus Poisson noise:

- ``single``: one material, δ = 1e-6, β = 5e-9 (δ/β = 200, a polymer at 17.5 keV);
- ``two-material``: objects alternate δ/β = 100 (δ = 1e-6, β = 1e-8) and δ/β = 300
  (δ = 1.5e-6, β = 5e-9); every method is told δ/β = 200, right for neither;
- ``wider-than-field``: the single-material objects inside a body 1.8 × 1.4 frame widths
  across (δ = 3e-7, β = 1.5e-9, δ/β = 200), cut by every edge of the frame: the usual case
  at a beamline. The simulation propagates the whole body (margin beyond the frame); the
  methods see the frame only.

Phase shifts reach about -5 rad (single) and -7 rad (two-material), the regime where the
linear (CTF) and TIE (Paganin) models break down. The truth is ``-(2π/λ)∫δ dl`` averaged
over each pixel, on the same supersampled grid as the simulation.

holostream runs ``paganin``, ``ctf``, ``ap`` and ``raar`` (:func:`default_chain`, 10
iterations: 8 with the δ/β constraint, 2 without) and ``newton+ap``, the recommended chain
(``phasing.RECOMMENDED_CHAIN``) at the cost of ``ap``. HoToPy (``hotopy.holo``, torch on CPU,
float32, the same thread count as our FFTs) runs ``Paganin``, ``CTF`` and the nonlinear
``Tikhonov`` (Huhn et al., Opt. Express 30, 32871, 2022) with β/δ = 1/200 and two-level
regularisation ``alpha = (0, 0.3)``: no low-frequency term (the δ/β coupling fixes the low
frequencies, as HoToPy's examples for homogeneous objects do) and 0.3 above the first CTF
maximum, the best of 5e-2 (HoToPy's example value), 0.1, 0.3 and 1 over both phantoms
and z = 0.05, 0.2, 0.5 m (5e-2 gave 0.071 instead of 0.052 relative error on the single
material at 0.5 m); ``max_iter = 100``, ``rtol = 3e-3`` (HoToPy's defaults). The same
``alpha`` serves HoToPy's CTF.

Both libraries see the same intensity padded by the same :class:`Padding` plan (edge, margin
0.5; HoToPy's Paganin and Tikhonov do not pad by themselves), and the same geometry, given
to HoToPy as the pixel Fresnel number ``pixel² / (λz)``. HoToPy's object is
``exp((i + β/δ)·x)`` and its propagator ``exp(-iπλz|f|²)``, so its ``x`` is our φ
unchanged (:func:`from_hotopy`, verified by :func:`check_hotopy_convention`).

Scores against the true phase φ₀ (whole frame, no offset removed): relative L2 error
``‖φ - φ₀‖ / ‖φ₀‖``, Pearson correlation, and scale, the least-squares slope
``⟨φ, φ₀⟩ / ⟨φ₀, φ₀⟩`` (1 is right). For ``wider-than-field`` the phase of matter beyond
the frame is known up to a constant only, and the frame's outer eighth lacks the fringes of
what lies outside: it is scored on the inner frame (an eighth of the side off each edge), each phase less
its mean there (:data:`OFFSET_FREE`). Times are best-of-``repeat`` wall times per projection,
padding included. Used by ``holostream bench --phase-peers``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import time

import numpy as np

from holostream.workers.backend import get_backend
from holostream.workers.binning import bin_pixels
from holostream.workers.fresnel import FresnelPropagator, fresnel_number
from holostream.workers.padding import Padding
from holostream.workers.phantom import random_phantom, with_body
from holostream.workers.phasing import PhaseRetrieval, default_chain, recommended_chain
from holostream.workers.physics import wavelength_m
from holostream.workers.simulate import HologramSimulator, ScanGeometry

ENERGY_KEV, PIXEL_SIZE_M = 17.5, 1.0e-6
DISTANCES_M = (0.05, 0.2, 0.5)
#: Photons per pixel of the flat: Poisson noise of 0.7 % in free space.
PHOTONS = 2.0e4
#: δ/β every method is told (the single material's; between the two materials').
DELTA_BETA = 200.0
PHANTOM_MATERIALS = {
    "single": ((1.0e-6, 5.0e-9),),
    "two-material": ((1.0e-6, 1.0e-8), (1.5e-6, 5.0e-9)),
}
#: Cases whose phase beyond the frame is unknown: scored on the inner frame, offset removed.
OFFSET_FREE = frozenset({"wider-than-field"})
#: The wide case's body: semi-axes in frame widths, δ, β, rotation about the axis (rad).
WIDE_BODY = ((0.9, 0.7, 2.0), 3.0e-7, 1.5e-9, 0.4)
ITERATIONS = 10
#: HoToPy regularisation (low, high frequencies) and iteration limits of its Tikhonov.
HOTOPY_ALPHA = (0.0, 0.3)
HOTOPY_MAX_ITER, HOTOPY_RTOL = 100, 3e-3


def simulate_hologram(phantom, size: int, distance_m: float, photons: float | None, seed: int,
                      supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Noisy flat-corrected hologram of ``phantom`` at 0° and its true phase.

    Parameters
    ----------
    phantom : Phantom
    size : int
        Frame side in pixels (``PIXEL_SIZE_M`` each), square frame.
    distance_m : float
        Propagation distance in metres.
    photons : float or None
        Mean photons per pixel of the flat; Poisson noise of that count, None for none.
    seed : int
        Seed of the noise.
    supersample : int
        Fine grid points per pixel edge, for the propagation and for the true phase.

    Returns
    -------
    intensity : ndarray of shape (size, size), float32
        ≈ 1 in free space.
    phase : ndarray of shape (size, size), float32
        True phase ``-(2π/λ)∫δ dl`` in radians, averaged over each pixel.
    """
    geometry = ScanGeometry(size, size, PIXEL_SIZE_M, distance_m, ENERGY_KEV)
    intensity = HologramSimulator(phantom, geometry, supersample).intensity(0.0)
    if photons is not None:
        rng = np.random.default_rng(seed)
        intensity = (rng.poisson(intensity.astype(np.float64) * photons) / photons).astype(np.float32)
    fine = size * supersample
    delta_m, _ = phantom.project(0.0, fine, fine, PIXEL_SIZE_M / supersample)
    phase = -2.0 * math.pi / wavelength_m(ENERGY_KEV) * bin_pixels(delta_m, supersample, np)
    return intensity, phase.astype(np.float32)


def score(phase: np.ndarray, truth: np.ndarray, offset_free: bool = False) -> dict:
    """Accuracy of a retrieved phase against the true one.

    Parameters
    ----------
    phase, truth : ndarray of shape (rows, cols), float
        Retrieved and true phase in radians.
    offset_free : bool
        Score the inner frame only (``rows // 8`` and ``cols // 8`` off each edge), each
        phase less its mean there: for matter beyond the field of view, whose phase no
        method can know but up to a constant.

    Returns
    -------
    dict
        ``rel_error`` ‖φ − φ₀‖/‖φ₀‖, ``correlation`` (Pearson), ``scale`` ⟨φ, φ₀⟩/⟨φ₀, φ₀⟩.
    """
    if phase.shape != truth.shape:
        raise ValueError(f"phase {phase.shape} and truth {truth.shape} differ in shape")
    a, b = np.asarray(phase, np.float64), np.asarray(truth, np.float64)
    if offset_free:
        rows, cols = b.shape
        inner = (slice(rows // 8, rows - rows // 8), slice(cols // 8, cols - cols // 8))
        a, b = a[inner], b[inner]
        a, b = a - a.mean(), b - b.mean()
    a, b = a.ravel(), b.ravel()
    norm2 = float(b @ b)
    if norm2 == 0.0:
        raise ValueError("the true phase is zero everywhere: nothing to score against")
    return {
        "rel_error": float(np.linalg.norm(a - b) / math.sqrt(norm2)),
        "correlation": float(np.corrcoef(a, b)[0, 1]),
        "scale": float(a @ b / norm2),
    }


def our_methods(shape, distance_m: float, delta_beta: float, backend) -> dict:
    """holostream's retrievals, set up once: name → ``f(intensity) -> phase`` (numpy float32).

    ``paganin``, ``ctf``, ``ap``, ``raar`` as the service runs them (:func:`default_chain`),
    and ``newton+ap``, the recommended chain (:func:`recommended_chain`: Paganin, 5 Newton
    steps, 5 AP iterations with the δ/β constraint).
    """
    geometry = (shape, PIXEL_SIZE_M, distance_m, ENERGY_KEV, delta_beta, backend)
    methods = {name: PhaseRetrieval(default_chain(name, ITERATIONS, delta_beta), *geometry)
               for name in ("paganin", "ctf", "ap", "raar")}
    methods["newton+ap"] = PhaseRetrieval(recommended_chain(delta_beta), *geometry)
    return methods


def hotopy_methods(shape, distance_m: float, delta_beta: float, threads: int) -> dict:
    """HoToPy's retrievals on our padding: name → ``f(intensity) -> phase`` (numpy float32).

    Sets torch's (process-wide) CPU thread count to ``threads``.

    Raises
    ------
    ImportError
        When hotopy (or torch) is not installed.
    """
    import torch
    from hotopy import holo

    torch.set_num_threads(threads)
    padding = Padding(shape, get_backend("cpu"), mode="edge")
    fnum = fresnel_number(PIXEL_SIZE_M, distance_m, ENERGY_KEV)
    padded, betadelta = padding.padded_shape, 1.0 / delta_beta
    paganin = holo.Paganin(padded, fnum, betadelta)
    ctf = holo.CTF(padded, fnum, alpha=HOTOPY_ALPHA, betadelta=betadelta, dtype=torch.float32)
    tikhonov = holo.Tikhonov(padded, fnum, betadelta=betadelta, alpha=HOTOPY_ALPHA,
                             dtype=torch.float32)

    def wrap(solve):
        def retrieve(intensity):
            x = solve(torch.from_numpy(padding.pad(intensity)))
            return from_hotopy(padding.crop(x.cpu().numpy()))
        return retrieve

    return {
        "hotopy-paganin": wrap(paganin),
        "hotopy-ctf": wrap(ctf),
        "hotopy-tikhonov": wrap(lambda y: tikhonov(y, max_iter=HOTOPY_MAX_ITER, rtol=HOTOPY_RTOL)),
    }


def from_hotopy(x: np.ndarray) -> np.ndarray:
    """Our phase φ from HoToPy's homogeneous-object variable ``x`` (object ``exp((i + β/δ)x)``).

    Same sign and scale: both write the wave as ``exp(iφ)`` with φ < 0 in matter and
    propagate with ``exp(-iπλz|f|²)``. A copy, float32.
    """
    return np.array(x, dtype=np.float32)


def check_hotopy_convention(size: int = 64, distance_m: float = 0.2) -> dict:
    """Check :func:`from_hotopy` on a weak Gaussian phase object (φ ≤ 0, peak -0.1 rad).

    Our propagator and HoToPy's ``simulate_hologram`` must give the same hologram on the
    same periodic grid, and HoToPy's CTF must return a phase whose slope against the truth
    is close to +1 (a flipped convention would give -1).

    Returns
    -------
    dict
        ``forward_max_diff``: max |I_ours − I_hotopy|; ``ctf_scale``, ``ctf_correlation``
        of HoToPy's CTF of our hologram (through :func:`from_hotopy`) against the truth.
    """
    import torch
    from hotopy import holo

    backend = get_backend("cpu")
    r2 = ((np.arange(size) - size / 2) ** 2)[:, None] + ((np.arange(size) - size / 2) ** 2)[None, :]
    phase = (-0.1 * np.exp(-r2 / (2 * (size / 10) ** 2))).astype(np.float32)
    wave = np.exp((1j + 1.0 / DELTA_BETA) * phase.astype(np.float64)).astype(np.complex64)
    ours = np.abs(FresnelPropagator((size, size), PIXEL_SIZE_M, distance_m, ENERGY_KEV,
                                    backend).forward(wave)) ** 2
    fnum = fresnel_number(PIXEL_SIZE_M, distance_m, ENERGY_KEV)
    theirs = holo.simulate_hologram(phase.astype(np.float64), fnum, betadelta=1.0 / DELTA_BETA)
    ctf = holo.CTF((size, size), fnum, alpha=(0.0, 1e-3), betadelta=1.0 / DELTA_BETA,
                   dtype=torch.float32)
    retrieved = from_hotopy(ctf(torch.from_numpy(ours.astype(np.float32))).numpy())
    scores = score(retrieved, phase)
    return {"forward_max_diff": float(np.max(np.abs(ours - theirs))),
            "ctf_scale": scores["scale"], "ctf_correlation": scores["correlation"]}


def phantom_cases(size: int, seed: int) -> dict:
    """The benchmark's phantoms for a ``size``-pixel frame: name → Phantom.

    Ten objects (spheres and ellipsoids of 8–26 µm radius at size 256) in a cylinder of
    radius ``0.4·size`` pixels and a slab of ``0.8·size`` pixels, materials as
    ``PHANTOM_MATERIALS``; ``wider-than-field``: the ``single`` objects in the body
    ``WIDE_BODY`` (semi-axes 0.9, 0.7, 2 frame widths), which every frame edge cuts.
    """
    radius_m, height_m = 0.4 * size * PIXEL_SIZE_M, 0.8 * size * PIXEL_SIZE_M
    cases = {name: random_phantom(seed, radius_m, height_m, 10, materials=materials)
             for name, materials in PHANTOM_MATERIALS.items()}
    semi_axes, delta, beta, psi_rad = WIDE_BODY
    cases["wider-than-field"] = with_body(cases["single"], tuple(a * size * PIXEL_SIZE_M for a in semi_axes),
                                          delta, beta, psi_rad=psi_rad)
    return cases


def _hotopy_status() -> dict:
    try:
        importlib.import_module("hotopy.holo")
        import torch
    except ImportError as error:
        return {"available": False, "reason": f"hotopy not importable: {error}"}
    return {"available": True, "version": importlib.metadata.version("hotopy"),
            "torch": torch.__version__}


def compare_phase_retrieval(size: int = 256, distances=DISTANCES_M, seed: int = 0, repeat: int = 3,
                            photons: float | None = PHOTONS, threads: int | None = None,
                            budget_s: float = 5.0, with_hotopy: bool = True) -> dict:
    """Score and time holostream's and HoToPy's phase retrieval on the same holograms.

    Parameters
    ----------
    size : int
        Frame side in pixels (1 µm each).
    distances : sequence of float
        Propagation distances in metres (17.5 keV).
    seed : int
        Seed of the phantoms and of the noise.
    repeat : int
        Timed runs per method after one warm-up; the best counts (see ``budget_s``).
    photons : float or None
        Photons per flat pixel (Poisson noise), None for noise-free holograms.
    threads : int, optional
        CPU threads of our FFTs and of torch (default: all cores the process may use).
    budget_s : float
        Time per method and case after which no further timed run starts (at least one
        runs); keeps the whole comparison under two minutes on a loaded machine.
    with_hotopy : bool
        False: our methods only, even when hotopy is installed.

    Returns
    -------
    dict
        ``setup`` (geometry, noise, δ/β, regularisation, threads), ``hotopy`` (available,
        version or the reason it was skipped), ``convention_check`` (see
        :func:`check_hotopy_convention`; absent without hotopy), ``rows``: one dict per
        phantom × distance × method with ``phantom``, ``distance_m``, ``fresnel_number``,
        ``method``, ``rel_error``, ``correlation``, ``scale``, ``ms_per_projection``,
        ``timed_runs``, and ``ratios``: per phantom × distance, our ``ap``, ``raar`` and
        ``newton+ap`` against ``hotopy-tikhonov`` (error ratio, time ratio).
    """
    backend = get_backend("cpu", threads)
    hotopy = _hotopy_status() if with_hotopy else {"available": False, "reason": "not asked for"}
    report = {
        "setup": {"size": size, "energy_kev": ENERGY_KEV, "pixel_size_m": PIXEL_SIZE_M,
                  "distances_m": list(distances), "photons": photons, "delta_beta": DELTA_BETA,
                  "materials": {k: [list(m) for m in v] for k, v in PHANTOM_MATERIALS.items()},
                  "wide_body": {"semi_axes_frames": list(WIDE_BODY[0]), "delta": WIDE_BODY[1],
                                "beta": WIDE_BODY[2], "psi_rad": WIDE_BODY[3],
                                "scored": "inner frame, offset removed"},
                  "iterations": ITERATIONS, "hotopy_alpha": list(HOTOPY_ALPHA),
                  "hotopy_max_iter": HOTOPY_MAX_ITER, "hotopy_rtol": HOTOPY_RTOL,
                  "threads": backend.threads, "repeat": repeat, "budget_s": budget_s, "seed": seed},
        "hotopy": hotopy,
        "rows": [],
        "ratios": [],
    }
    previous_threads = None
    if hotopy["available"]:
        import torch

        previous_threads = torch.get_num_threads()
        report["convention_check"] = check_hotopy_convention()
    try:
        for name, phantom in phantom_cases(size, seed).items():
            for distance_m in distances:
                intensity, truth = simulate_hologram(phantom, size, distance_m, photons, seed)
                methods = our_methods((size, size), distance_m, DELTA_BETA, backend)
                if hotopy["available"]:
                    methods.update(hotopy_methods((size, size), distance_m, DELTA_BETA, backend.threads))
                case = {"phantom": name, "distance_m": distance_m,
                        "fresnel_number": fresnel_number(PIXEL_SIZE_M, distance_m, ENERGY_KEV)}
                rows = {}
                for method, retrieve in methods.items():
                    phase, seconds, runs = _timed(retrieve, intensity, repeat, budget_s)
                    rows[method] = {**case, "method": method,
                                    **score(phase, truth, offset_free=name in OFFSET_FREE),
                                    "ms_per_projection": 1e3 * seconds, "timed_runs": runs}
                report["rows"].extend(rows.values())
                if "hotopy-tikhonov" in rows:
                    report["ratios"].append(_ratios(case, rows))
    finally:
        if previous_threads is not None:
            torch.set_num_threads(previous_threads)
    return report


def _timed(retrieve, intensity, repeat: int, budget_s: float):
    """``(phase as numpy, best seconds, timed runs)`` of ``retrieve(intensity)``.

    One warm-up run (FFT plans, caches), then up to ``repeat`` timed runs, fewer when the
    runs so far add up to more than ``budget_s``; the best counts. On a shared machine the
    best of several runs is what filters out other processes' load.
    """
    t0 = time.perf_counter()
    phase = retrieve(intensity)
    spent = time.perf_counter() - t0
    best, runs = math.inf, 0
    while runs < max(repeat, 1) and (runs == 0 or spent < budget_s):
        t0 = time.perf_counter()
        phase = retrieve(intensity)
        seconds = time.perf_counter() - t0
        best, spent, runs = min(best, seconds), spent + seconds, runs + 1
    return np.asarray(phase), best, runs


def _ratios(case: dict, rows: dict) -> dict:
    reference = rows["hotopy-tikhonov"]
    out = dict(case)
    for ours in ("ap", "raar", "newton+ap"):
        out[f"{ours}_error_ratio"] = rows[ours]["rel_error"] / reference["rel_error"]
        out[f"{ours}_time_ratio"] = rows[ours]["ms_per_projection"] / reference["ms_per_projection"]
    out["paganin_error_ratio"] = rows["paganin"]["rel_error"] / reference["rel_error"]
    out["tikhonov_vs_paganin_time"] = reference["ms_per_projection"] / rows["paganin"]["ms_per_projection"]
    return out


def format_table(report: dict) -> str:
    """The rows of :func:`compare_phase_retrieval` as a Markdown table, one line per method."""
    lines = ["| phantom | z (m) | method | rel. L2 error | correlation | scale | ms / projection |",
             "|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['phantom']} | {row['distance_m']:g} | {row['method']} | "
                     f"{row['rel_error']:.3f} | {row['correlation']:.4f} | {row['scale']:.3f} | "
                     f"{row['ms_per_projection']:.1f} |")
    if not report["hotopy"]["available"]:
        lines.append(f"\nHoToPy skipped: {report['hotopy']['reason']}")
    return "\n".join(lines)
