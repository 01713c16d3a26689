"""The reconstructor's batch on real shared memory equals the pool workers' per-group path.

``ScanReconstruction`` takes binned transmissions from ``binned``, phases, filters and
back-projects a batch, and makes it visible only at ``commit``: the volume, the weight and
the ``handoff`` rows together. Run on numpy here and on cupy where a GPU is found (the CPU
numbers are the reference).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from holostream.service.daemon.handoff import Claims
from holostream.service.daemon.volumes import LiveScan
from holostream.service.daemon.reconstructor import ScanReconstruction, record_unreported
from holostream.shared.messages import ScanInfo
from holostream.shared.scanbuffers import HANDOFF_COMMITTED, HANDOFF_TAKEN, ScanBuffers, layout, sweep
from holostream.shared.settings import ReconstructionSettings
from holostream.workers import fbp, phasing
from holostream.workers.backend import get_backend, gpu_available
from holostream.workers.flatfield import average_frames
from holostream.workers.pipeline import ProjectionPipeline

GROUPS = [np.arange(0, 3), np.arange(45, 48), np.arange(90, 93), np.arange(135, 137)]  # 4 angle groups


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="cupy finds no CUDA device")])])
def backend(request):
    return get_backend(request.param, threads=1)


@pytest.fixture
def split_scan(single_material_scan, cpu_backend):
    """Shared buffers of a split-mode scan with ``binned`` filled as the CPU workers would."""
    scan = single_material_scan
    g = scan.geometry
    info = ScanInfo(scan_id="batch", shape=(g.rows, g.cols), dtype="uint16", n_darks=len(scan.darks),
                    n_flats=len(scan.flats), n_projections=len(scan.angles_deg), energy_kev=g.energy_kev,
                    distance_m=g.distance_m, pixel_size_m=g.pixel_size_m, delta_beta=200.0,
                    angle_start_deg=0.0, angle_step_deg=180.0 / len(scan.angles_deg))
    settings = ReconstructionSettings(binning=2, phase="paganin")
    prefix = f"holostream_{os.getpid()}_unit_batch"
    sweep(prefix)
    binned_shape = (g.rows // 2, g.cols // 2)
    buffers = ScanBuffers.create(prefix, layout(info.shape, "uint16", 2, len(GROUPS), binned_shape, 1,
                                                binned=True))
    dark, flat = average_frames(scan.darks, cpu_backend), average_frames(scan.flats, cpu_backend)
    buffers.reference[0], buffers.reference[1] = dark, flat
    pipe = ProjectionPipeline(info.shape, dark, flat, binning=2,
                              chain=phasing.default_chain("paganin", 10, 200.0), filter="ram-lak", energy_kev=g.energy_kev, distance_m=g.distance_m,
                              pixel_size_m=g.pixel_size_m, delta_beta=200.0, backend=cpu_backend)
    weights = fbp.angle_weights(np.radians([scan.angles_deg[idx].mean() for idx in GROUPS]))
    messages = []
    for group, idx in enumerate(GROUPS):
        buffers.binned[group] = pipe.transmission(scan.projections[idx], idx)
        messages.append({"type": "group", "scan_seq": 1, "prefix": prefix, "scan": info.to_dict(),
                         "settings": settings.to_dict(), "buffers": buffers.description(), "group": group,
                         "angle_deg": float(scan.angles_deg[idx].mean()), "weight": float(weights[group]),
                         "n_projections": len(idx), "worker": 0})
    # the pool workers' path: one group at a time, whole pipeline, into a volume of their own
    reference = np.zeros(buffers.volume.shape[1:], np.float32)
    filtered = np.stack([pipe.process(scan.projections[idx], idx) for idx in GROUPS])
    for message, one in zip(messages, filtered):
        fbp.backproject(reference, one[None],
                        np.array([math.radians(message["angle_deg"])]), np.array([message["weight"]]),
                        pipe.center_px(0.0), cpu_backend)
    try:
        yield buffers, messages, reference, filtered
    finally:
        buffers.close()
        buffers.unlink()


def test_batch_is_invisible_until_commit_then_equals_the_per_group_path(split_scan, backend):
    buffers, messages, reference, filtered = split_scan
    work = ScanReconstruction(messages[0], backend)
    claims = Claims()
    try:
        for m in messages:
            assert work.take(m["group"], claims)
        assert np.all(buffers.handoff[:, 0] == HANDOFF_TAKEN)
        assert not work.take(0, claims)  # a second copy (sent again after a death) is dropped
        work.run(messages[:3])  # two batches, as the queue delivered them
        work.run(messages[3:])
        # nothing visible yet: a process killed now leaves no half-added group behind
        assert not buffers.volume.any() and buffers.weights[0] == 0.0
        assert work.due(idle=True) and len(work.uncommitted) == 4
        committed = work.commit()
        assert [m["group"] for m in committed] == [0, 1, 2, 3] and not work.due(idle=True)
        assert buffers.weights[0] == pytest.approx(sum(m["weight"] for m in messages))
        scale = float(np.abs(reference).max())
        # on a GPU cuFFT's rounding goes through Paganin's gain δ/(2β) = 100: one float32 ulp
        # of input moves the phase by ~1e-5 of its maximum (tests/gpu/test_phase_gpu.py)
        tol = 1e-5 if backend.name == "cpu" else 1e-4
        np.testing.assert_allclose(buffers.volume[0], reference, rtol=0, atol=tol * scale)
        rows = buffers.handoff
        assert np.all(rows[:, 0] == HANDOFF_COMMITTED)
        np.testing.assert_allclose(rows[:, 1], [m["angle_deg"] for m in messages])
        np.testing.assert_allclose(rows[:, 2], [m["weight"] for m in messages])
        assert list(rows[:, 3]) == [3, 3, 3, 2] and np.all(rows[:, 4] == 0.0)
        # the sinogram the daemon re-weights from holds the same filtered projections
        np.testing.assert_allclose(buffers.sinogram, filtered, rtol=0,
                                   atol=tol * float(np.abs(filtered).max()))
    finally:
        work.close()


def test_daemon_records_committed_groups_whose_reports_were_lost(split_scan, cpu_backend):
    """A reconstructor killed between commit and its queue feeders: shared memory tells the daemon."""
    buffers, messages, reference, _ = split_scan
    work = ScanReconstruction(messages[0], cpu_backend)
    try:
        work.run(messages[:2])
        work.commit()  # groups 0 and 1 in volume[0], their group_done events "lost"
        work.run(messages[2:])  # groups 2 and 3 never committed: not in the volume
    finally:
        work.close()
    state = LiveScan(1, messages[0]["scan"], messages[0]["settings"], buffers, next_publish=0.0)
    assert record_unreported(state, now=0.0) == [0, 1]
    assert sorted(state.groups) == [0, 1] and state.n_used == 6
    assert state.groups[1][0] == pytest.approx(math.radians(messages[1]["angle_deg"]))
    assert record_unreported(state, now=0.0) == []  # once
    # the final volume is the one-shot FBP of those two groups alone (weights recomputed)
    expected = np.zeros_like(reference)
    angles = np.radians([m["angle_deg"] for m in messages[:2]])
    fbp.backproject(expected, buffers.sinogram[:2], angles, fbp.angle_weights(angles), 0.0, cpu_backend)
    expected *= np.float32(math.pi / fbp.angle_weights(angles).sum())
    final = state.final_volume(cpu_backend)
    np.testing.assert_allclose(final, expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))
