"""The phase-retrieval benchmark's own parts: scores, simulated holograms, the report."""

import math

import numpy as np
import pytest

from holostream.service.bench import phase as phasebench
from holostream.workers.phantom import Phantom, sphere
from holostream.workers.physics import wavelength_m


def test_score_of_scaled_truth():
    rng = np.random.default_rng(1)
    truth = -rng.uniform(0, 3, size=(16, 16))
    result = phasebench.score(0.9 * truth, truth)
    assert result["scale"] == pytest.approx(0.9, rel=1e-12)
    assert result["rel_error"] == pytest.approx(0.1, rel=1e-12)
    assert result["correlation"] == pytest.approx(1.0, abs=1e-12)


def test_score_of_offset_and_noise():
    rng = np.random.default_rng(2)
    truth = -rng.uniform(0, 1, size=(32, 32))
    noise = rng.normal(0, 0.1, size=truth.shape)
    result = phasebench.score(truth + noise, truth)
    # ‖noise‖/‖truth‖ with ‖truth‖² ≈ n/3 for uniform [0, 1] values
    assert result["rel_error"] == pytest.approx(np.linalg.norm(noise) / np.linalg.norm(truth), rel=1e-9)
    assert result["correlation"] == pytest.approx(1 / math.sqrt(1 + 0.01 / (1 / 12)), abs=0.03)
    with pytest.raises(ValueError, match="zero everywhere"):
        phasebench.score(truth, np.zeros_like(truth))
    with pytest.raises(ValueError, match="differ in shape"):
        phasebench.score(truth[:8], truth)


def test_offset_free_score_ignores_a_constant_and_the_frame_border():
    rng = np.random.default_rng(3)
    truth = -rng.uniform(0, 1, size=(32, 32)) - 5.0  # matter everywhere, a large constant
    phase = truth + 2.0
    phase[:4] = 99.0  # wrong in the outer eighth only
    result = phasebench.score(phase, truth, offset_free=True)
    assert result["rel_error"] == pytest.approx(0.0, abs=1e-12)
    assert result["scale"] == pytest.approx(1.0, rel=1e-12)
    assert phasebench.score(phase, truth)["rel_error"] > 1.0


def test_wide_phantom_is_cut_by_every_edge_of_the_frame():
    phantom = phasebench.phantom_cases(48, seed=0)["wider-than-field"]
    _, truth = phasebench.simulate_hologram(phantom, 48, 0.05, None, seed=0)
    for edge in (truth[0], truth[-1], truth[:, 0], truth[:, -1]):
        assert np.all(edge < 0)  # matter's phase, not free space's 0


def test_simulated_truth_is_the_projected_phase():
    """A centred sphere: the true phase at the centre is -(2π/λ)·δ·2R (pixel-averaged)."""
    radius_m, delta = 10e-6, 1e-6
    phantom = Phantom((sphere((0.0, 0.0, 0.0), radius_m, delta, delta / 200),))
    intensity, phase = phasebench.simulate_hologram(phantom, 48, 0.05, None, seed=0)
    assert intensity.dtype == np.float32 and phase.dtype == np.float32
    assert intensity.shape == phase.shape == (48, 48)
    peak = -2 * math.pi / wavelength_m(phasebench.ENERGY_KEV) * delta * 2 * radius_m
    assert phase.min() == pytest.approx(peak, rel=0.01)
    # centred between the middle pixels (even size): symmetric under both flips
    np.testing.assert_allclose(phase, phase[::-1, ::-1], atol=1e-4)
    assert phase[0, 0] == 0.0
    # absorption makes the object darker on average; free space stays at 1
    assert intensity[20:28, 20:28].mean() < 1.0
    assert intensity[0, 0] == pytest.approx(1.0, abs=0.02)


def test_noise_has_the_photon_statistics():
    phantom = Phantom((sphere((0.0, 0.0, 0.0), 5e-6, 1e-6, 5e-9),))
    clean, _ = phasebench.simulate_hologram(phantom, 48, 0.05, None, seed=0)
    noisy, _ = phasebench.simulate_hologram(phantom, 48, 0.05, 1e4, seed=0)
    relative = (noisy - clean)[:8, :] / np.sqrt(clean[:8, :])  # free space rows
    assert relative.std() == pytest.approx(1 / math.sqrt(1e4), rel=0.15)


def test_report_scores_our_methods_against_truth():
    report = phasebench.compare_phase_retrieval(size=48, distances=(0.05,), repeat=1, photons=None,
                                                with_hotopy=False)
    assert report["hotopy"] == {"available": False, "reason": "not asked for"}
    assert report["ratios"] == []
    rows = {(r["phantom"], r["method"]): r for r in report["rows"]}
    assert len(rows) == 15  # three phantoms × five methods
    for method in ("paganin", "ctf", "ap", "raar", "newton+ap"):
        row = rows[("single", method)]
        # one material at the δ/β the methods are told, near the contact plane: close
        assert row["rel_error"] < 0.12 and row["correlation"] > 0.99
        assert 0.95 < row["scale"] < 1.05
        assert row["ms_per_projection"] > 0
    # iterating on the measured modulus removes part of Paganin's error
    for method in ("ap", "newton+ap"):
        assert rows[("single", method)]["rel_error"] < 0.9 * rows[("single", "paganin")]["rel_error"]
    assert rows[("single", "paganin")]["fresnel_number"] == pytest.approx(
        1e-12 / (wavelength_m(17.5) * 0.05))
    assert "| single | 0.05 | ap |" in phasebench.format_table(report)


def test_hotopy_filters_match_ours_on_the_same_padding():
    pytest.importorskip("hotopy")
    phantom = phasebench.phantom_cases(64, seed=0)["single"]
    intensity, truth = phasebench.simulate_hologram(phantom, 64, 0.1, 2e4, seed=0)
    ours = phasebench.our_methods((64, 64), 0.1, 200.0, phasebench.get_backend("cpu", 1))
    theirs = phasebench.hotopy_methods((64, 64), 0.1, 200.0, threads=1)
    # the same Paganin filter on the same padded data: equal up to float32 rounding
    np.testing.assert_allclose(theirs["hotopy-paganin"](intensity), ours["paganin"](intensity),
                               atol=2e-3 * float(np.abs(truth).max()))
    ctf_ours = phasebench.score(ours["ctf"](intensity), truth)
    ctf_theirs = phasebench.score(theirs["hotopy-ctf"](intensity), truth)
    assert ctf_theirs["scale"] == pytest.approx(ctf_ours["scale"], abs=0.05)
    assert ctf_theirs["correlation"] == pytest.approx(ctf_ours["correlation"], abs=0.03)


def test_hotopy_phase_convention_is_ours():
    pytest.importorskip("hotopy")
    check = phasebench.check_hotopy_convention()
    assert check["forward_max_diff"] < 1e-5
    assert check["ctf_scale"] == pytest.approx(1.0, abs=0.02)
    assert check["ctf_correlation"] > 0.999
