"""Paganin retrieval against analytic spheres, padding plans and physics unit conversions.

Run with ``-s`` to see the measured numbers.
"""

import math

import numpy as np
import pytest
from test_fresnel import CPU, ENERGY_KEV, PIXEL_M, compare, relative_error, simulate

from holostream.workers.padding import Padding, smooth_size
from holostream.workers.paganin import Paganin
from holostream.workers.physics import (
    delta_px_to_phase,
    phase_to_delta_px,
    wavelength_m,
)

N = 128
DELTA_BETA = 200.0


def spheres(delta, delta_beta=DELTA_BETA):
    """Three spheres of one material inside a 128 µm field."""
    beta = delta / delta_beta
    return [
        (-20e-6, -15e-6, 18e-6, delta, beta),
        (25e-6, 20e-6, 12e-6, delta, beta),
        (10e-6, -35e-6, 8e-6, delta, beta),
    ]


def test_physics_units():
    assert wavelength_m(17.5) == pytest.approx(7.08481e-11, rel=1e-5)
    phase = np.array([[-1.0, 0.0], [-2.5, 3.0]], np.float32)
    delta_px = phase_to_delta_px(phase, 17.5, 1e-6)
    assert delta_px.dtype == np.float32
    # 1 rad at 17.5 keV and 1 µm pixels is λ/(2π·1 µm) = 1.1276e-5 pixel lengths of δ = 1.
    assert delta_px[0, 0] == pytest.approx(1.12759e-5, rel=1e-4)
    np.testing.assert_allclose(delta_px_to_phase(delta_px, 17.5, 1e-6), phase, rtol=1e-6)
    with pytest.raises(ValueError, match="energy_kev"):
        wavelength_m(0.0)


def test_smooth_size():
    assert [smooth_size(n) for n in (1, 11, 13, 97, 128, 193)] == [1, 12, 14, 98, 128, 196]
    assert smooth_size(11, primes=(2,)) == 16
    with pytest.raises(ValueError):
        smooth_size(0)


@pytest.mark.parametrize("mode", ["edge", "reflect", "constant1"])
def test_padding_round_trip(mode):
    rng = np.random.default_rng(0)
    a = rng.random((3, 50, 37)).astype(np.float32)
    plan = Padding((50, 37), CPU, mode=mode, margin=0.5)
    # 50 + 2·13 = 76 → 80 (smooth), 37 + 2·10 = 57 → 60.
    assert plan.padded_shape == (80, 60)
    padded = plan.pad(a)
    assert padded.shape == (3, 80, 60) and padded.dtype == np.float32
    np.testing.assert_array_equal(plan.crop(padded), a)
    top, left = plan.offset
    if mode == "edge":
        np.testing.assert_array_equal(padded[:, 0, left : left + 37], a[:, 0])
    elif mode == "reflect":
        np.testing.assert_array_equal(padded[:, top - 1, left : left + 37], a[:, 1])
    else:
        assert np.all(padded[:, 0] == 1.0) and np.all(padded[:, :, -1] == 1.0)
    with pytest.raises(ValueError, match="pad expects"):
        plan.pad(a[:, :, :-1])


def test_padding_rejects_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        Padding((8, 8), CPU, mode="zeros")


@pytest.mark.parametrize("distance_m", [0.05, 0.2, 0.5])
@pytest.mark.parametrize("delta", [1e-7, 1e-6])
def test_paganin_recovers_single_material_phase(distance_m, delta):
    intensity, phase, _ = simulate(spheres(delta), N, distance_m)
    retrieve = Paganin((N, N), PIXEL_M, distance_m, ENERGY_KEV, DELTA_BETA, CPU)
    estimate = retrieve(intensity)
    assert estimate.shape == (N, N) and estimate.dtype == np.float32
    correlation, scale = compare(estimate, phase)
    error = relative_error(estimate, phase)
    print(
        f"\nPaganin z={distance_m} m δ={delta:g} min φ={phase.min():.2f} rad: "
        f"correlation {correlation:.4f}, scale {scale:.3f}, relative error {error:.3f}"
    )
    assert correlation >= 0.97
    assert scale == pytest.approx(1.0, abs=0.1)
    assert estimate.max() < 0.05 * -phase.min()  # no positive phase where there is matter


def test_paganin_with_poisson_noise():
    intensity, phase, _ = simulate(spheres(5e-7), N, 0.2, photons=10_000, seed=3)
    estimate = Paganin((N, N), PIXEL_M, 0.2, ENERGY_KEV, DELTA_BETA, CPU)(intensity)
    correlation, scale = compare(estimate, phase)
    print(f"\nPaganin with 1e4 photons/px: correlation {correlation:.4f}, scale {scale:.3f}")
    assert correlation >= 0.97
    assert scale == pytest.approx(1.0, abs=0.1)


def test_paganin_works_on_stacks_and_empty_field():
    intensity, _, _ = simulate(spheres(5e-7), N, 0.2)
    retrieve = Paganin((N, N), PIXEL_M, 0.2, ENERGY_KEV, DELTA_BETA, CPU)
    stack = np.stack([intensity, np.ones_like(intensity)])
    out = retrieve(stack)
    assert out.shape == (2, N, N)
    np.testing.assert_allclose(out[0], retrieve(intensity), atol=1e-5)
    np.testing.assert_allclose(out[1], 0.0, atol=1e-5)
    dead = intensity.copy()
    dead[10:12, 10:12] = 0.0  # dead pixels: finite output, log guarded
    assert np.isfinite(retrieve(dead)).all()


def test_padding_margin_accuracy():
    # The Paganin kernel is wide (sqrt(πλz·δ/β) ≈ 150 µm at 0.5 m): without padding its
    # periodic images overlap the field. Against a margin-8 reference, margin 0.5 (the
    # default) must be within 0.5 %, margin 0 is not; edge padding of the vacuum border is
    # exact, reflect padding mirrors nearby matter into the margin and is worse.
    intensity, phase, _ = simulate(spheres(5e-7), N, 0.5)

    def retrieve(margin, mode="edge"):
        plan = Paganin((N, N), PIXEL_M, 0.5, ENERGY_KEV, DELTA_BETA, CPU, mode, margin)
        return plan(intensity)

    reference = retrieve(8.0)
    deviation = {m: relative_error(retrieve(m), reference) for m in (0.0, 0.25, 0.5, 1.0)}
    print("\nPaganin deviation from margin 8 by margin:", {m: f"{e:.4f}" for m, e in deviation.items()})
    print(f"relative error vs truth: margin 0.5 {relative_error(retrieve(0.5), phase):.4f}, "
          f"margin 8 {relative_error(reference, phase):.4f}")
    assert deviation[0.0] > 0.01
    assert deviation[0.5] < 0.005 and deviation[1.0] < deviation[0.5]
    assert relative_error(retrieve(0.5, "reflect"), phase) > relative_error(retrieve(0.5), phase)


def test_filter_is_the_paganin_formula():
    retrieve = Paganin((32, 48), PIXEL_M, 0.3, ENERGY_KEV, 150.0, CPU, margin=0.0)
    f = 1 / (32 * PIXEL_M)  # first row frequency
    expected = 1 / (1 + math.pi * wavelength_m(ENERGY_KEV) * 0.3 * 150.0 * f**2)
    assert retrieve.filter.shape == (32, 25) and retrieve.filter.dtype == np.float32
    assert retrieve.filter[1, 0] == pytest.approx(expected, rel=1e-6)
    assert retrieve.filter[0, 0] == 1.0


def test_fresnel_scaling_of_a_cone_beam():
    from holostream.workers.physics import fresnel_scaling

    # ID16-like: focus 10 mm before the sample, detector 1 m behind it -> M = 101
    m, z_eff, pix_eff = fresnel_scaling(-0.01, 1.0, 6.5e-6)
    assert m == pytest.approx(101.0)
    assert z_eff == pytest.approx(0.01 * 1.0 / 1.01)
    assert pix_eff == pytest.approx(6.5e-6 / 101.0)
    with pytest.raises(ValueError):
        fresnel_scaling(0.0, 1.0, 1e-6)
    with pytest.raises(ValueError):
        fresnel_scaling(0.1, 1.0, -1e-6)
