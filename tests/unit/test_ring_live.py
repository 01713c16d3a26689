"""The streaming ring filter ("column-mean"): scored on bad columns, and the live identity.

The live daemon never holds the unfiltered sinogram: it subtracts the back-projection of the
ramp-filtered stripes (:func:`ring_volume`) from a volume of unfiltered-for-rings
projections. These tests check that this equals filtering the whole sinogram first, and
that the filter removes the rings of a scan with bad columns (test_ring.py's scans).
Run with ``-s`` to see the numbers.
"""

import math

import numpy as np
import pytest

from holostream.workers.fbp import RampFilter, angle_weights, reconstruct
from holostream.workers.ring import (STREAMING_RING_FILTERS, column_stripes, remove_stripes,
                                     ring_volume)

from test_ring import BAD_COLUMNS, _correlation, _delta, _rms, _scan


def test_column_mean_removes_rings_five_times_without_loss(cpu_backend):
    clean, bad = _scan(), _scan(BAD_COLUMNS)
    angles = np.radians(clean.angles_deg)
    d_clean, d_bad = _delta(clean, cpu_backend, "none"), _delta(bad, cpu_backend, "none")

    def volume(delta, ring):
        return reconstruct(remove_stripes(ring, delta, cpu_backend), angles, 0.0, cpu_backend)

    before = _rms(volume(d_bad, "none") - volume(d_clean, "none"))
    after = _rms(volume(d_bad, "column-mean") - volume(d_clean, "column-mean"))
    corr = _correlation(volume(d_clean, "none"), clean.ground_truth)
    corr_filtered = _correlation(volume(d_clean, "column-mean"), clean.ground_truth)
    print(f"\ncolumn-mean: bad-column artefact RMS {before:.3e} → {after:.3e} ({before / after:.1f}×); "
          f"clean scan's correlation {corr:.4f} → {corr_filtered:.4f}")
    assert before >= 5 * after
    assert corr_filtered >= corr


@pytest.mark.parametrize("center_px", [0.0, 3.4])
def test_subtracting_the_stripes_volume_equals_filtering_the_sinogram(cpu_backend, center_px):
    rng = np.random.default_rng(5)
    n_angles, rows, cols = 60, 3, 48
    angles = np.linspace(0.0, math.pi, n_angles, endpoint=False)
    sinogram = rng.normal(0.0, 1.0, (n_angles, rows, cols)).astype(np.float32)
    sinogram[:, :, [7, 30]] += np.float32(0.8)  # two bad columns
    weights = angle_weights(angles)
    mean = np.tensordot(weights, sinogram, axes=1) / weights.sum()
    stripes = column_stripes(mean, cpu_backend)
    assert abs(stripes[:, 7].mean() - 0.8) < 0.3  # the offset is found on its column

    ramp = RampFilter(cols, cpu_backend)
    whole = reconstruct(sinogram - stripes[None], angles, center_px, cpu_backend)
    live = reconstruct(sinogram, angles, center_px, cpu_backend) - ring_volume(
        ramp(stripes[None])[0], angles, weights, center_px, whole.shape, cpu_backend)
    np.testing.assert_allclose(live, whole, atol=2e-5 * np.abs(whole).max())


def test_column_stripes_errors(cpu_backend):
    assert STREAMING_RING_FILTERS == ("column-mean",)
    with pytest.raises(ValueError, match="mean projection"):
        column_stripes(np.ones((2, 3, 8)), cpu_backend)
    with pytest.raises(ValueError, match="angles and weights"):
        ring_volume(np.ones((2, 8)), [0.0, 1.0], [0.5], 0.0, (2, 8, 8), cpu_backend)
