"""The streaming ring filter ("column-mean"): scored on bad columns, and the live identity.

Stripes are estimated on the mean ``-ln T`` (before phase retrieval, where a bad column is
one column wide) and their effect on the filtered projections is subtracted from the volume
as a back-projection (:func:`stripes_volume`), as the live daemon and ``reconstruct`` do.
Scored like test_ring.py: the same scan with and without bad columns (shared noise), the
difference of their volumes is the bad columns' artefact alone. Run with ``-s`` to see the
numbers.
"""

import math

import numpy as np
import pytest

from holostream.workers.fbp import RampFilter, angle_weights, reconstruct
from holostream.workers.ring import (STREAMING_RING_FILTERS, absorption, angle_half, column_stripes,
                                     remove_stripes, ring_volume, stripes_volume)

from test_ring import BAD_COLUMNS, _correlation, _pipeline_and_transmissions, _rms, _scan


def _volume(scan, backend, phase, ring):
    """Reconstruct ``scan`` (projections one by one) with the ring filter or not."""
    pipe, transmissions = _pipeline_and_transmissions(scan, backend, phase)
    angles = np.radians(scan.angles_deg)
    volume = reconstruct(pipe.delta_from_transmission(transmissions), angles, 0.0, backend)
    if ring == "none":
        return volume
    weights = angle_weights(angles)
    halves = np.array([angle_half(a) for a in angles])
    means = np.stack([np.tensordot(weights[halves == h], absorption(transmissions[halves == h], backend),
                                   axes=1) / weights[halves == h].sum() for h in (0, 1)])
    return volume - stripes_volume(pipe, means, None, angles, weights, 0.0, volume.shape, backend)


@pytest.mark.parametrize("distance_m, phase, at_least", [
    (1e-4, "none", 8.0),      # contact regime: stripes stay one column wide everywhere
    (2e-3, "paganin", 5.0),   # phase retrieval: the stripe is a band in δ, one column in T
])
def test_column_mean_removes_rings_five_times(cpu_backend, distance_m, phase, at_least):
    clean, bad = _scan(distance_m=distance_m), _scan(BAD_COLUMNS, distance_m=distance_m)
    before = _rms(_volume(bad, cpu_backend, phase, "none") - _volume(clean, cpu_backend, phase, "none"))
    clean_filtered = _volume(clean, cpu_backend, phase, "column-mean")
    bad_filtered = _volume(bad, cpu_backend, phase, "column-mean")
    after = _rms(bad_filtered - clean_filtered)
    truth = clean.ground_truth
    corr = _correlation(_volume(clean, cpu_backend, phase, "none"), truth)
    corr_bad = _correlation(_volume(bad, cpu_backend, phase, "none"), truth)
    corr_filtered, corr_bad_filtered = _correlation(clean_filtered, truth), _correlation(bad_filtered, truth)
    print(f"\n{phase} at {distance_m * 1e3:g} mm: bad-column artefact RMS {before:.3e} → {after:.3e} "
          f"({before / after:.1f}×); correlation with the truth: clean scan {corr:.4f} → "
          f"{corr_filtered:.4f}, bad-column scan {corr_bad:.4f} → {corr_bad_filtered:.4f}")
    assert before >= at_least * after
    assert corr_bad_filtered > corr_bad
    if phase == "none":
        assert corr_filtered >= corr
    else:  # measured: -0.0002 (fine structure of the sample that both angle sets show alike)
        assert corr_filtered >= corr - 0.0005


@pytest.mark.parametrize("center_px", [0.0, 3.4])
def test_subtracting_the_stripes_volume_equals_filtering_the_sinogram(cpu_backend, center_px):
    rng = np.random.default_rng(5)
    n_angles, rows, cols = 60, 3, 48
    angles = np.linspace(0.0, math.pi, n_angles, endpoint=False)
    sinogram = rng.normal(0.0, 0.2, (n_angles, rows, cols)).astype(np.float32)
    sinogram[:, :, [7, 30]] += np.float32(0.8)  # two bad columns
    weights = angle_weights(angles)
    halves = np.array([angle_half(a) for a in angles])
    means = np.stack([sinogram[halves == h].mean(axis=0) for h in (0, 1)])
    stripes = column_stripes(means, cpu_backend)
    assert abs(stripes[:, 7].mean() - 0.8) < 0.3  # the offset is found on its column

    ramp = RampFilter(cols, cpu_backend)
    whole = reconstruct(sinogram - stripes[None], angles, center_px, cpu_backend)
    live = reconstruct(sinogram, angles, center_px, cpu_backend) - ring_volume(
        ramp(stripes[None])[0], angles, weights, center_px, whole.shape, cpu_backend)
    np.testing.assert_allclose(live, whole, atol=2e-5 * np.abs(whole).max())


def test_stripes_are_what_both_angle_sets_show():
    from holostream.workers.backend import get_backend

    cpu = get_backend("cpu", threads=1)
    first, second = np.zeros((1, 16), np.float32), np.zeros((1, 16), np.float32)
    first[0, 5] = second[0, 5] = 0.3                   # a stripe: in both
    first[0, 9], second[0, 9] = 0.2, 0.05              # in both, unequal: the smaller
    first[0, 12], second[0, 12] = 0.2, -0.1            # opposite signs: the sample's, not a stripe
    stripes = column_stripes(np.stack([first, second]), cpu)
    assert stripes[0, 5] == pytest.approx(0.3) and stripes[0, 9] == pytest.approx(0.05)
    assert stripes[0, 12] == 0.0
    assert [angle_half(math.radians(a)) for a in (0, 89, 90, 179, 180, 269, 270, -10)] == [0, 0, 1, 1, 0, 0, 1, 1]


def test_column_stripes_errors(cpu_backend):
    assert STREAMING_RING_FILTERS == ("column-mean",)
    with pytest.raises(ValueError, match="mean projections"):
        column_stripes(np.ones((2, 3, 2, 8)), cpu_backend)
    with pytest.raises(ValueError, match="stripes_volume"):
        remove_stripes("column-mean", np.ones((4, 2, 8)), cpu_backend)
    with pytest.raises(ValueError, match="angles and weights"):
        ring_volume(np.ones((2, 8)), [0.0, 1.0], [0.5], 0.0, (2, 8, 8), cpu_backend)


def test_retuned_volumes_keep_the_stripes_only_where_they_are_known(cpu_backend):
    """A new filter rescales the stripes like the projections; a new δ/β or chain drops them."""
    from holostream.service.daemon.rings import stripes_for
    from holostream.workers.refilter import WindowChange

    stripes = np.random.default_rng(1).normal(size=(4, 64)).astype(np.float32)
    base = {"filter": "ram-lak", "delta_beta": 200.0, "phase": "paganin"}
    assert stripes_for(stripes, base, dict(base), cpu_backend) is stripes
    assert stripes_for(None, base, dict(base), cpu_backend) is None
    hann = stripes_for(stripes, base, {**base, "filter": "hann"}, cpu_backend)
    np.testing.assert_allclose(hann, WindowChange(64, cpu_backend, "ram-lak", "hann")(stripes), atol=1e-6)
    assert not np.allclose(hann, stripes)
    assert stripes_for(stripes, base, {**base, "delta_beta": 400.0}, cpu_backend) is None
    assert stripes_for(stripes, base, {**base, "phase": "ctf"}, cpu_backend) is None
    sharper = {**base, "filter": "hann"}  # frequencies hann removed cannot come back
    assert stripes_for(stripes, sharper, {**sharper, "filter": "ram-lak"}, cpu_backend) is None
