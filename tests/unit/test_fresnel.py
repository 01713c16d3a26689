"""Fresnel propagation: unitarity, exact inverse, analytic weak-grating contrast, scaling.

Also home of the hologram simulator the phase-retrieval tests share (``simulate``):
analytic sphere projections on a 2× supersampled, larger field, propagated with
:class:`FresnelPropagator` and binned 2×2, so that retrieval never inverts its own model.
"""

import math

import numpy as np
import pytest

from holostream.workers.backend import get_backend
from holostream.workers.fresnel import FresnelPropagator, fresnel_number
from holostream.workers.physics import wavelength_m

ENERGY_KEV = 17.5
PIXEL_M = 1e-6
CPU = get_backend("cpu", threads=1)


def project_spheres(shape, pixel_size_m, spheres):
    """Phase φ and attenuation B of spheres ``(y_m, x_m, radius_m, delta, beta)``.

    Returns two float64 arrays of ``shape``; pixel ``i`` is centred at
    ``(i - (n - 1) / 2) * pixel_size_m``.
    """
    rows, cols = shape
    y = (np.arange(rows) - (rows - 1) / 2) * pixel_size_m
    x = (np.arange(cols) - (cols - 1) / 2) * pixel_size_m
    k = 2 * math.pi / wavelength_m(ENERGY_KEV)
    phase = np.zeros(shape)
    absorption = np.zeros(shape)
    for yc, xc, radius, delta, beta in spheres:
        r2 = (y[:, None] - yc) ** 2 + (x[None, :] - xc) ** 2
        chord = 2 * np.sqrt(np.clip(radius**2 - r2, 0, None))
        phase -= k * delta * chord
        absorption += k * beta * chord
    return phase, absorption


def bin2(a):
    """Mean over 2×2 blocks of the last two axes."""
    r, c = a.shape[-2] // 2, a.shape[-1] // 2
    return a.reshape(*a.shape[:-2], r, 2, c, 2).mean(axis=(-3, -1))


def simulate(spheres, n, distance_m, photons=None, seed=0):
    """Flat-corrected hologram of ``n × n`` pixels of ``PIXEL_M`` and its true phase.

    The wave is computed at ``PIXEL_M / 2`` on a field twice as wide as the detector
    (so its periodic wrap-around lies far outside), propagated, cropped and binned 2×2.
    ``photons`` per pixel adds Poisson noise. Returns float32 ``(intensity, phase,
    absorption)``, the last two binned from the supersampled truth.
    """
    fine = 4 * n
    phase, absorption = project_spheres((fine, fine), PIXEL_M / 2, spheres)
    wave = np.exp(-absorption + 1j * phase).astype(np.complex64)
    propagator = FresnelPropagator((fine, fine), PIXEL_M / 2, distance_m, ENERGY_KEV, CPU)
    intensity = np.abs(propagator.forward(wave)) ** 2
    window = slice(n, 3 * n)
    intensity = bin2(intensity[window, window])
    if photons is not None:
        rng = np.random.default_rng(seed)
        intensity = rng.poisson(intensity * photons) / photons
    truth = bin2(phase[window, window]), bin2(absorption[window, window])
    return intensity.astype(np.float32), *(t.astype(np.float32) for t in truth)


def compare(estimate, truth):
    """Pearson correlation and least-squares scale of ``estimate`` against ``truth``."""
    e, t = np.ravel(estimate).astype(np.float64), np.ravel(truth).astype(np.float64)
    correlation = np.corrcoef(e, t)[0, 1]
    scale = np.dot(e, t) / np.dot(t, t)
    return correlation, scale


def relative_error(estimate, truth):
    """``‖estimate − truth‖ / ‖truth‖``."""
    return float(np.linalg.norm(estimate - truth) / np.linalg.norm(truth))


def random_field(shape, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)


def test_propagation_conserves_energy_and_inverts():
    propagator = FresnelPropagator((96, 80), PIXEL_M, 0.2, ENERGY_KEV, CPU)
    psi = random_field((2, 96, 80))
    out = propagator.forward(psi)
    assert out.dtype == np.complex64 and out.shape == psi.shape
    energy_in = np.sum(np.abs(psi) ** 2, axis=(-2, -1))
    np.testing.assert_allclose(np.sum(np.abs(out) ** 2, axis=(-2, -1)), energy_in, rtol=1e-5)
    back = propagator.backward(out)
    np.testing.assert_allclose(back, psi, atol=2e-5 * np.abs(psi).max())
    assert np.abs(out - psi).max() > 0.1  # it did propagate


@pytest.mark.parametrize("distance_m", [0.05, 0.2, 0.5])
def test_weak_phase_grating_contrast_is_2_sin_chi_phi(distance_m):
    # φ = ε cos(2π f0 x) gives I = 1 + 2 sin(πλz f0²) φ to first order in ε.
    n, period, eps = 64, 16, 1e-3
    f0 = 1 / (period * PIXEL_M)
    x = np.arange(n) * PIXEL_M
    phase = eps * np.cos(2 * math.pi * f0 * x)[None, :] * np.ones((n, 1))
    propagator = FresnelPropagator((n, n), PIXEL_M, distance_m, ENERGY_KEV, CPU)
    intensity = np.abs(propagator.forward(np.exp(1j * phase).astype(np.complex64))) ** 2
    chi = math.pi * wavelength_m(ENERGY_KEV) * distance_m * f0**2
    expected = 1 + 2 * math.sin(chi) * phase
    np.testing.assert_allclose(intensity, expected, atol=3 * eps**2 + 2e-6)
    assert np.ptp(intensity) == pytest.approx(4 * eps * abs(math.sin(chi)), rel=0.01)


def test_talbot_self_images_of_a_strong_grating():
    # Harmonic k of a period-d grating gets χ_k = k²·πλz/d²: at the Talbot distance 2d²/λ
    # every factor is 1 (self-image), at half of it (-1)^k (image shifted by d/2). Exact,
    # for a strong (non-linear) phase grating too.
    n, period, eps = 64, 8, 0.8
    f0 = 1 / (period * PIXEL_M)
    talbot_m = 2 / (wavelength_m(ENERGY_KEV) * f0**2)
    x = np.arange(n) * PIXEL_M
    wave = (np.exp(1j * eps * np.cos(2 * math.pi * f0 * x))[None, :] * np.ones((n, 1))).astype(
        np.complex64
    )
    full = FresnelPropagator((n, n), PIXEL_M, talbot_m, ENERGY_KEV, CPU).forward(wave)
    np.testing.assert_allclose(full, wave, atol=2e-5)
    half = FresnelPropagator((n, n), PIXEL_M, talbot_m / 2, ENERGY_KEV, CPU).forward(wave)
    np.testing.assert_allclose(half, np.roll(wave, period // 2, axis=-1), atol=2e-5)


def test_only_fresnel_number_matters():
    psi = random_field((48, 64))
    near = FresnelPropagator((48, 64), PIXEL_M, 0.1, ENERGY_KEV, CPU)
    scaled = FresnelPropagator((48, 64), 2 * PIXEL_M, 0.4, ENERGY_KEV, CPU)
    assert fresnel_number(PIXEL_M, 0.1, ENERGY_KEV) == pytest.approx(
        fresnel_number(2 * PIXEL_M, 0.4, ENERGY_KEV)
    )
    assert fresnel_number(PIXEL_M, 0.1, ENERGY_KEV) == pytest.approx(
        1e-12 / (7.0848e-11 * 0.1), rel=1e-4
    )
    np.testing.assert_allclose(near.forward(psi), scaled.forward(psi), atol=1e-5)
    np.testing.assert_allclose(near.chi, scaled.chi, rtol=1e-6)


def test_simulated_hologram_is_flat_without_object_and_shows_fringes():
    empty, phase, _ = simulate([], 64, 0.2)
    np.testing.assert_allclose(empty, 1.0, atol=1e-5)
    assert not phase.any()
    sphere = [(0.0, 0.0, 15e-6, 5e-7, 2.5e-9)]
    intensity, phase, absorption = simulate(sphere, 64, 0.2)
    assert phase.min() == pytest.approx(-2 * math.pi / wavelength_m(ENERGY_KEV) * 5e-7 * 30e-6, rel=0.02)
    np.testing.assert_allclose(absorption, -phase / 200, rtol=1e-5, atol=1e-7)
    assert intensity.max() > 1.05 and intensity.min() < 0.95  # edge fringes


def test_bad_geometry_is_rejected():
    with pytest.raises(ValueError, match="distance_m"):
        FresnelPropagator((8, 8), PIXEL_M, 0.0, ENERGY_KEV, CPU)
    propagator = FresnelPropagator((8, 8), PIXEL_M, 0.1, ENERGY_KEV, CPU)
    with pytest.raises(ValueError, match="grid"):
        propagator.forward(np.ones((8, 9), np.complex64))
