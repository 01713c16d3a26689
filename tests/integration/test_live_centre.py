"""The live service and the centre of rotation: estimated when the scan gives none, set by the
operator mid-scan. A 360° scan with its axis 6.3 px off centre streamed to a real daemon.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from holostream.service.clients.detector import stream_scan
from holostream.service.files.nxtomo import scan_data_from_simulation
from holostream.service.offline import reconstruct_scan
from holostream.shared.settings import ReconstructionSettings
from holostream.workers.backend import get_backend

pytestmark = pytest.mark.integration

OFFSET_PX = 6.3


@pytest.fixture(scope="module")
def offset_scan():
    from holostream.workers.phantom import random_phantom
    from holostream.workers.simulate import simulate_scan

    phantom = random_phantom(7, radius_m=24e-6, height_m=60e-6, n_objects=8, size_range=(0.15, 0.35))
    return simulate_scan(phantom, angles_deg=np.linspace(0, 360, 120, endpoint=False), rows=32,
                         cols=64, cor_px=OFFSET_PX, binning=1, n_darks=2, n_flats=4, seed=5)


@pytest.fixture
def daemon(shared_daemon):
    """The session's shared daemon (conftest.shared_daemon): the centre these tests set is a
    scan's, never a setting, so each scan starts from its own."""
    return shared_daemon


def _without_centre(scan):
    return dataclasses.replace(scan_data_from_simulation(scan), cor_px=None)


def _stream(address, data, scan_id, fps, reconstruction=None):
    errors = []

    def run():
        try:
            stream_scan(address, data, scan_id, fps=fps, reconstruction=reconstruction)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_centre_estimated_live_when_not_given(daemon, subscriber, offset_scan, serve):
    thread, errors = _stream(daemon.ingest, _without_centre(offset_scan), "centre_est", 60.0)
    volumes = subscriber.volumes_until_final("centre_est", timeout_s=60)
    thread.join(30)
    assert not errors
    header, final = volumes[-1]
    print(f"\nlive centre: {header['cor_px']:+.3f} ({header['cor_source']}, "
          f"confidence {header.get('cor_confidence')})")
    assert header["cor_source"] == "estimated" and header["cor_confidence"] >= 0.5
    assert header["cor_px"] == pytest.approx(OFFSET_PX, abs=0.3)
    # before the opposite angles arrived the volumes said so
    assert all(h["cor_source"] == "estimated" and 0.0 <= h["cor_confidence"] <= 1.0 for h, _ in volumes)
    # the final volume is the offline one about the same axis, not the one about the middle
    settings = ReconstructionSettings()
    cpu = get_backend("cpu", threads=1)
    right, _ = reconstruct_scan(scan_data_from_simulation(offset_scan), settings, 200.0,
                                OFFSET_PX, cpu)
    wrong, _ = reconstruct_scan(scan_data_from_simulation(offset_scan), settings, 200.0, 0.0, cpu)
    corr_right = np.corrcoef(final.ravel(), right.ravel())[0, 1]
    corr_wrong = np.corrcoef(final.ravel(), wrong.ravel())[0, 1]
    print(f"final vs offline about the true axis: corr {corr_right:.5f}; about the middle: {corr_wrong:.4f}")
    assert corr_right >= 0.999 and corr_wrong < 0.9


def test_operator_sets_the_centre_of_the_current_scan(daemon, subscriber, offset_scan, serve):
    thread, errors = _stream(daemon.ingest, _without_centre(offset_scan), "centre_op", 20.0)
    serve.wait_for(lambda: (daemon.status().get("n_projections_used") or 0) > 0, 30,
                   "the scan to start reconstructing")
    reply = daemon.ask({"cmd": "set", "params": {"cor_px": 6.0}})
    assert reply["ok"] and reply["cor_px"] == 6.0, reply
    assert daemon.status()["centre"]["cor_source"] == "operator"
    volumes = subscriber.volumes_until_final("centre_op", timeout_s=60)
    thread.join(30)
    assert not errors
    header, _ = volumes[-1]
    assert header["cor_source"] == "operator" and header["cor_px"] == 6.0
    assert "cor_confidence" not in header
    assert daemon.ask({"cmd": "config"})["ring_filters"] == ["none", "sorting", "column-mean"]

    # after the scan's end: its final volume again, re-centred from the kept sinogram
    final_header, final = volumes[-1]
    again = daemon.ask({"cmd": "set", "params": {"cor_px": OFFSET_PX}})
    assert again["ok"] and again["scan_id"] == "centre_op" and "completed" in again["retune_applies"], again
    [(header, recentred)] = subscriber.volumes_until_final("centre_op", timeout_s=60)
    assert header["final"] and header["seq"] == final_header["seq"] + 1
    assert header["cor_source"] == "operator" and header["cor_px"] == OFFSET_PX
    assert header["recentred"] == {"from_cor_px": 6.0, "from_cor_source": "operator"}
    assert not np.allclose(recentred, final)
    offline, _ = reconstruct_scan(scan_data_from_simulation(offset_scan), ReconstructionSettings(), 200.0,
                                  OFFSET_PX, get_backend("cpu", threads=1))
    assert np.corrcoef(recentred.ravel(), offline.ravel())[0, 1] >= 0.999
    assert daemon.ask({"cmd": "republish"})["seq"] == header["seq"]  # the newest final volume
    bad = daemon.ask({"cmd": "set", "params": {"cor_px": float("inf")}})
    assert not bad["ok"] and "finite" in bad["error"]


def test_completed_scan_not_kept_when_off(tmp_path, serve, offset_scan):
    daemon = serve.Daemon(tmp_path, publish_keys={"keep_last_scan_mb": 0})
    try:
        daemon.wait_ready()
        subscriber = serve.Subscriber(daemon.publish)
        subscriber.wait_connected()
        thread, errors = _stream(daemon.ingest, scan_data_from_simulation(offset_scan), "not_kept", 200.0)
        subscriber.volumes_until_final("not_kept", timeout_s=60)
        thread.join(30)
        assert not errors
        bad = daemon.ask({"cmd": "set", "params": {"cor_px": 1.0}})  # no scan open, none kept
        assert not bad["ok"] and "keep_last_scan_mb" in bad["error"], bad
        subscriber.close()
    finally:
        daemon.close()


def test_offset_axis_scan_live_covers_the_whole_disc(daemon, subscriber):
    # 360°, axis 20 px right of the middle of 64 columns, given: the live volume spans the
    # disc (2·⌈52⌉ = 104 voxels) and the final one is the offline reconstruction.
    from holostream.workers.phantom import random_phantom
    from holostream.workers.simulate import simulate_scan

    phantom = random_phantom(8, radius_m=40e-6, height_m=60e-6, n_objects=10, size_range=(0.1, 0.3))
    scan = simulate_scan(phantom, angles_deg=np.linspace(0, 360, 120, endpoint=False), rows=16,
                         cols=64, cor_px=20.0, binning=None, n_darks=2, n_flats=4, seed=6)
    data = scan_data_from_simulation(scan)
    thread, errors = _stream(daemon.ingest, data, "half_acq", 60.0)
    volumes = subscriber.volumes_until_final("half_acq", timeout_s=60)
    thread.join(30)
    assert not errors
    header, final = volumes[-1]
    assert header["half_acquisition"] and header["shape"] == [16, 104, 104]
    offline, attrs = reconstruct_scan(data, ReconstructionSettings(), 200.0, 20.0,
                                      get_backend("cpu", threads=1))
    assert attrs["half_acquisition"]
    np.testing.assert_allclose(final, offline, rtol=0, atol=2e-5 * float(np.abs(offline).max()))


@pytest.mark.parametrize("mode, ring_filter", [("pool", "column-mean"), ("split", "none"),
                                                ("cluster", "column-mean")])
def test_offset_axis_scan_live_without_cor_px(mode_daemon, serve, mode, ring_filter):
    # The same 360° scan with its axis 20 px right of the middle, not given: the daemon finds
    # the axis from opposite projections, sees that it is offset and publishes the whole
    # disc; the final volume is the offline one about the axis it found (with the same ring
    # filter, whose detector weights follow that axis too).
    from holostream.workers.phantom import random_phantom
    from holostream.workers.simulate import simulate_scan

    phantom = random_phantom(8, radius_m=40e-6, height_m=60e-6, n_objects=10, size_range=(0.1, 0.3))
    scan = simulate_scan(phantom, angles_deg=np.linspace(0, 360, 120, endpoint=False), rows=16,
                         cols=64, cor_px=20.0, binning=None, n_darks=2, n_flats=4, seed=6)
    data = _without_centre(scan)
    # cluster: 2 actors (return δ for the daemon to filter); the daemon goes on to test_live_rings
    daemon = mode_daemon(mode)
    scan_id = f"half_auto_{mode}"
    sub = serve.Subscriber(daemon.publish)
    try:
        sub.wait_connected()
        thread, errors = _stream(daemon.ingest, data, scan_id, 60.0, {"ring_filter": ring_filter})
        volumes = sub.volumes_until_final(scan_id, timeout_s=60)
        thread.join(30)
        assert not errors
        # the completed scan is kept: the operator can still move its axis
        reply = daemon.ask({"cmd": "set", "params": {"cor_px": 19.0}})
        assert "republishes" in str(reply), reply
        recentred_header, recentred = sub.volumes_until_final(scan_id, timeout_s=60)[-1]
    finally:
        sub.close()
    header, final = volumes[-1]
    print(f"\n{mode}: live centre without cor_px {header['cor_px']:+.3f} "
          f"(confidence {header['cor_confidence']:.2f}), volume {header['shape']}")
    assert header["cor_source"] == "estimated" and header["cor_confidence"] >= 0.5
    assert header["cor_px"] == pytest.approx(20.0, abs=0.3)
    assert header["ring_filter"] == ring_filter
    cpu = get_backend("cpu", threads=1)
    settings = ReconstructionSettings(ring_filter=ring_filter)
    offline, attrs = reconstruct_scan(scan_data_from_simulation(scan), settings, 200.0, header["cor_px"], cpu)
    # the disc about the axis found (2·⌈52⌉ = 104 voxels about the true one)
    assert attrs["half_acquisition"] and header["half_acquisition"]
    assert header["shape"] == list(offline.shape) and offline.shape[-1] in (104, 106)
    np.testing.assert_allclose(final, offline, rtol=0, atol=2e-5 * float(np.abs(offline).max()))
    assert recentred_header["cor_source"] == "operator" and recentred_header["half_acquisition"]
    offline, _ = reconstruct_scan(scan_data_from_simulation(scan), settings, 200.0, 19.0, cpu)
    assert list(recentred.shape) == recentred_header["shape"] == list(offline.shape)
    np.testing.assert_allclose(recentred, offline, rtol=0, atol=2e-5 * float(np.abs(offline).max()))
