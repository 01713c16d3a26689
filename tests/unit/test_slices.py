"""``--slices`` parsing and the vertical-plane back-projection against the whole-volume one."""

import numpy as np
import pytest

from holostream.service.slices import parse_slices, plane
from holostream.workers import fbp
from holostream.workers.backend import get_backend


def test_parse_slices():
    assert parse_slices("z:32, y:64,x:0") == [("z", 32), ("y", 64), ("x", 0)]
    for text in ("", "z", "q:3", "z:-1", "z:1.5", "z:3,,y:2"):
        with pytest.raises(ValueError, match="AXIS:INDEX"):
            parse_slices(text)


@pytest.mark.parametrize("axis", ["y", "x"])
def test_plane_is_the_cut_of_the_back_projected_volume(axis):
    backend = get_backend("cpu", threads=1)
    rng = np.random.default_rng(1)
    filtered = rng.standard_normal((7, 5, 24)).astype(np.float32)
    angles, weights = rng.uniform(0, np.pi, 7), rng.uniform(0.1, 0.5, 7)
    n, center = 30, 2.7  # a grid wider than the detector: samples outside it count 0
    volume = np.zeros((5, n, n), np.float32)
    fbp.backproject(volume, filtered, angles, weights, center, backend)
    for index in (0, 11, n - 1):
        expected = volume[:, index] if axis == "y" else volume[:, :, index]
        got = plane(filtered, angles, weights, center, n, axis, index, backend)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
