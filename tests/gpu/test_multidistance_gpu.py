"""The GPU (cupy) path of the multi-distance steps against the numpy reference.

Scaling to the reference grid, registration, multi-distance CTF (homogeneous and mixed),
AP/RAAR at every distance and the whole per-angle pipeline: same code, other namespace.
Skipped without a usable CUDA device.
"""

import numpy as np
import pytest

from holostream.workers.backend import get_backend, gpu_available
from holostream.workers.multiphasing import MultiDistancePhaseRetrieval
from holostream.workers.multipipeline import MultiDistancePipeline
from holostream.workers.multisimulate import cone_beam_distances, simulate_multidistance
from holostream.workers.phantom import mixed_material_phantom
from holostream.workers.registration import ScaleToReference, phase_correlation_shift

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not gpu_available(), reason="no CUDA device usable by cupy"),
]

CPU = get_backend("cpu", threads=1)
N = 64


@pytest.fixture(scope="module")
def gpu():
    return get_backend("gpu")


@pytest.fixture(scope="module")
def scan():
    distances = cone_beam_distances(0.5, [0.007, 0.0076, 0.009, 0.0115], 7e-6,
                                    [[0, 0], [1.3, -0.8], [-0.6, 2.1], [2.2, 1.4]])
    pixel = distances[0].effective()[2]
    phantom = mixed_material_phantom(3, 0.4 * N * pixel, 0.8 * N * pixel, delta_range=(2e-6, 6e-6))
    return simulate_multidistance(phantom, distances, n_projections=4, rows=N, cols=N, binning=None)


def pipeline(scan, backend, chain):
    effective = scan.effective
    return MultiDistancePipeline(
        (N, N), [s.darks.mean(0) for s in scan.scans], [s.flats.mean(0) for s in scan.scans],
        binning=1, chain=chain, filter="ram-lak", energy_kev=17.5,
        distances_m=[e[1] for e in effective], pixel_sizes_m=[e[2] for e in effective],
        delta_beta=200.0, backend=backend, shifts_px=[d.shift_px for d in scan.distances])


def close(gpu_backend, got, expected, rel):
    got = gpu_backend.to_host(got)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=0, atol=rel * float(np.abs(expected).max()))


def test_scaling_and_registration_match_cpu(gpu, scan):
    stack = np.stack([p.projections[0].astype(np.float32) / 2e4 for p in scan.scans])
    sizes = [e[2] for e in scan.effective]
    shifts = [d.shift_px for d in scan.distances]
    expected = ScaleToReference((N, N), sizes, CPU, shifts)(stack)
    close(gpu, ScaleToReference((N, N), sizes, gpu, shifts)(gpu.asarray(stack)), expected, 1e-5)
    cpu_shift = phase_correlation_shift(expected[0], expected[2], CPU)
    assert phase_correlation_shift(gpu.asarray(expected[0]), gpu.asarray(expected[2]), gpu) == pytest.approx(
        cpu_shift, abs=0.011)


@pytest.mark.parametrize("chain", ["ctf", "ctf_mixed", "paganin, raar**5, ap**3(delta_beta=200)"])
def test_phase_retrieval_matches_cpu(gpu, scan, chain):
    cpu_pipe, gpu_pipe = pipeline(scan, CPU, chain), pipeline(scan, gpu, chain)
    raws = [s.projections[:2] for s in scan.scans]
    transmission = cpu_pipe.transmission(raws)
    close(gpu, gpu_pipe.transmission(raws), transmission, 1e-6)
    for got, expected in zip(gpu_pipe.filtered_from_transmission(gpu.asarray(transmission)),
                             cpu_pipe.filtered_from_transmission(transmission)):
        close(gpu, got, expected, 1e-4)


def test_multi_distance_retrieval_accepts_device_arrays(gpu, scan):
    retrieval = MultiDistancePhaseRetrieval("ctf", (N, N), 1e-7, [0.0069, 0.0075], 17.5, 200.0, gpu)
    phase, attenuation = retrieval(gpu.xp.ones((2, N, N), gpu.xp.float32))
    assert float(abs(phase).max()) < 1e-5 and float(abs(attenuation).max()) < 1e-5
