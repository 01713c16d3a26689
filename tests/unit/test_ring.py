"""Ring removal on simulated scans with bad detector columns, scored against a clean scan.

The same phantom and noise are simulated with and without column gain errors (the errors
act on the read-out counts, so both scans share their noise): the difference of their
volumes is the bad columns' artefact alone. Run with ``-s`` to see the numbers.
"""

import numpy as np
import pytest

from holostream.shared.settings import RING_FILTERS as SETTING_NAMES
from holostream.workers import phasing
from holostream.workers.fbp import reconstruct
from holostream.workers.flatfield import average_frames
from holostream.workers.phantom import random_phantom
from holostream.workers.pipeline import ProjectionPipeline
from holostream.workers.ring import RING_FILTERS, remove_stripes, remove_stripes_sorting
from holostream.workers.simulate import DetectorModel, simulate_scan

ROWS, COLS, PIXEL_M = 8, 128, 1.0e-6
#: Columns whose gain differs by 0.5–3 % between the flats and the projections.
BAD_COLUMNS = ((20, 0.02), (47, -0.01), (61, 0.03), (66, -0.005), (90, 0.015), (101, -0.02))


def _scan(bad_columns=(), distance_m=1e-4):
    phantom = random_phantom(2, 0.4 * COLS * PIXEL_M, 5 * ROWS * PIXEL_M, n_objects=12)
    return simulate_scan(phantom, n_projections=180, rows=ROWS, cols=COLS, pixel_size_m=PIXEL_M,
                         distance_m=distance_m, detector=DetectorModel(bad_columns=tuple(bad_columns)),
                         binning=1, n_darks=2, n_flats=50, seed=4)


def _pipeline_and_transmissions(scan, backend, phase):
    """The scan's pipeline (δ/β 200, ram-lak) and its flat-fielded projections, one by one."""
    g = scan.geometry
    pipe = ProjectionPipeline(
        (g.rows, g.cols), average_frames(scan.darks, backend), average_frames(scan.flats, backend),
        binning=1, chain=phasing.default_chain(phase, 0, 200.0), filter="ram-lak",
        energy_kev=g.energy_kev, distance_m=g.distance_m, pixel_size_m=g.pixel_size_m,
        delta_beta=200.0, backend=backend)
    n = len(scan.angles_deg)
    return pipe, pipe.transmissions([scan.projections[i : i + 1] for i in range(n)],
                                    [np.array([i]) for i in range(n)])


def _delta(scan, backend, phase):
    pipe, transmissions = _pipeline_and_transmissions(scan, backend, phase)
    return pipe.delta_from_transmission(transmissions)


def _inside(volume):
    yy, xx = np.mgrid[:COLS, :COLS] - (COLS - 1) / 2
    return volume[:, np.hypot(yy, xx) < COLS / 2 - 2]


def _rms(volume):
    return float(np.sqrt(np.mean(_inside(volume) ** 2)))


def _correlation(volume, truth):
    return float(np.corrcoef(_inside(volume).ravel(), _inside(truth).ravel())[0, 1])


def test_rings_reduced_five_times_without_losing_the_clean_scan(cpu_backend):
    # Contact regime (0.1 mm, no phase retrieval): the stripes stay one column wide.
    clean, bad = _scan(), _scan(BAD_COLUMNS)
    angles = np.radians(clean.angles_deg)
    d_clean, d_bad = _delta(clean, cpu_backend, "none"), _delta(bad, cpu_backend, "none")

    def volume(delta, ring):
        return reconstruct(remove_stripes(ring, delta, cpu_backend), angles, 0.0, cpu_backend)

    rings_before = _rms(volume(d_bad, "none") - volume(d_clean, "none"))
    rings_after = _rms(volume(d_bad, "sorting") - volume(d_clean, "sorting"))
    corr = _correlation(volume(d_clean, "none"), clean.ground_truth)
    corr_filtered = _correlation(volume(d_clean, "sorting"), clean.ground_truth)
    print(f"\nbad-column artefact RMS {rings_before:.3e} → {rings_after:.3e} "
          f"({rings_before / rings_after:.1f}×); clean scan's correlation {corr:.4f} → {corr_filtered:.4f}")
    assert rings_before >= 5 * rings_after
    assert corr_filtered >= corr


def test_sorting_removes_a_column_offset(cpu_backend):
    # Sinograms whose columns hold the same values in different angular orders (a sample
    # seen alike by neighbouring columns): an offset on one column is removed exactly.
    rng = np.random.default_rng(3)
    values = np.sort(rng.uniform(0, 1, 90))
    sinograms = np.stack([rng.permutation(values) for _ in range(2 * 64)], axis=1)
    sinograms = sinograms.reshape(90, 2, 64).astype(np.float32)
    striped = sinograms.copy()
    striped[:, :, 40] += 0.05
    np.testing.assert_allclose(remove_stripes_sorting(striped, cpu_backend, 5), sinograms, atol=1e-6)


def test_names_and_errors(cpu_backend):
    assert RING_FILTERS == SETTING_NAMES  # shared/ cannot import workers/: kept equal here
    data = np.ones((4, 2, 8), np.float32)
    assert remove_stripes("none", data, cpu_backend) is not None
    with pytest.raises(ValueError, match="unknown ring filter"):
        remove_stripes("wavelet", data, cpu_backend)
    with pytest.raises(ValueError):
        remove_stripes_sorting(np.ones((1, 2, 8)), cpu_backend)
