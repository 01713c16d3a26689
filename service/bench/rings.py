"""Ring removal with and without phase retrieval: ours against nabu's filters, same scans, one run.

Run: ``holostream bench --rings --no-peers --json benchmarks/cpu-rings.json``.

Each case simulates one phantom twice with the same noise (workers/simulate.py), once with
six detector columns whose gain differs from the flats' by 0.5–3 %: the difference of the
two volumes is the bad columns' artefact alone. Every method runs on both scans; reported
are the artefact's RMS reduction (``ring_ratio``), the correlation with the truth of the
clean scan before and after the filter (what it costs where there is nothing to remove) and
of the bad-column scan, and the filter's time per projection. nabu's sinogram filters
(Münch et al.'s wavelet–Fourier, wavelet-median, mean subtraction) work on the δ sinograms
after phase retrieval, as nabu applies them; its double flat-field on the transmissions
before it, like our ``column-mean``. The same FBP reconstructs all of them.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from holostream.workers import phasing
from holostream.workers.backend import get_backend
from holostream.workers.fbp import angle_weights, reconstruct
from holostream.workers.flatfield import average_frames
from holostream.workers.phantom import random_phantom
from holostream.workers.pipeline import ProjectionPipeline
from holostream.workers.ring import absorption, angle_half, remove_stripes, stripes_volume
from holostream.workers.simulate import DetectorModel, simulate_scan

ROWS, COLS, PIXEL_M, DELTA_BETA = 8, 128, 1.0e-6, 200.0
BAD_COLUMNS = ((20, 0.02), (47, -0.01), (61, 0.03), (66, -0.005), (90, 0.015), (101, -0.02))
#: (name, sample-detector distance m, phase retrieval)
CASES = (("contact (0.1 mm), no phase retrieval", 1e-4, "none"),
         ("Paganin, 2 mm", 2e-3, "paganin"),
         ("Paganin, 1 cm", 1e-2, "paganin"),
         ("Paganin, 5 cm", 5e-2, "paganin"))


def _scan(bad_columns, distance_m):
    phantom = random_phantom(2, 0.4 * COLS * PIXEL_M, 5 * ROWS * PIXEL_M, n_objects=12)
    return simulate_scan(phantom, n_projections=180, rows=ROWS, cols=COLS, pixel_size_m=PIXEL_M,
                         distance_m=distance_m, detector=DetectorModel(bad_columns=tuple(bad_columns)),
                         binning=1, n_darks=2, n_flats=50, seed=4)


def _inside(volume):
    yy, xx = np.mgrid[:COLS, :COLS] - (COLS - 1) / 2
    return volume[:, np.hypot(yy, xx) < COLS / 2 - 2]


def _rms(volume) -> float:
    return float(np.sqrt(np.mean(_inside(volume) ** 2)))


def _corr(volume, truth) -> float:
    return float(np.corrcoef(_inside(volume).ravel(), _inside(truth).ravel())[0, 1])


class _Scan:
    """One simulated scan's transmissions, δ sinogram and plain volume."""

    def __init__(self, scan, phase: str, backend):
        g = scan.geometry
        self.backend, self.truth = backend, scan.ground_truth
        self.pipeline = ProjectionPipeline(
            (g.rows, g.cols), average_frames(scan.darks, backend), average_frames(scan.flats, backend),
            binning=1, chain=phasing.default_chain(phase, 0, DELTA_BETA), filter="ram-lak",
            energy_kev=g.energy_kev, distance_m=g.distance_m, pixel_size_m=g.pixel_size_m,
            delta_beta=DELTA_BETA, backend=backend)
        n = len(scan.angles_deg)
        self.transmissions = self.pipeline.transmissions([scan.projections[i : i + 1] for i in range(n)],
                                                         [np.array([i]) for i in range(n)])
        self.angles = np.radians(scan.angles_deg)
        self.delta = self.pipeline.delta_from_transmission(self.transmissions)

    def volume(self, delta):
        return reconstruct(delta, self.angles, 0.0, self.backend)


def _methods() -> dict[str, Callable[[_Scan], Any]]:
    """Each method: scan → volume."""

    def column_mean(s: _Scan):
        weights = angle_weights(s.angles)
        sets = np.array([angle_half(a) for a in s.angles])
        means = np.stack([np.tensordot(weights[sets == h], absorption(s.transmissions[sets == h], s.backend),
                                       axes=1) / weights[sets == h].sum() for h in (0, 1)])
        volume = s.volume(s.delta)
        return volume - stripes_volume(s.pipeline, means, None, s.angles, weights, 0.0, volume.shape, s.backend)

    methods = {
        "none": lambda s: s.volume(s.delta),
        "holostream column-mean (on -ln T)": column_mean,
        "holostream sorting (Vo, on δ)": lambda s: s.volume(remove_stripes("sorting", s.delta, s.backend)),
    }
    try:
        from nabu.preproc.double_flatfield import DoubleFlatField
        from nabu.reconstruction.rings import MunchDeringer, SinoMeanDeringer, WaveletsMedianDeringer
    except ImportError:  # nabu or PyWavelets missing: ours only
        return methods

    def on_sinograms(deringer_of):
        def run(s: _Scan):
            sinos = np.ascontiguousarray(np.transpose(s.delta, (1, 0, 2)))  # (rows, angles, cols)
            out = sinos.copy()
            result = deringer_of(sinos.shape).remove_rings(out)  # in place; some return None
            out = out if result is None else result
            return s.volume(np.ascontiguousarray(np.transpose(out, (1, 0, 2))))
        return run

    def double_flatfield(s: _Scan):
        dff = DoubleFlatField(s.transmissions.shape, input_is_mlog=False, output_is_mlog=False,
                              average_is_on_log=True, sigma_filter=2.0)
        corrected = dff.apply_double_flatfield(np.array(s.transmissions, dtype=np.float32))
        return s.volume(s.pipeline.delta_from_transmission(corrected))

    methods.update({
        "nabu Münch wavelet-Fourier (σ 1, on δ)": on_sinograms(lambda shape: MunchDeringer(shape, 1.0, levels=4)),
        "nabu wavelet-median (on δ)": on_sinograms(lambda shape: WaveletsMedianDeringer(shape, levels=4)),
        "nabu mean subtraction (high-pass σ 2, on δ)": on_sinograms(
            lambda shape: SinoMeanDeringer(shape, filter_cutoff=(0, 2.0))),
        "nabu mean subtraction (high-pass σ 10, on δ)": on_sinograms(
            lambda shape: SinoMeanDeringer(shape, filter_cutoff=(0, 10.0))),
        "nabu double flat-field (σ 2, on T)": double_flatfield,
    })
    return methods


def compare_ring_filters(cases=CASES, log: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Every case (of :data:`CASES`) × method: ring ratio, correlations, time (JSON-ready)."""
    backend = get_backend("cpu", threads=1)
    out: dict[str, Any] = {"scan": {"rows": ROWS, "cols": COLS, "angles": 180, "pixel_size_m": PIXEL_M,
                                    "delta_beta": DELTA_BETA, "bad_columns": [list(c) for c in BAD_COLUMNS]},
                           "cases": {}}
    methods = _methods()
    for name, distance_m, phase in cases:
        clean = _Scan(_scan((), distance_m), phase, backend)
        bad = _Scan(_scan(BAD_COLUMNS, distance_m), phase, backend)
        plain_artefact = _rms(methods["none"](bad) - methods["none"](clean))
        rows = {}
        for method, run in methods.items():
            start = time.perf_counter()
            vol_bad = run(bad)
            seconds = time.perf_counter() - start
            vol_clean = run(clean)
            rows[method] = {
                "ring_ratio": plain_artefact / _rms(vol_bad - vol_clean),
                "corr_clean": _corr(vol_clean, clean.truth), "corr_bad": _corr(vol_bad, clean.truth),
                "ms_per_projection_incl_fbp": 1e3 * seconds / len(bad.angles)}
            log(f"{name:<38} {method:<40} ring ×{rows[method]['ring_ratio']:6.2f}  "
                f"corr clean {rows[method]['corr_clean']:.4f}  bad {rows[method]['corr_bad']:.4f}")
        out["cases"][name] = {"distance_m": distance_m, "phase": phase, "methods": rows}
    return out
