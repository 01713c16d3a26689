"""The GPU (cupy) paths of the ring filters and of half acquisition against numpy.

Skipped without a usable CUDA device.
"""

import numpy as np
import pytest

from holostream.workers.backend import get_backend, gpu_available
from holostream.workers.fbp import RampFilter
from holostream.workers.halfacq import detector_weights
from holostream.workers.ring import remove_stripes

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not gpu_available(), reason="no CUDA device usable by cupy"),
]

CPU = get_backend("cpu", threads=1)


def test_sorting_filter_matches_numpy():
    gpu = get_backend("gpu")
    rng = np.random.default_rng(0)
    sinograms = rng.normal(0, 1, (90, 4, 64)).astype(np.float32)
    sinograms[:, :, 20] += 0.3
    ours = remove_stripes("sorting", sinograms, CPU)
    theirs = gpu.to_host(remove_stripes("sorting", gpu.asarray(sinograms), gpu))
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-6)


def test_weighted_ramp_matches_numpy():
    gpu = get_backend("gpu")
    rng = np.random.default_rng(1)
    projections = rng.normal(0, 1, (3, 4, 64)).astype(np.float32)
    weights = detector_weights(64, 20.0)
    ours = RampFilter(64, CPU)(projections * weights)
    theirs = gpu.to_host(RampFilter(64, gpu)(gpu.asarray(projections) * gpu.asarray(weights)))
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5 * np.abs(ours).max())


def test_column_mean_filter_and_its_volume_match_numpy():
    from holostream.service.daemon.rings import AbsorptionSum
    from holostream.workers.ring import column_stripes, ring_volume

    gpu = get_backend("gpu")
    rng = np.random.default_rng(2)
    sinograms = rng.normal(0, 1, (90, 4, 64)).astype(np.float32)
    sinograms[:, :, 20] += 0.3
    means = np.stack([sinograms[:45].mean(axis=0), sinograms[45:].mean(axis=0)])
    ours = column_stripes(means, CPU)
    theirs = gpu.to_host(column_stripes(gpu.asarray(means), gpu))
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-6)

    # the workers' running Σ weight·(-ln T) on the device, then the daemon's stripes volume
    weights = np.full(90, np.pi / 90)
    transmissions = np.exp(-np.abs(sinograms))
    angles = np.linspace(0, np.pi, 90, endpoint=False)
    on_gpu = AbsorptionSum("column-mean", (4, 64), gpu)
    on_gpu.add(gpu.asarray(transmissions), weights, np.degrees(angles))
    shared, shared_weights = np.zeros((2, 4, 64)), np.zeros(2)
    on_gpu.commit(shared, shared_weights)
    first = np.tensordot(weights[:45], np.abs(sinograms[:45]).astype(np.float64), axes=1)
    np.testing.assert_allclose(shared[0], first, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(shared_weights, [np.pi / 2, np.pi / 2])
    stripes = column_stripes(shared / shared_weights[:, None, None], CPU)
    ours = ring_volume(stripes, angles, weights, 1.5, (4, 64, 64), CPU)
    theirs = gpu.to_host(ring_volume(gpu.asarray(stripes), angles, weights, 1.5, (4, 64, 64), gpu))
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5 * np.abs(ours).max())


def test_deferred_half_acquisition_volume_matches_numpy():
    from holostream.service.daemon.halfscan import deferred_volume
    from holostream.workers.fbp import RampFilter

    gpu = get_backend("gpu")
    rng = np.random.default_rng(3)
    deltas = rng.normal(0, 1, (40, 4, 64)).astype(np.float32)
    angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    groups = {g: (float(a), 2 * np.pi / 40, 1) for g, a in enumerate(angles)}
    ours = deferred_volume(deltas, groups, 20.0, RampFilter(64, CPU), CPU, final=True)
    theirs = deferred_volume(deltas, groups, 20.0, RampFilter(64, gpu), gpu, final=True)
    assert ours.shape == (4, 104, 104)
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5 * np.abs(ours).max())
