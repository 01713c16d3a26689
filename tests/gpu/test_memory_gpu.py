"""The device-memory estimate's phasing part against cupy's memory pool on a real GPU.

``workers/memory.py`` counts padded complex64 arrays per projection from peaks measured on
the numpy path (tests/unit/test_memory.py); cupy allocates the same arrays through its pool,
plus cuFFT plan work space, which the estimate adds as ``FFT_WORKSPACE_FACTOR``. Skipped where
cupy finds no CUDA device.
"""

import numpy as np
import pytest

from holostream.workers.backend import get_backend, gpu_available
from holostream.workers.memory import FFT_WORKSPACE_FACTOR, padded_side, waves_per_projection
from holostream.workers.multiphasing import MultiDistancePhaseRetrieval
from holostream.workers.phasing import PhaseRetrieval, parse_chain

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not gpu_available(), reason="cupy finds no CUDA device"),
]

N, BATCH = 512, 8


def _pool_peak_waves(retrieve, intensities, wave_bytes: int) -> float:
    """Bytes the pool had to grow by for one call (freed blocks reused), per projection, in waves."""
    import cupy as cp

    pool = cp.get_default_memory_pool()
    retrieve(intensities)  # plans and one-off arrays
    cp.cuda.Device().synchronize()
    pool.free_all_blocks()
    base = pool.total_bytes()
    retrieve(intensities)
    cp.cuda.Device().synchronize()
    return (pool.total_bytes() - base) / wave_bytes / intensities.shape[0]


@pytest.mark.parametrize("chain", ["paganin", "ctf", "paganin, ap**4(delta_beta=200)",
                                   "paganin, raar**4(delta_beta=200)"])
def test_estimate_bounds_cupys_pool_at_one_distance(chain):
    backend = get_backend("gpu")
    steps = parse_chain(chain)
    retrieval = PhaseRetrieval(steps, (N, N), 1e-6, 0.2, 17.5, 200.0, backend, "edge")
    rng = np.random.default_rng(0)
    intensities = backend.asarray((1 + 0.01 * rng.standard_normal((BATCH, N, N))).astype(np.float32))
    measured = _pool_peak_waves(retrieval, intensities, padded_side(N) ** 2 * 8)
    model = waves_per_projection([s.name for s in steps]) + FFT_WORKSPACE_FACTOR
    print(f"\n{chain}: cupy pool {measured:.2f} waves per projection, estimate {model:.2f}")
    assert measured <= model


@pytest.mark.parametrize("n_distances", [1, 4])
def test_estimate_bounds_cupys_pool_at_several_distances(n_distances):
    backend = get_backend("gpu")
    steps = parse_chain("ctf, ap**3(delta_beta=200)")
    n = 256
    retrieval = MultiDistancePhaseRetrieval(steps, (n, n), 1e-7, [0.01 * (1 + 0.3 * k) for k in range(n_distances)],
                                            17.5, 200.0, backend)
    rng = np.random.default_rng(0)
    intensities = backend.asarray(
        (1 + 0.01 * rng.standard_normal((BATCH, n_distances, n, n))).astype(np.float32))
    measured = _pool_peak_waves(retrieval, intensities, padded_side(n) ** 2 * 8)
    model = waves_per_projection([s.name for s in steps], n_distances) + FFT_WORKSPACE_FACTOR
    print(f"\n{n_distances} distance(s): cupy pool {measured:.2f} waves per projection, estimate {model:.2f}")
    assert measured <= model
