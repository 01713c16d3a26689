"""Flat-field correction: transmission from counts, guards, drift interpolation."""

import numpy as np
import pytest

from holostream.workers.backend import get_backend
from holostream.workers.flatfield import TRANSMISSION_FLOOR, FlatField, average_frames

BACKEND = get_backend("cpu", threads=1)


def test_average_frames_is_exact_for_many_uint16_frames():
    rng = np.random.default_rng(0)
    frames = rng.integers(60000, 65535, size=(300, 8, 8), dtype=np.uint16)
    mean = average_frames(frames, BACKEND)
    assert mean.dtype == np.float32 and mean.shape == (8, 8)
    np.testing.assert_allclose(mean, frames.astype(np.float64).mean(axis=0), rtol=1e-7)


def test_average_frames_rejects_a_single_image():
    with pytest.raises(ValueError, match="stack"):
        average_frames(np.zeros((8, 8)), BACKEND)


def test_transmission_of_a_known_object():
    rng = np.random.default_rng(1)
    dark = rng.uniform(90, 110, size=(16, 16)).astype(np.float32)
    beam = rng.uniform(1000, 3000, size=(16, 16))
    transmission = rng.uniform(0.2, 1.0, size=(4, 16, 16))
    raw = np.round(dark + transmission * beam).astype(np.uint16)
    out = FlatField(dark, dark + beam, BACKEND)(raw)
    assert out.dtype == np.float32 and out.shape == raw.shape
    # rounding raw to integer counts is the only error: ≤ 0.5 / beam
    np.testing.assert_allclose(out, transmission, atol=0.5 / 1000 + 1e-6)


def test_dead_pixels_give_one_and_dark_pixels_stay_positive():
    dark = np.full((4, 4), 100.0, np.float32)
    flat = np.full((4, 4), 1100.0, np.float32)
    flat[0, 0] = 100.0  # zero denominator
    flat[0, 1] = 50.0  # negative denominator
    flat[0, 2] = 100.5  # below min_denominator = 1 count
    raw = np.full((4, 4), 600.0, np.float32)
    raw[1, 1] = 80.0  # noise below the dark: numerator < 0
    raw[1, 2] = 100.0  # numerator exactly 0
    out = FlatField(dark, flat, BACKEND)(raw)
    np.testing.assert_array_equal(out[0, :3], 1.0)
    assert out[0, 3] == pytest.approx(0.5)
    assert out[1, 1] == pytest.approx(TRANSMISSION_FLOOR) and out[1, 2] == pytest.approx(TRANSMISSION_FLOOR)
    assert np.all(np.isfinite(np.log(out)))


def test_flat_after_is_interpolated_by_projection_index():
    dark = np.zeros((2, 3), np.float32)
    before = np.full((2, 3), 1000.0, np.float32)
    after = np.full((2, 3), 2000.0, np.float32)  # beam doubled during the scan
    correction = FlatField(dark, before, BACKEND, flat_after=after)
    n = 11
    index = np.array([0, 5, 10])
    beam = 1000.0 * (1.0 + index / (n - 1))
    raw = (0.5 * beam)[:, None, None] * np.ones((3, 2, 3))
    out = correction(raw, index=index, n_projections=n)
    np.testing.assert_allclose(out, 0.5, rtol=1e-6)
    # one frame with a scalar index
    assert correction(raw[1], index=5, n_projections=n)[0, 0] == pytest.approx(0.5)
    # without drift correction the middle frame would read 0.75
    assert FlatField(dark, before, BACKEND)(raw[1])[0, 0] == pytest.approx(0.75)


def test_flat_after_needs_the_index():
    correction = FlatField(np.zeros((2, 2)), np.ones((2, 2)) * 10, BACKEND, flat_after=np.ones((2, 2)))
    with pytest.raises(ValueError, match="index"):
        correction(np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"expected \(2,\), got \(3,\)"):
        correction(np.ones((2, 2, 2)), index=[0, 1, 2], n_projections=5)


def test_shape_mismatches_say_expected_and_got():
    with pytest.raises(ValueError, match=r"flat shape: expected \(4, 4\), got \(4, 5\)"):
        FlatField(np.zeros((4, 4)), np.ones((4, 5)), BACKEND)
    correction = FlatField(np.zeros((4, 4)), np.ones((4, 4)) * 10, BACKEND)
    with pytest.raises(ValueError, match=r"expected \(4, 4\).*got \(4, 3\)"):
        correction(np.ones((4, 3)))
    with pytest.raises(ValueError, match="min_denominator"):
        FlatField(np.zeros((4, 4)), np.ones((4, 4)), BACKEND, min_denominator=-1)


@pytest.mark.parametrize("chunk_rows", [None, 1, 7, 48, 10_000])
def test_binned_in_chunks_equals_correct_then_bin(chunk_rows):
    from holostream.workers.binning import bin_pixels

    backend = get_backend("cpu")
    rng = np.random.default_rng(5)
    dark = rng.uniform(90, 110, (50, 38)).astype(np.float32)
    flat = rng.uniform(800, 1200, (50, 38)).astype(np.float32)
    flat[3, 4] = dark[3, 4]  # a dead pixel: no information there
    raw = rng.integers(0, 1500, (4, 50, 38)).astype(np.uint16)
    ff = FlatField(dark, flat, backend)
    expected = bin_pixels(ff(raw), 3, np)
    got = ff.binned(raw, 3, chunk_rows=chunk_rows)
    assert got.shape == (4, 16, 12)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
