"""ProjectionPipeline and plan_groups: the one path from raw frames to a δ volume.

Scored against the phantom's voxelised ground truth inside the reconstruction cylinder.
"""

import math

import numpy as np
import pytest

from holostream.service.files.nxtomo import scan_data_from_simulation
from holostream.service.offline import reconstruct_scan
from holostream.shared.settings import ReconstructionSettings
from holostream.workers import phasing
from holostream.workers.flatfield import average_frames
from holostream.workers.pipeline import ProjectionPipeline, plan_groups
from holostream.workers.simulate import HologramSimulator


def _pipeline(scan, backend, phase="paganin", binning=2, with_after=True):
    g = scan.geometry
    after = scan.flats_after if with_after else None
    return ProjectionPipeline(
        (g.rows, g.cols), average_frames(scan.darks, backend), average_frames(scan.flats, backend),
        binning=binning, chain=phasing.default_chain(phase, 10, 200.0), filter="ram-lak",
        energy_kev=g.energy_kev, distance_m=g.distance_m, pixel_size_m=g.pixel_size_m,
        delta_beta=200.0, backend=backend,
        flat_after=None if after is None else average_frames(after, backend),
        n_projections=len(scan.angles_deg),
    )


def _score(volume, truth):
    """Correlation, least-squares slope and ratio of means inside the objects (cylinder only)."""
    n = truth.shape[1]
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    mask = np.broadcast_to(np.hypot(yy, xx) < n / 2 - 2, truth.shape)
    a, b = volume[mask].astype(np.float64), truth[mask].astype(np.float64)
    inside = b > 0.5 * b.max()
    return (np.corrcoef(a, b)[0, 1], (a * b).sum() / (b * b).sum(),
            a[inside].mean() / b[inside].mean(), np.sqrt(((a - b) ** 2).mean()))


def test_plan_groups_means_and_weights():
    angles = np.linspace(0, 180, 180, endpoint=False)
    groups, mean_deg, weights = plan_groups(180, 2, angles)
    assert len(groups) == 90 and list(groups[1]) == [2, 3]
    np.testing.assert_allclose(mean_deg, np.arange(90) * 2 + 0.5)
    np.testing.assert_allclose(weights, math.pi / 90)
    groups, mean_deg, weights = plan_groups(7, 3, [0, 10, 20, 30, 40, 50, 60])
    assert [len(g) for g in groups] == [3, 3, 1]
    np.testing.assert_allclose(mean_deg, [10, 40, 60])
    assert weights.sum() == pytest.approx(math.pi)
    with pytest.raises(ValueError, match="angles"):
        plan_groups(5, 1, [0, 1, 2])


def test_transmission_is_the_binned_group_mean_of_the_hologram(single_material_scan, cpu_backend):
    scan = single_material_scan
    pipe = _pipeline(scan, cpu_backend)
    assert pipe.binned_shape == (64, 64) and pipe.voxel_size_m == pytest.approx(2e-6)
    assert pipe.center_px(0.0) == 0.0 and pipe.center_px(3.0) == 1.5
    idx = np.array([40, 41])
    got = pipe.transmission(scan.projections[idx], idx)
    sim = HologramSimulator(scan.phantom, scan.geometry)
    ideal = np.mean([sim.intensity(a) for a in scan.angles_deg[idx]], axis=0)
    ideal = ideal.reshape(64, 2, 64, 2).mean(axis=(1, 3))
    # 8 frames of ~2·10⁴ counts per binned pixel: 0.35 % noise
    assert abs(float((got - ideal).mean())) < 1e-3
    assert float((got - ideal).std()) < 6e-3
    assert float(np.abs(ideal - 1).max()) > 0.05  # the object is visible


def test_batch_equals_single_groups(single_material_scan, cpu_backend):
    scan = single_material_scan
    pipe = _pipeline(scan, cpu_backend, phase="ap")
    raws = [scan.projections[0:2], scan.projections[2:4], scan.projections[4:5]]
    idx = [np.arange(0, 2), np.arange(2, 4), np.arange(4, 5)]
    batch = pipe.process_batch(raws, idx)
    assert batch.shape == (3, 64, 64) and batch.dtype == np.float32
    for j in range(3):
        np.testing.assert_allclose(pipe.process(raws[j], idx[j]), batch[j], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        pipe.process(scan.projections[0:2, :64], idx[0])


def test_single_material_reconstruction_matches_ground_truth(single_material_scan, cpu_backend):
    scan = single_material_scan
    settings = ReconstructionSettings(binning=2, angle_binning=2, phase="paganin")
    volume, attrs = reconstruct_scan(scan_data_from_simulation(scan), settings, 200.0, 0.0,
                                     cpu_backend)
    assert volume.shape == scan.ground_truth.shape == (64, 64, 64)
    corr, slope, ratio, rmse = _score(volume, scan.ground_truth)
    print(f"\nsingle material, paganin: corr {corr:.4f}, slope {slope:.4f}, "
          f"mean ratio inside objects {ratio:.4f}, rmse {rmse:.3g}")
    assert corr >= 0.97
    assert 0.9 <= slope <= 1.1 and 0.9 <= ratio <= 1.1
    assert attrs["n_angle_groups"] == 90 and attrs["voxel_size_m"] == pytest.approx(2e-6)


def test_two_materials_iterations_at_least_as_good_as_paganin(
        two_material_scan, two_material_delta_beta, cpu_backend):
    data = scan_data_from_simulation(two_material_scan)
    scores = {}
    for phase in ("paganin", "ap"):
        settings = ReconstructionSettings(binning=2, angle_binning=2, phase=phase, iterations=10)
        volume, _ = reconstruct_scan(data, settings, two_material_delta_beta, 0.0, cpu_backend)
        scores[phase] = _score(volume, two_material_scan.ground_truth)
        corr, slope, ratio, rmse = scores[phase]
        print(f"\ntwo materials, {phase}: corr {corr:.4f}, slope {slope:.4f}, rmse {rmse:.3g}")
    assert scores["ap"][0] >= scores["paganin"][0]
    assert scores["ap"][3] <= scores["paganin"][3]
    assert scores["ap"][0] >= 0.9


def test_wrong_axis_or_missing_phase_retrieval_is_measurably_worse(single_material_scan, cpu_backend):
    # The score is sensitive: an axis 3 px off, or no phase retrieval, fail the bar.
    data = scan_data_from_simulation(single_material_scan)
    settings = ReconstructionSettings(binning=2, angle_binning=2)
    shifted, _ = reconstruct_scan(data, settings, 200.0, 3.0, cpu_backend)
    assert _score(shifted, single_material_scan.ground_truth)[0] < 0.9
    raw, _ = reconstruct_scan(data, settings.merged({"phase": "none"}), 200.0, 0.0, cpu_backend)
    assert _score(raw, single_material_scan.ground_truth)[0] < 0.9


def test_off_centre_axis_simulated_and_reconstructed_consistently(cpu_backend):
    # Simulation (axis at column c0 = (cols-1)/2 + 3), binning 2 (axis at 1.5 binned
    # pixels) and back-projection agree on the convention of PROTOCOL.md.
    from holostream.workers.phantom import random_phantom
    from holostream.workers.simulate import simulate_scan

    phantom = random_phantom(5, radius_m=24e-6, height_m=50e-6, n_objects=5, size_range=(0.2, 0.4))
    scan = simulate_scan(phantom, n_projections=120, rows=64, cols=72, cor_px=3.0, binning=2,
                         seed=2)
    data = scan_data_from_simulation(scan)
    settings = ReconstructionSettings(binning=2, angle_binning=2)
    right, attrs = reconstruct_scan(data, settings, 200.0, 3.0, cpu_backend)
    wrong, _ = reconstruct_scan(data, settings, 200.0, 0.0, cpu_backend)
    assert attrs["center_px_binned"] == 1.5 and right.shape == (32, 36, 36)
    corr_right = _score(right, scan.ground_truth)[0]
    corr_wrong = _score(wrong, scan.ground_truth)[0]
    print(f"\naxis at +3 px: corr {corr_right:.4f} with cor_px 3, {corr_wrong:.4f} with cor_px 0")
    assert corr_right >= 0.97 and corr_wrong < corr_right - 0.1


def test_centre_estimated_when_not_given(cpu_backend):
    # A centre left out (None) is estimated from the scan and reported as such; the volume
    # is then as good as with the true centre given.
    from holostream.workers.phantom import random_phantom
    from holostream.workers.simulate import simulate_scan

    phantom = random_phantom(5, radius_m=24e-6, height_m=50e-6, n_objects=5, size_range=(0.2, 0.4))
    scan = simulate_scan(phantom, n_projections=120, rows=32, cols=72, cor_px=-7.3, binning=2,
                         seed=2)
    data = scan_data_from_simulation(scan)
    settings = ReconstructionSettings(binning=2, angle_binning=2)
    estimated, attrs = reconstruct_scan(data, settings, 200.0, None, cpu_backend)
    given, given_attrs = reconstruct_scan(data, settings, 200.0, -7.3, cpu_backend)
    assert attrs["cor_source"] == "estimated" and attrs["cor_confidence"] >= 0.5
    assert attrs["cor_px"] == pytest.approx(-7.3, abs=0.3)
    assert given_attrs["cor_source"] == "given" and given_attrs["cor_confidence"] is None
    corr_estimated = _score(estimated, scan.ground_truth)[0]
    corr_given = _score(given, scan.ground_truth)[0]
    print(f"\ncentre estimated {attrs['cor_px']:+.3f} (conf {attrs['cor_confidence']:.2f}): "
          f"corr {corr_estimated:.4f}, with the true centre {corr_given:.4f}")
    assert corr_estimated >= corr_given - 0.005
