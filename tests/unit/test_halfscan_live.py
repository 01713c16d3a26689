"""Which live scans defer their centre, and the deferred volume's width and weights."""

import numpy as np
import pytest

from holostream.service.daemon.halfscan import centre_deferred, deferred_columns, deferred_volume
from holostream.shared.messages import ScanInfo
from holostream.workers.fbp import RampFilter


def _info(**kw):
    base = dict(scan_id="s", shape=(8, 64), dtype="uint16", n_darks=1, n_flats=1, n_projections=120,
                energy_kev=17.5, distance_m=0.05, pixel_size_m=1e-6, delta_beta=200.0)
    return ScanInfo(**{**base, **kw})


def test_only_a_360_scan_without_axis_and_with_announced_angles_is_deferred():
    assert centre_deferred(_info(angle_start_deg=0.0, angle_step_deg=3.0))
    assert not centre_deferred(_info(angle_start_deg=0.0, angle_step_deg=3.0, cor_px=20.0))  # given
    assert not centre_deferred(_info(angle_start_deg=0.0, angle_step_deg=1.5))  # 180°
    assert not centre_deferred(_info())  # angles come with the frames


def test_the_axis_decides_width_and_weights(cpu_backend):
    assert deferred_columns(64, 3.0) is None  # near the middle: an ordinary 360° scan
    weights = deferred_columns(64, 20.0)
    assert weights.shape == (64,) and weights.max() == pytest.approx(2.0)
    rng = np.random.default_rng(0)
    deltas = rng.normal(0, 1, (40, 2, 64)).astype(np.float32)
    angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    groups = {g: (float(a), np.pi / 20, 1) for g, a in enumerate(angles)}
    ramp = RampFilter(64, cpu_backend)
    assert deferred_volume(deltas, groups, 20.0, ramp, cpu_backend, final=True).shape == (2, 104, 104)
    assert deferred_volume(deltas, groups, 3.0, ramp, cpu_backend, final=False).shape == (2, 64, 64)
    with pytest.raises(ValueError, match="at least one"):
        deferred_volume(deltas, {}, 20.0, ramp, cpu_backend, final=True)
