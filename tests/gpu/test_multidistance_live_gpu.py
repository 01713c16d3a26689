"""A live worker's multi-distance group on the GPU against the same group on the CPU.

``service/daemon/distances.DistanceWork`` on a real open scan (shared memory, frames in its
ring, per-distance reference): the filtered δ/β projections and both partial volumes must
agree between the numpy and the cupy backends. Skipped without a usable CUDA device.
"""

import os

import numpy as np
import pytest

from holostream.service.daemon.distances import DistanceWork
from holostream.service.daemon.scanplan import open_scan
from holostream.shared.distances import DistanceInfo
from holostream.shared.messages import Frame, ScanInfo
from holostream.shared.scanbuffers import sweep
from holostream.shared.settings import ReconstructionSettings
from holostream.workers.backend import get_backend, gpu_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not gpu_available(), reason="no CUDA device usable by cupy"),
]

SHAPE = (32, 32)


def test_a_group_of_several_distances_on_the_gpu_equals_the_cpu():
    entries = (DistanceInfo(0.007, 1e-7, 1.0, (0.0, 0.0)), DistanceInfo(0.009, 1.2e-7, 1.0, (0.7, -0.4)))
    info = ScanInfo(scan_id="g", shape=SHAPE, dtype="uint16", n_darks=1, n_flats=1, n_projections=2,
                    energy_kev=17.5, distance_m=0.007, pixel_size_m=1e-7, delta_beta=100.0,
                    angle_start_deg=0.0, angle_step_deg=90.0, distances=entries)
    settings = ReconstructionSettings(phase="ctf", angle_binning=2)
    prefix = f"holostream_gputest{os.getpid()}"
    scan = open_scan(1, info, settings, prefix, 16, n_partials=2, split=False)
    try:
        rng = np.random.default_rng(0)
        tasks = []
        for d in range(2):
            for kind, value in (("dark", 100), ("flat", 1100)):
                image = np.full(SHAPE, value, np.uint16)
                tasks += scan.add_reference(Frame("g", kind, 0, SHAPE, "uint16", None, memoryview(image.tobytes()), d))
        for i in range(2):
            for d in range(2):
                image = rng.poisson(1000, SHAPE).astype(np.uint16)
                tasks += scan.add_projection(Frame("g", "projection", i, SHAPE, "uint16", None,
                                                   memoryview(image.tobytes()), d))
        (task,) = tasks
        buffers = scan.buffers
        cpu = DistanceWork(info, settings, buffers, get_backend("cpu", threads=1), 0, task["shifts_px"])
        cpu.run(task, buffers.volume[0], cpu.center_px(0.0))
        delta_cpu, beta_cpu = buffers.sinogram[0].copy(), buffers.arrays["beta_sinogram"][0].copy()
        gpu_backend = get_backend("gpu")
        gpu = DistanceWork(info, settings, buffers, gpu_backend, 1, task["shifts_px"])
        accumulator = gpu_backend.asarray(buffers.volume[1])
        gpu.run(task, accumulator, gpu.center_px(0.0))
        gpu.commit()
        scale = np.abs(delta_cpu).max()
        np.testing.assert_allclose(buffers.sinogram[0], delta_cpu, atol=1e-4 * scale)
        np.testing.assert_allclose(buffers.arrays["beta_sinogram"][0], beta_cpu, atol=1e-4 * np.abs(beta_cpu).max())
        np.testing.assert_allclose(gpu_backend.to_host(accumulator), buffers.volume[0],
                                   atol=1e-4 * np.abs(buffers.volume[0]).max())
        np.testing.assert_allclose(buffers.arrays["beta_volume"][1], buffers.arrays["beta_volume"][0],
                                   atol=1e-4 * np.abs(buffers.arrays["beta_volume"][0]).max())
        cpu.close()
        gpu.close()
    finally:
        scan.buffers.close()
        sweep(f"{prefix}_")
