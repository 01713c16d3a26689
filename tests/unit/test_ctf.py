"""Single-distance homogeneous CTF retrieval: linear model, weak spheres, noise, regularisation.

Run with ``-s`` to see the measured numbers.
"""

import math

import numpy as np
import pytest
from test_fresnel import CPU, ENERGY_KEV, PIXEL_M, compare, relative_error, simulate
from test_paganin import DELTA_BETA, N, spheres

from holostream.workers.ctf import CTF, NewtonRefinement
from holostream.workers.fresnel import FresnelPropagator
from holostream.workers.physics import wavelength_m


def test_ctf_inverts_its_linear_model_exactly():
    # A weak homogeneous object made of three sinusoids (χ ≈ 0.3, 1.3 and 2.2 rad: below,
    # at and above the first CTF maximum): the CTF inverse recovers it to O(φ²).
    n, z, eps = 64, 0.3, 2e-3
    x = np.arange(n) * PIXEL_M
    phase = sum(
        eps * np.cos(2 * math.pi * x / (period * PIXEL_M) + k)
        for k, period in enumerate((16, 8, 6))
    )[None, :] * np.ones((n, 1))
    wave = np.exp((1 + 1j * DELTA_BETA) * phase / DELTA_BETA).astype(np.complex64)
    intensity = np.abs(FresnelPropagator((n, n), PIXEL_M, z, ENERGY_KEV, CPU).forward(wave)) ** 2
    retrieve = CTF((n, n), PIXEL_M, z, ENERGY_KEV, DELTA_BETA, CPU, alpha_high=1e-6, margin=0.0)
    np.testing.assert_allclose(retrieve(intensity.astype(np.float32)), phase, atol=0.03 * eps)


@pytest.mark.parametrize("distance_m", [0.05, 0.2, 0.5])
def test_ctf_recovers_weak_single_material_phase(distance_m):
    intensity, phase, _ = simulate(spheres(1e-7), N, distance_m)
    estimate = CTF((N, N), PIXEL_M, distance_m, ENERGY_KEV, DELTA_BETA, CPU)(intensity)
    assert estimate.shape == (N, N) and estimate.dtype == np.float32
    correlation, scale = compare(estimate, phase)
    error = relative_error(estimate, phase)
    print(
        f"\nCTF z={distance_m} m δ=1e-7 min φ={phase.min():.2f} rad: "
        f"correlation {correlation:.4f}, scale {scale:.3f}, relative error {error:.3f}"
    )
    assert correlation >= 0.97
    assert scale == pytest.approx(1.0, abs=0.1)


def test_ctf_with_poisson_noise_and_stack():
    # Single-distance retrieval amplifies low-frequency noise by δ/(2β) (as Paganin does):
    # a weak object needs many photons.
    intensity, phase, _ = simulate(spheres(2e-7), N, 0.2, photons=100_000, seed=5)
    retrieve = CTF((N, N), PIXEL_M, 0.2, ENERGY_KEV, DELTA_BETA, CPU)
    out = retrieve(np.stack([intensity, np.ones_like(intensity)]))
    correlation, scale = compare(out[0], phase)
    print(f"\nCTF with 1e5 photons/px: correlation {correlation:.4f}, scale {scale:.3f}")
    assert correlation >= 0.97
    assert scale == pytest.approx(1.0, abs=0.1)
    np.testing.assert_allclose(out[1], 0.0, atol=1e-5)


def test_regularisation_split():
    retrieve = CTF((64, 64), PIXEL_M, 0.5, ENERGY_KEV, DELTA_BETA, CPU, margin=0.0,
                   alpha_low=0.0, alpha_high=0.01)
    # f = 0: the homogeneous CTF is β/δ, unregularised gain δ/(2β) (as Paganin).
    assert retrieve.filter[0, 0] == pytest.approx(DELTA_BETA / 2, rel=1e-5)
    # Above the transition (χ ≥ 3π/4, around the CTF zeros near χ = π) the gain is
    # bounded by 1 / (4 sqrt(alpha_high)) = 2.5.
    f = np.fft.fftfreq(64, d=PIXEL_M)
    chi = math.pi * wavelength_m(ENERGY_KEV) * 0.5 * (f[:, None] ** 2 + f[None, :33] ** 2)
    high = chi >= 3 * math.pi / 4
    assert high.sum() > 100
    gain = np.abs(retrieve.filter[high])
    assert gain.max() <= 2.5 * 1.0001 and gain.max() > 2.4
    # Below the transition (χ ≤ π/4) it is the plain inverse 1 / (2A).
    low = chi <= math.pi / 4
    a = np.sin(chi[low]) + np.cos(chi[low]) / DELTA_BETA
    np.testing.assert_allclose(retrieve.filter[low], 1 / (2 * a), rtol=1e-5)


def test_bad_parameters():
    with pytest.raises(ValueError, match="alpha"):
        CTF((8, 8), PIXEL_M, 0.1, ENERGY_KEV, DELTA_BETA, CPU, alpha_high=0.0)
    with pytest.raises(ValueError, match="delta_beta"):
        CTF((8, 8), PIXEL_M, 0.1, ENERGY_KEV, -1.0, CPU)
    propagator = FresnelPropagator((8, 8), PIXEL_M, 0.1, ENERGY_KEV, CPU)
    with pytest.raises(ValueError, match="delta_beta must be > 0"):
        NewtonRefinement(propagator, (slice(None), slice(None)), 0.0)
    with pytest.raises(ValueError, match="alpha_low >= 0"):
        NewtonRefinement(propagator, (slice(None), slice(None)), DELTA_BETA, alpha_low=-1.0)


def _sinusoids(n, eps):
    """Homogeneous object of three sinusoids (χ below, at and above the first CTF maximum)."""
    x = np.arange(n) * PIXEL_M
    return (sum(eps * np.cos(2 * math.pi * x / (period * PIXEL_M) + k)
                for k, period in enumerate((16, 8, 6)))[None, :] * np.ones((n, 1))).astype(np.float32)


def _hologram(phase, z):
    wave = np.exp((1 + 1j * DELTA_BETA) * phase.astype(np.float64) / DELTA_BETA).astype(np.complex64)
    propagator = FresnelPropagator(phase.shape, PIXEL_M, z, ENERGY_KEV, CPU)
    return (np.abs(propagator.forward(wave)) ** 2).astype(np.float32), propagator


def test_one_newton_step_from_zero_is_the_ctf_retrieval():
    phase, z = _sinusoids(64, 0.05), 0.3
    intensity, propagator = _hologram(phase, z)
    everything = (slice(None), slice(None))
    newton = NewtonRefinement(propagator, everything, DELTA_BETA, alpha_high=0.1)
    ctf = CTF((64, 64), PIXEL_M, z, ENERGY_KEV, DELTA_BETA, CPU, alpha_high=0.1, margin=0.0)
    np.testing.assert_allclose(newton.filter, ctf.filter, rtol=1e-6)
    one = newton(intensity, np.zeros_like(intensity), 1)
    np.testing.assert_allclose(one, ctf(intensity), atol=1e-5)


def test_newton_steps_remove_the_second_order_error_of_the_ctf():
    # 0.1 rad sinusoids (0.6 rad range): the linear model is off by O(φ²); Newton steps on
    # the nonlinear model converge towards the exact phase. Measured (max error / range):
    # CTF 7.1e-2, 1 step 3.1e-2, 5 steps 1.3e-2, 10 steps 2.5e-3.
    phase, z = _sinusoids(64, 0.1), 0.3
    intensity, propagator = _hologram(phase, z)
    newton = NewtonRefinement(propagator, (slice(None), slice(None)), DELTA_BETA, alpha_high=1e-2)
    start = CTF((64, 64), PIXEL_M, z, ENERGY_KEV, DELTA_BETA, CPU, margin=0.0)(intensity)
    errors = [float(np.abs(newton(intensity, start, k) - phase).max() / np.ptp(phase))
              for k in (0, 1, 5, 10)]
    print("\nmax error / range after 0, 1, 5, 10 Newton steps: "
          + ", ".join(f"{e:.1e}" for e in errors))
    assert errors[0] > 0.05
    assert errors[0] > errors[1] > errors[2] > errors[3]
    assert errors[3] < 0.1 * errors[0]
