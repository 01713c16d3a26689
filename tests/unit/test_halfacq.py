"""360° offset-axis (half-acquisition) scans: weights, volume size, and a whole reconstruction
against a full-field scan of the same sample. Run with ``-s`` for the numbers.
"""

import numpy as np
import pytest

from holostream.service.files.nxtomo import scan_data_from_simulation
from holostream.service.offline import reconstruct_scan
from holostream.shared.settings import ReconstructionSettings
from holostream.workers.halfacq import detector_weights, is_half_acquisition, volume_width
from holostream.workers.phantom import random_phantom
from holostream.workers.simulate import ScanGeometry, ground_truth, simulate_scan

ROWS, COLS, PIXEL_M, OFFSET_PX = 8, 64, 1e-6, 20.0


@pytest.mark.parametrize("center_px", [20.0, -17.5, 26.25])
def test_weights_count_every_ray_once(center_px):
    w = detector_weights(COLS, center_px)
    axis = (COLS - 1) / 2 + center_px
    s = np.arange(COLS) - axis
    reach = min(axis, COLS - 1 - axis)
    for i in np.flatnonzero(np.abs(s) <= reach):  # seen at θ and θ + 180°: weights sum to 2
        mirror = np.interp(-s[i], s, w)
        assert w[i] + mirror == pytest.approx(2.0, abs=0.02)  # mirror interpolated linearly
    long_side = s > reach if center_px < 0 else s < -reach
    assert np.all(w[long_side] == pytest.approx(2.0)) and w.min() >= 0.0


def test_volume_width_and_detection():
    assert volume_width(COLS, OFFSET_PX) == 2 * int(np.ceil(31.5 + 20 + 0.5))
    assert volume_width(COLS, -OFFSET_PX) == volume_width(COLS, OFFSET_PX)
    full = np.linspace(0, 360, 90, endpoint=False)
    assert is_half_acquisition(full, COLS, OFFSET_PX)
    assert not is_half_acquisition(full, COLS, 10.0)  # within a quarter of the width
    assert not is_half_acquisition(np.linspace(0, 180, 90, endpoint=False), COLS, OFFSET_PX)


def test_offset_axis_scan_reconstructs_the_whole_disc(cpu_backend):
    n = volume_width(COLS, OFFSET_PX)
    phantom = random_phantom(4, 0.45 * n * PIXEL_M, 5 * ROWS * PIXEL_M, n_objects=14)
    angles = np.linspace(0.0, 360.0, 240, endpoint=False)
    common = dict(angles_deg=angles, rows=ROWS, pixel_size_m=PIXEL_M, binning=None, n_darks=2,
                  n_flats=4, seed=3)
    half = simulate_scan(phantom, cols=COLS, cor_px=OFFSET_PX, **common)
    full = simulate_scan(phantom, cols=n, cor_px=0.0, **common)  # a detector as wide as the disc
    truth = ground_truth(phantom, ScanGeometry(ROWS, n, PIXEL_M, 0.05, 17.5), 1)
    settings = ReconstructionSettings()
    volume, attrs = reconstruct_scan(scan_data_from_simulation(half), settings, 200.0, OFFSET_PX,
                                     cpu_backend)
    reference, _ = reconstruct_scan(scan_data_from_simulation(full), settings, 200.0, 0.0, cpu_backend)
    assert attrs["half_acquisition"] and volume.shape == (ROWS, n, n)
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    disc = np.hypot(yy, xx) < n / 2 - 2

    def corr(v):
        return float(np.corrcoef(v[:, disc].ravel(), truth[:, disc].ravel())[0, 1])

    print(f"\nhalf-acquisition ({COLS} columns, axis +{OFFSET_PX:g}): corr {corr(volume):.4f}; "
          f"full detector of {n} columns: {corr(reference):.4f}")
    assert corr(volume) >= corr(reference) - 0.02
