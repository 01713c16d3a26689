"""Phase-retrieval chains: text round trip, errors, defaults, and AP/RAAR against truth.

Run with ``-s`` to see the measured numbers.
"""

import numpy as np
import pytest
from test_fresnel import CPU, ENERGY_KEV, PIXEL_M, compare, relative_error, simulate
from test_paganin import DELTA_BETA, N, spheres

from holostream.workers.ctf import NewtonRefinement
from holostream.workers.fresnel import FresnelPropagator
from holostream.workers.paganin import Paganin
from holostream.workers.phasing import (
    NEWTON_ALPHA_HIGH,
    RECOMMENDED_CHAIN,
    PhaseRetrieval,
    Step,
    default_chain,
    format_chain,
    parse_chain,
    recommended_chain,
)

#: Spheres of two materials, δ/β = 100 and 300; retrieval assumes 200.
TWO_MATERIALS = [
    (-20e-6, -15e-6, 18e-6, 5e-7, 5e-9),
    (25e-6, 20e-6, 12e-6, 8e-7, 8e-7 / 300),
    (10e-6, -35e-6, 8e-6, 5e-7, 5e-9),
    (-30e-6, 30e-6, 14e-6, 8e-7, 8e-7 / 300),
]


@pytest.mark.parametrize(
    "text",
    [
        "paganin",
        "ctf",
        "paganin, ap**8(delta_beta=200), ap**2",
        "ctf(alpha_high=0.05, delta_beta=150.5), raar**20(beta=0.8), ap**5",
        "paganin, ap**3(delta_beta=200, phase_max=0, phase_min=-12.25)",
        "paganin, newton**5(alpha_high=3), ap**5(delta_beta=200)",
        "ctf, newton(alpha_high=0.5, alpha_low=0, delta_beta=150), ap**2, newton**3",
        RECOMMENDED_CHAIN,
    ],
)
def test_parse_format_round_trip(text):
    steps = parse_chain(text)
    assert format_chain(steps) == text
    assert parse_chain(format_chain(steps)) == steps


def test_parse_is_lenient_on_spacing_and_case_and_sorts_params():
    steps = parse_chain(" Paganin ,AP ** 8 ( phase_max = 0 , delta_beta=2e2 ),ap")
    assert steps == (
        Step("paganin"),
        Step("ap", 8, (("delta_beta", 200.0), ("phase_max", 0.0))),
        Step("ap"),
    )
    assert steps[1].param("delta_beta") == 200.0 and steps[2].param("beta", 0.75) == 0.75


@pytest.mark.parametrize(
    "text, named",
    [
        ("paganin, foo**3", "foo"),
        ("ap**8, paganin", "starts with"),
        ("paganin, ctf", "'ctf'"),
        ("paganin**2, ap", "paganin"),
        ("paganin, ap**0", "ap**0"),
        ("paganin, ap**x", "ap**x"),
        ("paganin, ap(delta_beta)", "delta_beta"),
        ("paganin, ap(delta_beta=abc)", "delta_beta=abc"),
        ("paganin, ap(beta=0.5)", "beta"),
        ("paganin, ap(delta_beta=2", "unbalanced"),
        ("paganin,, ap", "bad chain token ''"),
        ("  ", "empty"),
        ("newton**5, ap", "starts with"),
        ("paganin, newton(beta=0.5)", "beta"),
        ("paganin, newton(alpha_high=0)", "alpha_high must be > 0, got 0.0"),
        ("paganin, newton(alpha_low=-1e-3)", "alpha_low must be >= 0"),
        ("paganin, newton(delta_beta=-200)", "delta_beta must be > 0"),
        ("paganin, newton(delta_beta=nan)", "delta_beta must be > 0, got nan"),
        ("paganin, raar(beta=1.5)", "beta must be in"),
        ("paganin, ap(phase_min=1, phase_max=0)", "phase_min 1.0 > phase_max 0.0"),
        ("paganin, ap(phase_max=inf)", "phase_max must be finite"),
    ],
)
def test_bad_chains_name_the_token(text, named):
    with pytest.raises(ValueError, match=named.replace("*", r"\*").replace("(", r"\(")):
        parse_chain(text)


def test_default_chain():
    assert default_chain("none", 10, 200.0) == ()
    assert default_chain("ctf", 10, 200.0) == (Step("ctf"),)
    assert format_chain(default_chain("ap", 10, 200.0)) == "paganin, ap**8(delta_beta=200), ap**2"
    assert format_chain(default_chain("raar", 7, 150.0)) == (
        "paganin, raar**6(delta_beta=150), raar"
    )
    assert default_chain("ap", 0, 200.0) == (Step("paganin"),)
    assert default_chain("ap", 1, 200.0) == (Step("paganin"), Step("ap", 1, (("delta_beta", 200),)))
    assert default_chain("ctf, ap**3", 10, 200.0) == (Step("ctf"), Step("ap", 3))
    assert format_chain(default_chain(RECOMMENDED_CHAIN, 10, 200.0)) == RECOMMENDED_CHAIN
    assert recommended_chain(150.5) == "paganin, newton**5(alpha_high=3), ap**5(delta_beta=150.5)"
    with pytest.raises(ValueError, match="starts with"):
        default_chain("newton", 10, 200.0)  # not a named method: a chain needs a start
    with pytest.raises(ValueError, match="iterations"):
        default_chain("ap", -1, 200.0)


def test_empty_chain_is_the_no_propagation_limit():
    intensity, phase, absorption = simulate(spheres(5e-7), N, 0.2)
    out = PhaseRetrieval((), (N, N), PIXEL_M, 0.2, ENERGY_KEV, DELTA_BETA, CPU)(intensity)
    np.testing.assert_allclose(out, DELTA_BETA / 2 * np.log(intensity), rtol=1e-5, atol=1e-5)
    # At zero distance (contact image) this is exact for a single material.
    contact = np.exp(-2 * absorption)
    zero = PhaseRetrieval((), (N, N), PIXEL_M, 0.2, ENERGY_KEV, DELTA_BETA, CPU)(contact)
    np.testing.assert_allclose(zero, phase, atol=2e-3 * abs(phase.min()))


def test_start_only_chain_equals_its_filter():
    intensity, _, _ = simulate(spheres(5e-7), N, 0.2)
    chain = PhaseRetrieval("paganin", (N, N), PIXEL_M, 0.2, ENERGY_KEV, DELTA_BETA, CPU)
    direct = Paganin((N, N), PIXEL_M, 0.2, ENERGY_KEV, DELTA_BETA, CPU)
    np.testing.assert_array_equal(chain(intensity), direct(intensity))


def test_iterations_refine_a_thick_single_material_object():
    # δ = 1e-6: |φ| up to 3.2 rad (beyond π, so unwrapping matters), 0.5 m: Paganin's
    # linearisation is off by ~17 %; AP and RAAR with the right δ/β reduce the error.
    intensity, phase, _ = simulate(spheres(1e-6), N, 0.5)
    assert phase.min() < -np.pi
    errors = {}
    for chain in ("paganin", "paganin, ap**30(delta_beta=200)", "paganin, raar**30(delta_beta=200)"):
        retrieve = PhaseRetrieval(chain, (N, N), PIXEL_M, 0.5, ENERGY_KEV, DELTA_BETA, CPU)
        estimate = retrieve(intensity)
        assert estimate.dtype == np.float32 and estimate.shape == (N, N)
        errors[chain] = relative_error(estimate, phase)
        print(f"\n{chain:36s} z=0.5 m δ=1e-6: relative error {errors[chain]:.4f}, "
              "correlation %.4f, scale %.3f" % compare(estimate, phase))
    start, ap, raar = errors.values()
    assert ap < 0.6 * start
    assert raar < ap


def test_very_thick_object_does_not_wrap():
    # δ = 4e-6: φ down to -12.8 rad. A wrapped phase would jump by 2π somewhere.
    intensity, phase, _ = simulate(spheres(4e-6), N, 0.2)
    retrieve = PhaseRetrieval("paganin, ap**20(delta_beta=200)", (N, N), PIXEL_M, 0.2,
                              ENERGY_KEV, DELTA_BETA, CPU)
    estimate = retrieve(intensity)
    start = PhaseRetrieval("paganin", (N, N), PIXEL_M, 0.2, ENERGY_KEV, DELTA_BETA, CPU)(intensity)
    print(f"\nφ min {phase.min():.1f} rad: AP min {estimate.min():.1f}, error "
          f"{relative_error(estimate, phase):.4f}, Paganin {relative_error(start, phase):.4f}, "
          f"largest AP - Paganin {np.abs(estimate - start).max():.2f} rad")
    assert estimate.min() < 0.85 * phase.min() < -3 * np.pi
    assert np.abs(estimate - start).max() < np.pi
    assert relative_error(estimate, phase) < relative_error(start, phase)


@pytest.mark.parametrize("photons", [None, 10_000])
def test_ap_at_least_as_good_as_paganin_on_two_materials(photons):
    intensity, phase, _ = simulate(TWO_MATERIALS, N, 0.3, photons=photons, seed=2)
    results = {}
    for phase_setting in ("paganin", "ap", "raar"):
        chain = default_chain(phase_setting, 10, DELTA_BETA)
        retrieve = PhaseRetrieval(chain, (N, N), PIXEL_M, 0.3, ENERGY_KEV, DELTA_BETA, CPU)
        results[phase_setting] = relative_error(retrieve(intensity), phase)
        print(f"\ntwo materials, {photons} photons, {format_chain(chain)}: "
              f"relative error {results[phase_setting]:.4f}")
    assert results["ap"] <= results["paganin"]
    assert results["raar"] <= results["paganin"]


def test_batch_equals_single_and_phase_max_holds():
    intensity, _, _ = simulate(spheres(5e-7), 64, 0.2)
    chain = "paganin, raar**4(delta_beta=200, phase_max=0), ap**2(phase_max=0)"
    retrieve = PhaseRetrieval(chain, (64, 64), PIXEL_M, 0.2, ENERGY_KEV, DELTA_BETA, CPU)
    stack = np.stack([intensity, np.ones_like(intensity)])
    out = retrieve(stack)
    assert out.shape == (2, 64, 64)
    np.testing.assert_allclose(out[0], retrieve(intensity), atol=1e-4)
    np.testing.assert_allclose(out[1], 0.0, atol=1e-4)
    assert out.max() <= 0.0


def test_bad_setup():
    with pytest.raises(ValueError, match="starts with"):
        PhaseRetrieval((Step("ap"),), (8, 8), PIXEL_M, 0.1, ENERGY_KEV, DELTA_BETA, CPU)
    with pytest.raises(ValueError, match="delta_beta"):
        PhaseRetrieval("paganin", (8, 8), PIXEL_M, 0.1, ENERGY_KEV, 0.0, CPU)


def newton_step(padding, distance_m):
    """The ``newton`` step's set-up as PhaseRetrieval makes it (defaults, detector mask)."""
    propagator = FresnelPropagator(padding.padded_shape, PIXEL_M, distance_m, ENERGY_KEV, CPU)
    region = tuple(slice(o, o + n) for o, n in zip(padding.offset, padding.shape))
    return NewtonRefinement(propagator, region, DELTA_BETA, alpha_high=NEWTON_ALPHA_HIGH)


def _errors(chains, intensity, phase, distance_m):
    errors = {}
    for chain in chains:
        retrieve = PhaseRetrieval(chain, (N, N), PIXEL_M, distance_m, ENERGY_KEV, DELTA_BETA, CPU)
        estimate = retrieve(intensity)
        assert estimate.dtype == np.float32 and estimate.shape == (N, N)
        errors[chain] = relative_error(estimate, phase)
    return errors


@pytest.mark.parametrize("distance_m", [0.05, 0.5])
def test_newton_chain_beats_ap_at_large_fresnel_numbers_and_matches_it_near_contact(distance_m):
    # δ = 1e-6 (|φ| up to 3.2 rad), noise of 1e4 photons/px. Measured (relative error):
    # 0.5 m Paganin 0.179, ap 0.124, newton+ap 0.084; 0.05 m (noise-limited) 0.083, 0.081,
    # 0.078. Noise-free: 0.5 m 0.168, 0.107, 0.055; 0.05 m 0.033, 0.025, 0.014.
    intensity, phase, _ = simulate(spheres(1e-6), N, distance_m, photons=10_000, seed=3)
    ap = format_chain(default_chain("ap", 10, DELTA_BETA))
    errors = _errors(("paganin", ap, recommended_chain(DELTA_BETA)), intensity, phase, distance_m)
    print(f"\nz={distance_m} m δ=1e-6: " + ", ".join(f"{c}: {e:.4f}" for c, e in errors.items()))
    paganin, ap_error, newton = errors.values()
    assert ap_error < paganin
    if distance_m >= 0.5:
        assert newton < 0.8 * ap_error
    else:
        assert newton <= ap_error


def test_newton_stays_stable_for_20_steps_where_plain_iteration_diverges():
    # δ = 2e-6 at 0.5 m (|φ| up to 6.4 rad): the CTF linearisation at φ = 0 overshoots after
    # ~8 steps. Measured: plain iteration 0.28 → 0.14 (step 8) → 1.8 (step 20); guarded
    # newton**20 stops at the smallest residual, 0.14; with AP after it 0.10.
    intensity, phase, _ = simulate(spheres(2e-6), N, 0.5)
    retrieve = PhaseRetrieval("paganin, newton**20", (N, N), PIXEL_M, 0.5, ENERGY_KEV,
                              DELTA_BETA, CPU)
    padded = retrieve.padding.pad(intensity)
    step = newton_step(retrieve.padding, 0.5)
    plain = start = Paganin((N, N), PIXEL_M, 0.5, ENERGY_KEV, DELTA_BETA, CPU).phase_padded(padded)
    norms = []
    for _ in range(20):
        residual = step.residual(padded, plain)
        norms.append(float(np.sum(residual * residual)))
        plain = plain + CPU.irfft2(CPU.rfft2(residual) * step.filter, s=padded.shape)
    plain_error = relative_error(retrieve.padding.crop(plain), phase)
    errors = _errors(("paganin", "paganin, newton**5", "paganin, newton**20",
                      "paganin, newton**20, ap**5(delta_beta=200)"), intensity, phase, 0.5)
    print(f"\nplain 20 steps {plain_error:.3f}, residuals {norms[0]:.0f} → {min(norms):.0f} → "
          f"{norms[-1]:.0f}; " + ", ".join(f"{c}: {e:.4f}" for c, e in errors.items()))
    assert plain_error > 1.0 and norms[-1] > 2 * min(norms)  # the failure the guard stops
    start_error, five, twenty, with_ap = errors.values()
    assert twenty < 0.6 * start_error and twenty <= five * 1.01
    assert with_ap < twenty
    # the result's masked residual is the smallest any of the 20 iterates reached
    best = step(padded, start, 20)
    final = step.residual(padded, best)
    assert float(np.sum(final * final)) == pytest.approx(min(norms), rel=1e-3)


def test_newton_residual_ignores_the_padding_margin():
    intensity, _, _ = simulate(spheres(5e-7), 64, 0.2)
    retrieve = PhaseRetrieval("paganin, newton", (64, 64), PIXEL_M, 0.2, ENERGY_KEV,
                              DELTA_BETA, CPU)
    (top, left), (rows, cols) = retrieve.padding.offset, retrieve.padding.shape
    step = newton_step(retrieve.padding, 0.2)
    padded = retrieve.padding.pad(intensity)
    residual = step.residual(padded, np.zeros_like(padded))
    inside = residual[top : top + rows, left : left + cols]
    np.testing.assert_allclose(inside, intensity - 1.0, atol=1e-5)  # φ = 0: |Dψ|² = 1
    assert np.count_nonzero(residual) == np.count_nonzero(inside) > 0.9 * rows * cols


def test_newton_batch_keeps_the_best_iterate_per_projection():
    # A thick object at 0.5 m stops early, a weak one keeps improving, a flat field is at
    # its optimum from the start: in one batch each gets what it gets alone.
    thick, _, _ = simulate(spheres(2e-6), 64, 0.5)
    weak, _, _ = simulate(spheres(2e-7), 64, 0.5)
    stack = np.stack([thick, weak, np.ones_like(weak)])
    retrieve = PhaseRetrieval("paganin, newton**12, ap**2(delta_beta=200)", (64, 64), PIXEL_M,
                              0.5, ENERGY_KEV, DELTA_BETA, CPU)
    out = retrieve(stack)
    assert out.shape == (3, 64, 64) and out.dtype == np.float32
    for batch, single in zip(out[:2], stack[:2]):
        np.testing.assert_allclose(batch, retrieve(single), atol=1e-4 * np.abs(batch).max())
    np.testing.assert_allclose(out[2], 0.0, atol=1e-4)
