"""Changing the FBP window of ramp-filtered projections (workers/refilter.py)."""

import numpy as np
import pytest

from analytic import ellipse_sinogram

from holostream.service.daemon.centre import recentred_volume
from holostream.workers.backend import get_backend
from holostream.workers.fbp import WINDOWS, RampFilter, angle_weights, reconstruct
from holostream.workers.refilter import WindowChange

CPU = get_backend("cpu", threads=2)
ANGLES = np.deg2rad(np.linspace(0, 180, 180, endpoint=False))
ACCEPTED = [("ram-lak", w) for w in WINDOWS] + [("shepp-logan", w) for w in WINDOWS] + [("cosine", "hann")]
REFUSED = [("hann", "ram-lak"), ("hann", "shepp-logan"), ("hann", "cosine"), ("cosine", "ram-lak")]


@pytest.mark.parametrize("old,new", ACCEPTED)
def test_refiltered_volume_equals_the_one_filtered_with_the_new_window(old, new):
    sinogram = ellipse_sinogram(ANGLES)
    n = sinogram.shape[-1]
    groups = {i: (a, w, 1) for i, (a, w) in enumerate(zip(ANGLES, angle_weights(ANGLES)))}
    want = reconstruct(sinogram, ANGLES, 0.0, CPU, window=new)
    got = recentred_volume(RampFilter(n, CPU, old)(sinogram), groups, 0.0, want.shape, CPU,
                           final=True, refilter=WindowChange(n, CPU, old, new))
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    inside = np.hypot(yy, xx) < n / 2 - 2  # the field of view
    # only the ramp's tails outside the detector are missing: 2e-4 of the largest value
    assert np.abs(got - want)[:, inside].max() < 2e-4 * np.abs(want).max()
    if old != new:  # and the change is real: the volume made with the old window differs
        before = reconstruct(sinogram, ANGLES, 0.0, CPU, window=old)
        assert np.abs(before - want)[:, inside].max() > 20 * np.abs(got - want)[:, inside].max()


@pytest.mark.parametrize("old,new", REFUSED)
def test_frequencies_the_old_window_removed_cannot_come_back(old, new):
    with pytest.raises(ValueError, match=f"filtered with '{old}'.*next scan"):
        WindowChange(64, CPU, old, new)


def test_same_window_is_the_identity_and_bad_input_is_named():
    rows = np.random.default_rng(1).standard_normal((3, 4, 64)).astype(np.float32)
    assert np.array_equal(WindowChange(64, CPU, "hann", "hann")(rows), rows)
    with pytest.raises(ValueError, match="'gauss'"):
        WindowChange(64, CPU, "ram-lak", "gauss")
    with pytest.raises(ValueError, match="width: expected 64, got 32"):
        WindowChange(64, CPU, "ram-lak", "hann")(rows[..., :32])
