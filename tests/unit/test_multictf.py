"""Multi-distance CTF and chains (workers/multictf.py, workers/multiphasing.py) on exact holograms."""

import math

import numpy as np
import pytest

from holostream.workers.backend import get_backend
from holostream.workers.ctf import ctf_filter
from holostream.workers.multictf import MultiDistanceCTF, multi_ctf_filters
from holostream.workers.multiphasing import MultiDistancePhaseRetrieval
from holostream.workers.phantom import Phantom, sphere
from holostream.workers.phasing import PhaseRetrieval
from holostream.workers.physics import wavelength_m
from holostream.workers.simulate import HologramSimulator, ScanGeometry

CPU = get_backend("cpu", threads=1)
N, PIXEL_M, ENERGY_KEV = 64, 1e-7, 17.5
DISTANCES_M = (0.0069, 0.0075, 0.0088, 0.0112)


def holograms(phantom):
    """Noise-free intensities of ``phantom`` at every distance (same grid), and its true φ, B."""
    stack = np.stack([HologramSimulator(phantom, ScanGeometry(N, N, PIXEL_M, z, ENERGY_KEV)).intensity(0.0)
                      for z in DISTANCES_M])
    delta_m, beta_m = phantom.project(0.0, N, N, PIXEL_M)
    k = 2 * math.pi / wavelength_m(ENERGY_KEV)
    return stack, -k * delta_m, k * beta_m


def relative_error(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def one_material():
    return holograms(Phantom((sphere((-0.8e-6, 0, 0), 0.6e-6, 3e-7, 3e-9),
                              sphere((0.8e-6, 0.3e-6, 0), 0.5e-6, 3e-7, 3e-9))))


def test_one_distance_is_the_single_distance_ctf():
    chi = np.linspace(0, 40, 500)
    phase, attenuation = multi_ctf_filters(chi[None], 150.0, 1e-7, 1e-2)
    np.testing.assert_allclose(phase[0], ctf_filter(chi, 150.0, 1e-7, 1e-2), rtol=1e-5, atol=1e-7)
    assert attenuation is None


def test_large_prior_weight_gives_the_homogeneous_solution():
    chis = np.linspace(0, 30, 400)[None] * np.array([1.0, 1.1, 1.3, 1.6])[:, None]
    homogeneous, _ = multi_ctf_filters(chis, 100.0, 1e-7, 1e-3)
    mixed, attenuation = multi_ctf_filters(chis, 100.0, 1e-7, 1e-3, mixed=True, alpha_mix=1e7)
    np.testing.assert_allclose(mixed, homogeneous, atol=2e-3 * np.abs(homogeneous).max())
    np.testing.assert_allclose(attenuation, -mixed / 100.0, atol=2e-5 * np.abs(mixed).max())


def test_four_distances_beat_one_on_a_single_material(one_material):
    stack, phase_true, attenuation_true = one_material
    single = PhaseRetrieval("ctf", (N, N), PIXEL_M, DISTANCES_M[0], ENERGY_KEV, 100.0, CPU)(stack[0])
    phase, attenuation = MultiDistanceCTF((N, N), PIXEL_M, DISTANCES_M, ENERGY_KEV, 100.0, CPU)(stack)
    assert relative_error(phase, phase_true) < 0.09
    assert relative_error(attenuation, attenuation_true) < 0.09
    assert relative_error(phase, phase_true) < relative_error(single, phase_true)


def test_iterations_at_every_distance_lower_the_error(one_material):
    stack, phase_true, _ = one_material
    start = MultiDistancePhaseRetrieval("ctf", (N, N), PIXEL_M, DISTANCES_M, ENERGY_KEV, 100.0, CPU)
    chain = MultiDistancePhaseRetrieval("ctf, ap**10(delta_beta=100)", (N, N), PIXEL_M, DISTANCES_M,
                                        ENERGY_KEV, 100.0, CPU)
    assert relative_error(chain(stack)[0], phase_true) < relative_error(start(stack)[0], phase_true)


@pytest.mark.parametrize("chain", ["paganin", "ctf_mixed", "ctf, raar**3(beta=0.8), ap**2"])
def test_chains_return_phase_and_attenuation_of_the_batch_shape(one_material, chain):
    stack = np.stack([one_material[0]] * 2)
    retrieval = MultiDistancePhaseRetrieval(chain, (N, N), PIXEL_M, DISTANCES_M, ENERGY_KEV, 100.0, CPU)
    phase, attenuation = retrieval(stack)
    assert phase.shape == attenuation.shape == (2, N, N)
    assert phase.dtype == attenuation.dtype == np.float32
    assert float(np.corrcoef(phase[1].ravel(), one_material[1].ravel())[0, 1]) > 0.9


def test_chain_errors_name_the_reason():
    with pytest.raises(ValueError, match="single-distance only"):
        MultiDistancePhaseRetrieval("ctf, newton**2", (N, N), PIXEL_M, DISTANCES_M, ENERGY_KEV, 100.0, CPU)
    with pytest.raises(ValueError, match="several distances"):
        PhaseRetrieval("ctf_mixed", (N, N), PIXEL_M, DISTANCES_M[0], ENERGY_KEV, 100.0, CPU)
    with pytest.raises(ValueError, match="alpha_mix must be >= 0"):
        MultiDistancePhaseRetrieval("ctf_mixed(alpha_mix=-1)", (N, N), PIXEL_M, DISTANCES_M,
                                    ENERGY_KEV, 100.0, CPU)
    retrieval = MultiDistancePhaseRetrieval("ctf", (N, N), PIXEL_M, DISTANCES_M, ENERGY_KEV, 100.0, CPU)
    with pytest.raises(ValueError, match="expected"):
        retrieval(np.ones((3, N, N), np.float32))
