"""Phase retrieval on cupy against the numpy reference, to float32 precision.

The CPU classes are the reference: the same code runs on ``Backend("gpu")`` and must give
the same numbers. Skipped where cupy finds no CUDA device.
"""

import math

import numpy as np
import pytest

from holostream.workers.backend import get_backend, gpu_available
from holostream.workers.ctf import CTF
from holostream.workers.fresnel import FresnelPropagator
from holostream.workers.paganin import Paganin
from holostream.workers.padding import Padding
from holostream.workers.phasing import PhaseRetrieval, default_chain
from holostream.workers.physics import phase_to_delta_px, wavelength_m

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not gpu_available(), reason="cupy finds no CUDA device"),
]

ENERGY_KEV, PIXEL_M, DISTANCE_M, DELTA_BETA = 17.5, 1e-6, 0.3, 200.0
ROWS, COLS = 96, 128


@pytest.fixture(scope="module")
def backends():
    return get_backend("cpu", threads=1), get_backend("gpu")


@pytest.fixture(scope="module")
def holograms(backends):
    """Two flat-corrected holograms of spheres (δ = 8e-7 and 3e-7), float32 (2, ROWS, COLS)."""
    cpu, _ = backends
    y, x = (np.mgrid[:ROWS, :COLS] - np.array([(ROWS - 1) / 2, (COLS - 1) / 2])[:, None, None]) * PIXEL_M
    k = 2 * math.pi / wavelength_m(ENERGY_KEV)
    stack = []
    for delta in (8e-7, 3e-7):
        phase = np.zeros((ROWS, COLS))
        for yc, xc, r in ((-10e-6, -20e-6, 15e-6), (15e-6, 25e-6, 10e-6)):
            phase -= k * delta * 2 * np.sqrt(np.clip(r**2 - (y - yc) ** 2 - (x - xc) ** 2, 0, None))
        stack.append(np.exp(phase * (1 / DELTA_BETA + 1j)))
    padding = Padding((ROWS, COLS), cpu, mode="constant1", margin=1.0)
    wave = padding.pad(np.asarray(stack, dtype=np.complex64))
    propagator = FresnelPropagator(padding.padded_shape, PIXEL_M, DISTANCE_M, ENERGY_KEV, cpu)
    return np.ascontiguousarray(padding.crop(np.abs(propagator.forward(wave)) ** 2)).astype(np.float32)


def assert_same(gpu_backend, on_gpu, on_cpu, rtol):
    result = gpu_backend.to_host(on_gpu)
    assert result.dtype == on_cpu.dtype and result.shape == on_cpu.shape
    np.testing.assert_allclose(result, on_cpu, rtol=0, atol=rtol * np.abs(on_cpu).max())


def test_fresnel_matches(backends):
    cpu, gpu = backends
    rng = np.random.default_rng(0)
    psi = (rng.normal(size=(2, 64, 80)) + 1j * rng.normal(size=(2, 64, 80))).astype(np.complex64)
    plans = [FresnelPropagator((64, 80), PIXEL_M, DISTANCE_M, ENERGY_KEV, b) for b in backends]
    assert_same(gpu, plans[1].forward(gpu.asarray(psi)), plans[0].forward(psi), 1e-5)
    assert_same(gpu, plans[1].backward(gpu.asarray(psi)), plans[0].backward(psi), 1e-5)
    assert_same(gpu, plans[1].chi, plans[0].chi, 1e-7)


@pytest.mark.parametrize("mode", ["edge", "reflect", "constant1"])
def test_padding_matches(backends, holograms, mode):
    cpu, gpu = backends
    plans = [Padding((ROWS, COLS), b, mode=mode) for b in backends]
    padded = plans[1].pad(gpu.asarray(holograms))
    np.testing.assert_array_equal(gpu.to_host(padded), plans[0].pad(holograms))
    np.testing.assert_array_equal(gpu.to_host(plans[1].crop(padded)), holograms)


@pytest.mark.parametrize("method", [Paganin, CTF])
def test_start_filters_match(backends, holograms, method):
    cpu, gpu = backends
    plans = [method((ROWS, COLS), PIXEL_M, DISTANCE_M, ENERGY_KEV, DELTA_BETA, b) for b in backends]
    # Paganin's low-frequency gain δ/(2β) = 100 amplifies float32 rounding: noise of one ulp
    # on these holograms moves its output by 1.2e-5 of the maximum on the CPU alone (CTF:
    # 1.4e-6), so cuFFT against pocketfft needs 1e-4.
    assert_same(gpu, plans[1](gpu.asarray(holograms)), plans[0](holograms), 1e-4)


@pytest.mark.parametrize(
    "chain",
    [
        (),
        default_chain("ap", 10, DELTA_BETA),
        default_chain("raar", 10, DELTA_BETA),
        "ctf, raar**5(beta=0.8, delta_beta=200, phase_max=0), ap**3(phase_min=-10)",
    ],
)
def test_phase_retrieval_matches(backends, holograms, chain):
    cpu, gpu = backends
    plans = [
        PhaseRetrieval(chain, (ROWS, COLS), PIXEL_M, DISTANCE_M, ENERGY_KEV, DELTA_BETA, b)
        for b in backends
    ]
    # Iterations accumulate float32 rounding (different FFT libraries): 1e-4 of the range.
    assert_same(gpu, plans[1](gpu.asarray(holograms)), plans[0](holograms), 1e-4)


def test_unit_conversion_keeps_array_type(backends, holograms):
    _, gpu = backends
    phase = gpu.asarray(-holograms)
    out = phase_to_delta_px(phase, ENERGY_KEV, PIXEL_M)
    assert isinstance(out, gpu.xp.ndarray) and out.dtype == np.float32
    assert_same(gpu, out, phase_to_delta_px(-holograms, ENERGY_KEV, PIXEL_M), 1e-7)


@pytest.mark.parametrize("chain", ["paganin, newton**5(alpha_high=3), ap**5(delta_beta=200)",
                                   "ctf, newton**20(alpha_high=0.01)"])
def test_newton_chain_matches(backends, holograms, chain):
    # The second chain stops the thicker hologram (δ = 8e-7) at its 7th step (the 8th raises
    # the residual by 1.2 %, measured on numpy) while the other runs all 20: both backends
    # must keep the same iterate per projection.
    cpu, gpu = backends
    plans = [
        PhaseRetrieval(chain, (ROWS, COLS), PIXEL_M, DISTANCE_M, ENERGY_KEV, DELTA_BETA, b)
        for b in backends
    ]
    assert_same(gpu, plans[1](gpu.asarray(holograms)), plans[0](holograms), 1e-4)
