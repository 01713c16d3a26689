"""The compiled CPU back-projector against the array-operation reference.

Both compute ``Σ_i w_i · q_i(c0 + x cos θ_i + y sin θ_i)`` with linear interpolation; they
differ in the order of the float32 sums and in the precision of ``u`` (float64 in the kernel,
float32 in the reference), so they agree to float32 round-off, not bit for bit.
"""

import numpy as np
import pytest

from holostream.workers import backprojection
from holostream.workers.backend import get_backend
from holostream.workers.backprojection import backproject
from holostream.workers.backprojection_numba import SLAB_ROWS, backproject_numba, weighted_table

CPU1 = get_backend("cpu", threads=1)
CPU2 = get_backend("cpu", threads=2)


def random_case(b, nz, cols, seed=0):
    rng = np.random.default_rng(seed)
    filtered = rng.standard_normal((b, nz, cols)).astype(np.float32)
    # angles anywhere (also beyond π and negative) and the axis-aligned ones exactly
    angles = np.concatenate([[0.0, np.pi / 2, np.pi, -np.pi / 4], rng.uniform(-np.pi, 2 * np.pi, b)])[:b]
    weights = rng.uniform(0.01, 0.2, b)
    return filtered, angles, weights


def both(shape, filtered, angles, weights, center_px, backend=CPU1, start=None):
    """The kernel (called directly: ``backproject`` sends 1-2 rows to the reference) and the reference."""
    ours = np.zeros(shape, np.float32) if start is None else start.copy()
    ref = ours.copy()
    filtered = np.asarray(filtered, np.float32)
    c0 = (filtered.shape[-1] - 1) / 2 + center_px
    backproject_numba(ours, filtered, np.asarray(angles, np.float64), np.asarray(weights, np.float64), c0,
                      backend.threads)
    backproject(ref, filtered, angles, weights, center_px, CPU1, reference=True)
    return ours, ref


def assert_float32_close(ours, ref):
    scale = np.abs(ref).max()
    assert scale > 0
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-5 * scale)


@pytest.mark.parametrize("nz", [1, 5, SLAB_ROWS, SLAB_ROWS + 8])
@pytest.mark.parametrize("n, cols, center_px", [(24, 24, 0.0), (31, 24, 2.7), (16, 33, -3.25)])
def test_kernel_matches_reference(nz, n, cols, center_px):
    filtered, angles, weights = random_case(12, nz, cols)
    assert_float32_close(*both((nz, n, n), filtered, angles, weights, center_px))


def test_kernel_adds_to_the_volume_and_threads_agree():
    filtered, angles, weights = random_case(9, 40, 48, seed=1)
    start = np.random.default_rng(2).standard_normal((40, 48, 48)).astype(np.float32)
    one, ref = both(start.shape, filtered, angles, weights, 0.5, CPU1, start)
    two, _ = both(start.shape, filtered, angles, weights, 0.5, CPU2, start)
    assert_float32_close(one - start, ref - start)
    np.testing.assert_allclose(one, two, rtol=0, atol=1e-6 * np.abs(one).max())


@pytest.mark.parametrize("b, nz, n, kernel_expected", [
    (5, 2, 1000, False),  # 1-2 rows: the reference is faster
    (5, 3, 600, False),  # 5.4 M voxel updates: milliseconds either way, no kernel to load
    (5, 3, 1100, True),  # 18 M voxel updates
])
def test_backproject_chooses_the_kernel_for_large_calls_only(b, nz, n, kernel_expected, monkeypatch):
    monkeypatch.setattr(backprojection, "_LOADED", set())  # as in a fresh process
    filtered, angles, weights = random_case(b, nz, n, seed=4)
    via_api = np.zeros((nz, n, n), np.float32)
    backproject(via_api, filtered, angles, weights, 0.0, CPU1)
    ours, ref = both(via_api.shape, filtered, angles, weights, 0.0)
    np.testing.assert_array_equal(via_api, ours if kernel_expected else ref)


def test_once_loaded_the_kernel_serves_small_calls_too(monkeypatch):
    monkeypatch.setattr(backprojection, "_LOADED", {"cpu"})
    filtered, angles, weights = random_case(5, 3, 40, seed=5)
    via_api = np.zeros((3, 40, 40), np.float32)
    backproject(via_api, filtered, angles, weights, 0.0, CPU1)
    ours, _ = both(via_api.shape, filtered, angles, weights, 0.0)
    np.testing.assert_array_equal(via_api, ours)


def test_one_call_with_many_angles_equals_one_call_per_angle():
    filtered, angles, weights = random_case(7, 6, 20, seed=3)
    batch = np.zeros((6, 20, 20), np.float32)
    backproject(batch, filtered, angles, weights, 1.0, CPU1)
    single = np.zeros_like(batch)
    for i in range(7):
        backproject(single, filtered[i], angles[i], weights[i], 1.0, CPU1)
    np.testing.assert_allclose(batch, single, rtol=0, atol=1e-5 * np.abs(batch).max())


def test_outside_the_detector_contributes_nothing():
    # a 4-column detector (u = 0 … 3, axis at 1.5) in a 40² slice, θ = 0: u = 1.5 + x is
    # inside (-1, 4), where interpolation reaches a detector value, for x = -1.5 … 1.5 only
    filtered = np.ones((1, 1, 4), np.float32)
    ours, ref = both((1, 40, 40), filtered, [0.0], [1.0], 0.0)
    columns = np.flatnonzero(ours[0].any(axis=0))
    np.testing.assert_array_equal(columns, np.flatnonzero(ref[0].any(axis=0)))
    assert columns.tolist() == list(range(18, 22))  # x = i - 19.5: i = 18 … 21
    assert_float32_close(ours, ref)


def test_weighted_table_layout():
    filtered = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    table = weighted_table(filtered, np.array([1.0, 2.0]))
    assert table.shape == (1, 2, 4 + 3, SLAB_ROWS)
    np.testing.assert_array_equal(table[0, 1, 1:5, :3], 2 * filtered[1].T)
    assert not table[0, :, [0, 5, 6]].any() and not table[0, :, :, 3:].any()
