"""Scaling the distances to the reference pixel and sub-pixel registration (workers/registration.py)."""

import numpy as np
import pytest
import scipy.ndimage

from holostream.workers.backend import get_backend
from holostream.workers.registration import (ScaleToReference, measure_shifts,
                                             phase_correlation_shift)

CPU = get_backend("cpu", threads=1)


def fourier_shift(image, shift):
    """``image(p - shift)`` by the Fourier shift theorem (exact for band-limited images)."""
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.fftfreq(image.shape[1])[None, :]
    ramp = np.exp(-2j * np.pi * (fy * shift[0] + fx * shift[1]))
    return np.fft.ifft2(np.fft.fft2(image) * ramp).real


@pytest.fixture(scope="module")
def texture():
    rng = np.random.default_rng(7)
    return scipy.ndimage.gaussian_filter(rng.normal(size=(96, 128)), 2.5)


@pytest.mark.parametrize("shift", [(0.0, 0.0), (1.37, -2.71), (-0.04, 0.93), (-7.3, 4.45), (12.5, -0.5)])
def test_known_shifts_are_recovered_within_a_tenth_of_a_pixel(texture, shift):
    rng = np.random.default_rng(1)
    moving = fourier_shift(texture, shift) + rng.normal(scale=0.05 * texture.std(), size=texture.shape)
    measured = phase_correlation_shift(texture, moving, CPU, upsample=100)
    assert np.allclose(measured, shift, atol=0.1), measured


def test_without_upsampling_the_shift_is_the_nearest_integer(texture):
    measured = phase_correlation_shift(texture, fourier_shift(texture, (3.2, -5.8)), CPU, upsample=1)
    assert measured == (3.0, -6.0)


def test_bad_inputs_are_rejected_with_a_reason(texture):
    with pytest.raises(ValueError, match="same 2-D shape"):
        phase_correlation_shift(texture, texture[:-1], CPU)
    with pytest.raises(ValueError, match="upsample"):
        phase_correlation_shift(texture, texture, CPU, upsample=0)
    with pytest.raises(ValueError, match="shifts_px"):
        ScaleToReference((8, 8), [1.0, 1.2], CPU, shifts_px=[[0, 0]])
    with pytest.raises(ValueError, match="pixel_sizes_m"):
        ScaleToReference((8, 8), [1.0, -1.2], CPU)
    with pytest.raises(ValueError, match="expected"):
        ScaleToReference((8, 8), [1.0, 1.2], CPU)(np.ones((3, 8, 8), np.float32))


def blobs(rows, cols, pixel_m, centre_px, shift_px=(0.0, 0.0)):
    """A smooth analytic image sampled with ``pixel_m`` about the frame centre, offset by shift_px."""
    v = (np.arange(rows) - (rows - 1) / 2 - shift_px[0]) * pixel_m
    u = (np.arange(cols) - (cols - 1) / 2 - shift_px[1]) * pixel_m
    out = np.zeros((rows, cols))
    for (cy, cx, w) in ((-8e-6, 5e-6, 4e-6), (6e-6, -9e-6, 5e-6), (0.0, 2e-6, 3e-6)):
        out += np.exp(-((v[:, None] - cy) ** 2 + (u[None, :] - cx) ** 2) / (2 * w * w))
    return out.astype(np.float32)


def test_scaling_brings_a_magnified_shifted_image_onto_the_reference_grid():
    # Distance 1 sees the sample with 1.3x larger pixels and offset by (1.5, -2.2) own pixels.
    rows, cols, p0, p1, shift = 64, 72, 0.5e-6, 0.65e-6, (1.5, -2.2)
    images = np.stack([blobs(rows, cols, p0, 0), blobs(rows, cols, p1, 0, shift)])
    scaled = ScaleToReference((rows, cols), [p0, p1], CPU, [[0, 0], shift])(images)
    np.testing.assert_array_equal(scaled[0], images[0])
    assert np.abs(scaled[1] - images[0]).max() < 0.01 * images[0].max()
    # Without the offset the result is visibly wrong: the test can fail.
    unshifted = ScaleToReference((rows, cols), [p0, p1], CPU)(images)
    assert np.abs(unshifted[1] - images[0]).max() > 0.1 * images[0].max()


def test_measure_shifts_on_scaled_holograms_of_several_distances():
    from holostream.workers.phantom import mixed_material_phantom
    from holostream.workers.multisimulate import cone_beam_distances, simulate_multidistance

    n = 48
    truth = np.array([[0, 0], [1.3, -0.8], [-0.6, 2.1]])
    distances = cone_beam_distances(0.5, [0.007, 0.0076, 0.009], 7e-6, truth)
    pixel = distances[0].effective()[2]
    phantom = mixed_material_phantom(3, 0.4 * n * pixel, 0.8 * n * pixel, n_objects=8,
                                     delta_range=(2e-6, 6e-6))
    scan = simulate_multidistance(phantom, distances, n_projections=4, rows=n, cols=n, binning=None)
    flat = [(s.projections.astype(np.float32) - s.darks.mean(0)) / (s.flats.mean(0) - s.darks.mean(0))
            for s in scan.scans]
    stack = np.stack(flat, axis=1)  # (angles, distances, rows, cols)
    effective = scan.effective
    scaled = ScaleToReference((n, n), [e[2] for e in effective], CPU)(stack)
    reference_px = measure_shifts(scaled, [e[1] for e in effective], pixel, 17.5, 200.0, CPU)
    own_px = reference_px * (pixel / np.array([e[2] for e in effective]))[:, None]
    # Holograms of different distances differ by more than a shift: 0.25 px (measured 0.12).
    assert np.abs(own_px - truth).max() < 0.25, own_px
