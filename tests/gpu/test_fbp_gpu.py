"""The GPU (cupy) path of flat-field, binning and FBP against the numpy reference.

Same code, other namespace: results must agree to float32 precision. Skipped without a
usable CUDA device.
"""

import numpy as np
import pytest

from holostream.workers.backend import get_backend, gpu_available
from holostream.workers.binning import bin_angles, bin_pixels
from holostream.workers.fbp import (
    RampFilter,
    VolumeAccumulator,
    angle_weights,
    backproject,
    combine_partials,
    reconstruct,
)
from holostream.workers.flatfield import FlatField, average_frames

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not gpu_available(), reason="no CUDA device usable by cupy"),
]

CPU = get_backend("cpu", threads=1)


@pytest.fixture(scope="module")
def gpu():
    return get_backend("gpu")


def assert_close(gpu_backend, got, expected, rel=2e-6):
    """float32 agreement: errors within ``rel`` of the largest value."""
    got = gpu_backend.to_host(got)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    scale = float(np.abs(expected).max()) or 1.0
    np.testing.assert_allclose(got, expected, rtol=0, atol=rel * scale)


def test_flatfield_and_averages(gpu):
    rng = np.random.default_rng(0)
    darks = rng.integers(90, 110, size=(10, 32, 40), dtype=np.uint16)
    flats = rng.integers(1000, 3000, size=(10, 32, 40), dtype=np.uint16)
    after = rng.integers(1000, 3000, size=(10, 32, 40), dtype=np.uint16)
    raw = rng.integers(0, 3000, size=(5, 32, 40), dtype=np.uint16)
    results = []
    for backend in (CPU, gpu):
        dark = average_frames(backend.asarray(darks), backend)
        flat = average_frames(backend.asarray(flats), backend)
        flat_after = average_frames(backend.asarray(after), backend)
        correction = FlatField(dark, flat, backend, flat_after=flat_after)
        results.append((dark, correction(backend.asarray(raw), index=np.arange(5) * 7, n_projections=30)))
    assert_close(gpu, results[1][0], results[0][0])
    assert_close(gpu, results[1][1], results[0][1])


def test_binning(gpu):
    rng = np.random.default_rng(1)
    stack = rng.uniform(size=(7, 30, 43)).astype(np.float32)
    angles = np.linspace(0, 30, 7)
    assert_close(gpu, bin_pixels(gpu.asarray(stack), 4, gpu.xp), bin_pixels(stack, 4, np))
    stack_gpu, angles_gpu = bin_angles(gpu.asarray(stack), angles, 3, gpu.xp)
    stack_cpu, angles_cpu = bin_angles(stack, angles, 3, np)
    assert_close(gpu, stack_gpu, stack_cpu)
    np.testing.assert_array_equal(angles_gpu, angles_cpu)


@pytest.mark.parametrize("window", ["ram-lak", "hann"])
def test_ramp_filter(gpu, window):
    proj = np.random.default_rng(2).normal(size=(4, 8, 96)).astype(np.float32)
    expected = RampFilter(96, CPU, window)(proj)
    assert_close(gpu, RampFilter(96, gpu, window)(gpu.asarray(proj)), expected, rel=1e-5)


def test_backproject_and_reconstruct(gpu):
    rng = np.random.default_rng(3)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 50))
    sinogram = rng.uniform(size=(50, 6, 64)).astype(np.float32)
    filtered = RampFilter(64, CPU)(sinogram)
    weights = angle_weights(angles)
    expected = np.zeros((6, 64, 64), np.float32)
    backproject(expected, filtered, angles, weights, 2.5, CPU)
    volume = gpu.xp.zeros((6, 64, 64), dtype=gpu.xp.float32)
    backproject(volume, gpu.asarray(filtered), angles, weights, 2.5, gpu)
    # the CUDA kernel computes detector positions in float32, the CPU kernel in float64
    assert_close(gpu, volume, expected, rel=5e-5)
    assert_close(gpu, reconstruct(gpu.asarray(sinogram), angles, -1.0, gpu),
                 reconstruct(sinogram, angles, -1.0, CPU), rel=5e-5)


@pytest.mark.parametrize("nz, n, cols", [(37, 200, 190), (4, 683, 682)])
def test_cuda_kernel_matches_the_cpu_reference(gpu, nz, n, cols):
    pytest.importorskip("numba.cuda", reason="numba-cuda is not installed (the gpu extra)")
    rng = np.random.default_rng(5)
    angles = rng.uniform(0, 2 * np.pi, 90)
    filtered = rng.standard_normal((90, nz, cols)).astype(np.float32)
    weights = rng.uniform(0.01, 0.05, 90)
    start = rng.standard_normal((nz, n, n)).astype(np.float32)
    expected = start.copy()
    backproject(expected, filtered, angles, weights, 1.25, CPU, reference=True)
    volume = gpu.asarray(start)
    backproject(volume, gpu.asarray(filtered), angles, weights, 1.25, gpu)
    assert_close(gpu, volume, expected, rel=5e-5)
    on_gpu = gpu.asarray(start)
    backproject(on_gpu, gpu.asarray(filtered), angles, weights, 1.25, gpu, reference=True)
    assert_close(gpu, volume, gpu.to_host(on_gpu), rel=5e-5)


def test_accumulator_and_partials(gpu):
    rng = np.random.default_rng(4)
    angles = np.linspace(0, np.pi, 40, endpoint=False)
    filtered = RampFilter(48, CPU)(rng.uniform(size=(40, 3, 48)).astype(np.float32))
    weights = angle_weights(angles)
    volumes = []
    for backend in (CPU, gpu):
        parts = [VolumeAccumulator((3, 48, 48), 0.5, backend) for _ in range(2)]
        for i in range(40):
            parts[i % 2].add(i, backend.asarray(filtered[i]), angles[i], weights[i])
        parts[0].reweight({0: 2 * weights[0]})
        volumes.append(combine_partials([p.data for p in parts], [p.weight_sum for p in parts]))
    assert_close(gpu, volumes[1], volumes[0], rel=1e-5)
