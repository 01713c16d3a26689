"""Pixel and angle binning: shapes, means, and where the rotation axis goes."""

import numpy as np
import pytest

from holostream.workers.binning import angle_groups, bin_angles, bin_pixels, binned_center_px


def test_bin_pixels_means_and_crop():
    a = np.arange(2 * 7 * 10, dtype=np.uint16).reshape(2, 7, 10)
    out = bin_pixels(a, 3, np)
    assert out.shape == (2, 2, 3) and out.dtype == np.float32
    # block (1, 2) of frame 1: rows 3..5, cols 6..8
    assert out[1, 1, 2] == pytest.approx(a[1, 3:6, 6:9].mean())
    # the cropped row 6 and column 9 never enter
    a2 = a.astype(np.float32)
    a2[:, 6, :] = 1e9
    a2[:, :, 9] = 1e9
    np.testing.assert_array_equal(bin_pixels(a2, 3, np), out)


def test_bin_pixels_keeps_the_mean_of_a_smooth_field():
    rows, cols = np.mgrid[0:64, 0:64]
    field = (1.0 + 0.01 * rows + 0.02 * cols).astype(np.float32)
    out = bin_pixels(field, 4, np)
    centre_r = np.arange(16) * 4 + 1.5
    centre_c = np.arange(16) * 4 + 1.5
    expected = 1.0 + 0.01 * centre_r[:, None] + 0.02 * centre_c[None, :]
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_bin_one_is_float32():
    a = np.ones((3, 4), np.uint16)
    out = bin_pixels(a, 1, np)
    assert out.dtype == np.float32 and out.shape == (3, 4)
    f = np.ones((3, 4), np.float32)
    assert np.shares_memory(bin_pixels(f, 1, np), f)


def test_bin_pixels_rejects_bad_factors():
    with pytest.raises(ValueError, match="bin factor"):
        bin_pixels(np.ones((4, 4)), 0, np)
    with pytest.raises(ValueError, match="bin factor"):
        bin_pixels(np.ones((4, 4)), 5, np)


@pytest.mark.parametrize("cols, b, cor_px", [(128, 1, 0.0), (128, 4, 2.5), (130, 4, 0.0), (131, 3, -7.25)])
def test_point_object_keeps_its_place_relative_to_the_axis(cols, b, cor_px):
    """A point on the axis projects onto the binned axis column at every angle, and a
    point at x from the axis lands x / b binned pixels from it."""
    c0 = (cols - 1) / 2 + cor_px
    cols_b = cols // b
    c0_b = (cols_b - 1) / 2 + binned_center_px(cols, b, cor_px)
    u = np.arange(cols)
    for x in (0.0, 9.0, -13.0):
        for theta in np.deg2rad([0.0, 37.0, 90.0, 151.0]):
            # a narrow Gaussian "point" at radius x, its projection on the unbinned row
            centre = c0 + x * np.cos(theta)
            row = np.exp(-0.5 * ((u - centre) / 4.0) ** 2)[None, :]
            binned = bin_pixels(np.repeat(row, b, axis=0), b, np)[0]
            centroid_b = (binned * np.arange(cols_b)).sum() / binned.sum()
            assert centroid_b == pytest.approx(c0_b + x * np.cos(theta) / b, abs=1e-5)


def test_angle_groups_with_remainder():
    groups = angle_groups(10, 3)
    assert [list(g) for g in groups] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert angle_groups(9, 3)[-1] == range(6, 9)
    assert angle_groups(2, 5) == [range(0, 2)]
    with pytest.raises(ValueError):
        angle_groups(0, 3)


def test_bin_angles_means():
    rng = np.random.default_rng(3)
    stack = rng.uniform(size=(7, 4, 5)).astype(np.float32)
    angles = np.linspace(0.0, 6.0, 7)
    stack_b, angles_b = bin_angles(stack, angles, 3, np)
    assert stack_b.shape == (3, 4, 5) and stack_b.dtype == np.float32
    np.testing.assert_allclose(stack_b[0], stack[0:3].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stack_b[2], stack[6], rtol=1e-6)
    np.testing.assert_allclose(angles_b, [1.0, 4.0, 6.0])


def test_bin_angles_checks_angle_count():
    with pytest.raises(ValueError, match=r"expected \(4,\), got \(3,\)"):
        bin_angles(np.zeros((4, 2, 2)), [0, 1, 2], 2, np)
