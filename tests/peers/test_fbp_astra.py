"""Our FBP against astra-toolbox's CPU FBP: agreement and accuracy (speed: holostream bench).

Geometry mapping (found with an off-centre phantom): astra's 2-D ``parallel`` geometry
with the same angles and the same detector order sees our sinogram correctly, but its
image row 0 is the largest y, so ``ours[z] == astra_result[::-1]``.

Run with ``pytest -s -m peers tests/peers`` to see the numbers.
"""

import time

import numpy as np
import pytest

from analytic import N, ellipse_image, ellipse_sinogram

from holostream.workers.backend import get_backend
from holostream.workers.fbp import reconstruct

astra = pytest.importorskip("astra")

pytestmark = pytest.mark.peers

NZ, N_ANGLES = 64, 180
def astra_fbp_volume(sinogram, angles, projector):
    """Slice-by-slice astra CPU FBP of (n_angles, nz, cols), in our [z, y, x] orientation."""
    vol_geom = astra.create_vol_geom(N, N)
    proj_geom = astra.create_proj_geom("parallel", 1.0, N, angles)
    projector_id = astra.create_projector(projector, proj_geom, vol_geom)
    out = np.empty((sinogram.shape[1], N, N), np.float32)
    try:
        for z in range(sinogram.shape[1]):
            sino_id = astra.data2d.create("-sino", proj_geom, sinogram[:, z, :])
            rec_id = astra.data2d.create("-vol", vol_geom, 0.0)
            cfg = astra.astra_dict("FBP")
            cfg.update(ProjectorId=projector_id, ProjectionDataId=sino_id, ReconstructionDataId=rec_id)
            algorithm_id = astra.algorithm.create(cfg)
            astra.algorithm.run(algorithm_id)
            out[z] = astra.data2d.get(rec_id)[::-1]
            astra.algorithm.delete(algorithm_id)
            astra.data2d.delete([sino_id, rec_id])
    finally:
        astra.projector.delete(projector_id)
    return out


def timed(fn):
    """``(seconds, result)`` of one call: printed for orientation only (speed: holostream bench)."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


@pytest.fixture(scope="module")
def case():
    """The sinogram, the exact volume, the field of view and our FBP of it (both projectors'
    comparisons use the same one)."""
    angles = np.linspace(0, np.pi, N_ANGLES, endpoint=False)
    # slices differ by a factor so a slice mix-up would show
    scale = np.linspace(0.5, 1.5, NZ)
    sinogram = ellipse_sinogram(angles, nz=1) * scale[None, :, None].astype(np.float32)
    truth = ellipse_image()[None] * scale[:, None, None]
    c = np.arange(N) - (N - 1) / 2
    fov = np.hypot(*np.meshgrid(c, c, indexing="ij")) < N / 2 - 2
    backend = get_backend("cpu")
    t_ours, ours = timed(lambda: reconstruct(sinogram, angles, 0.0, backend))
    return angles, sinogram, truth, fov, backend, t_ours, ours


@pytest.mark.parametrize("projector", ["linear", "line"])
def test_fbp_agrees_with_astra_and_is_as_accurate(case, projector):
    angles, sinogram, truth, fov, backend, t_ours, ours = case
    t_astra, theirs = timed(lambda: astra_fbp_volume(sinogram, angles, projector))

    corr = np.corrcoef(ours[:, fov].ravel(), theirs[:, fov].ravel())[0, 1]
    rel_diff = np.linalg.norm(ours[:, fov] - theirs[:, fov]) / np.linalg.norm(theirs[:, fov])
    rel_err_ours = np.linalg.norm(ours[:, fov] - truth[:, fov]) / np.linalg.norm(truth[:, fov])
    rel_err_astra = np.linalg.norm(theirs[:, fov] - truth[:, fov]) / np.linalg.norm(truth[:, fov])
    print(
        f"\nFBP {NZ}x{N}x{N}, {N_ANGLES} angles, astra projector {projector!r}, "
        f"{backend.threads} thread(s) for ours: correlation ours/astra {corr:.5f}, "
        f"relative difference {rel_diff:.4f}; relative error vs exact phantom: "
        f"ours {rel_err_ours:.4f}, astra {rel_err_astra:.4f}; "
        f"time per volume (one run, not a benchmark): ours {t_ours:.3f} s, astra {t_astra:.3f} s"
    )
    assert corr > 0.995
    assert rel_diff < 0.05
    assert rel_err_ours <= rel_err_astra * 1.001
    # speed is the benchmark's business (holostream bench: fbp_vs_astra), not a timed test
