"""A 4-distance scan streamed live into a real daemon equals its offline reconstruction.

The files are written by ``holostream simulate --distances 4`` (48², 60 angles, magnified
cone beam, stage offsets, Poisson noise); the daemon measures the offsets itself on the
first groups, as offline does, and publishes δ (``volume``) and β (``beta``).
"""

import json
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from holostream.service.clients.distances import stream_distances
from holostream.service.files.nxtomo import read_scan
from holostream.service.offline_distances import reconstruct_distances
from holostream.shared.messages import encode_frame
from holostream.shared.settings import ReconstructionSettings
from holostream.workers.backend import get_backend

pytestmark = pytest.mark.integration

FINAL_TIMEOUT_S = 180  # 2 busy cores: a 60-angle, 4-distance scan takes a few seconds when quiet


@pytest.fixture(scope="module")
def four_scans(four_distance_files):
    """The files of ``holostream simulate --distances 4`` (conftest, shared with the offline tests)."""
    _, paths, _ = four_distance_files
    return paths, [read_scan(str(p)) for p in paths]


@pytest.fixture(scope="module")
def offline(four_scans):
    """δ, β and attributes of the same files reconstructed by ``reconstruct_distances``."""
    _, scans = four_scans
    return reconstruct_distances(scans, ReconstructionSettings(phase="ctf"), scans[0].delta_beta,
                                 scans[0].cor_px or 0.0, get_backend("cpu"))


@pytest.fixture(scope="module")
def live(serve, tmp_path_factory):
    """One CTF daemon and its subscriber for the module: each test streams its own scan id and
    counts from what the daemon had counted before it (a daemon costs ~3 s to start)."""
    folder = tmp_path_factory.mktemp("mdserve")
    daemon = serve.Daemon(folder, workers=2, output_dir=folder / "out", phase="ctf")
    subscriber = None
    try:
        daemon.wait_ready(60)
        subscriber = serve.Subscriber(daemon.publish, topics=(b"volume", b"beta", b"status"))
        subscriber.wait_connected()
        yield daemon, subscriber
    finally:
        if subscriber is not None:
            subscriber.close()
        daemon.close()


def final_delta_and_beta(subscriber, scan_id):
    """The final ``volume`` of ``scan_id`` and the ``beta`` published right after it."""
    header, delta = subscriber.volumes_until_final(scan_id, FINAL_TIMEOUT_S)[-1]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        message = subscriber.next(0.2)
        if message and message[0] == "beta" and message[1]["scan_id"] == scan_id and message[1]["final"]:
            assert message[1]["seq"] == header["seq"] and message[1]["quantity"] == "beta"
            return header, delta, message[2][0]
    raise AssertionError(f"no final beta of {scan_id}")


def test_live_four_distances_equal_offline_and_a_bad_distance_is_refused(serve, live, four_scans, offline):
    daemon, subscriber = live
    _, scans = four_scans
    scan_id = "md_live"
    unknown = daemon.status()["ingest"]["rejected_by_reason"].get("unknown_distance", 0)
    bad = encode_frame(scan_id, "projection", 5, np.asarray(scans[0].projections[5]), angle_deg=9.0,
                       distance_index=7)
    lacking = encode_frame(scan_id, "projection", 6, np.asarray(scans[0].projections[6]), angle_deg=12.0)
    stream_distances(daemon.ingest, scans, scan_id, extra={5: [bad], 20: [lacking]})
    header, delta, beta = final_delta_and_beta(subscriber, scan_id)
    off_delta, off_beta, attrs = offline

    assert header["n_projections_used"] == header["n_projections_expected"] == 60
    assert header["n_distances"] == 4 and header["angles_left_out"] == 0
    # the same offsets as offline: measured on the same first groups by the same code
    offline_shifts = [entry["shift_px"] for entry in json.loads(attrs["distances"])]
    assert [entry["shift_px"] for entry in header["distances"]] == offline_shifts
    assert header["pixel_size_m"] == pytest.approx(scans[0].pixel_size_m)
    np.testing.assert_allclose(delta, off_delta, rtol=1e-4, atol=1e-5 * np.abs(off_delta).max())
    np.testing.assert_allclose(beta, off_beta, rtol=1e-4, atol=1e-5 * np.abs(off_beta).max())
    assert np.corrcoef(delta.ravel(), off_delta.ravel())[0, 1] > 0.99999

    # out of range, and none given; ingest reports its counters every 0.5 s
    serve.wait_for(lambda: daemon.status()["ingest"]["rejected_by_reason"].get("unknown_distance") == unknown + 2,
                   10, "both bad frames counted as unknown_distance")
    assert "distance_index 7 out of range" in open(daemon.log).read()
    # δ and β saved together, as `holostream reconstruct` writes them
    (path,) = (daemon.output_dir).glob(f"{scan_id}_*.h5")
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["entry/data/delta"][()], delta)
        np.testing.assert_array_equal(f["entry/data/beta"][()], beta)
        assert f["beta"].attrs["quantity"] == "beta"

    # a subscriber that missed them asks again: δ, then β, both marked republished
    reply = daemon.ask({"cmd": "republish"})
    assert reply["ok"] and reply["beta"] is True and reply["seq"] == header["seq"]
    again = {}
    while len(again) < 2:
        message = serve.wait_for(lambda: subscriber.next(0.2), 10, "the republished δ and β")
        if message[0] in ("volume", "beta") and message[1].get("republished"):
            again[message[0]] = message
    assert again["beta"][1]["seq"] == header["seq"] and again["beta"][1]["quantity"] == "beta"
    np.testing.assert_array_equal(again["volume"][2][0], delta)
    np.testing.assert_array_equal(again["beta"][2][0], beta)

    # the operator moves the finished scan's axis: δ and β again, about the new axis, as
    # offline reconstructs them with that axis
    assert daemon.ask({"cmd": "set", "params": {"cor_px": 0.5}})["ok"]
    moved = {}
    while len(moved) < 2:
        message = serve.wait_for(lambda: subscriber.next(0.2), 30, "the re-centred δ and β")
        if message[0] in ("volume", "beta") and message[1].get("cor_source") == "operator":
            moved[message[0]] = message
    assert moved["volume"][1]["seq"] == moved["beta"][1]["seq"] == header["seq"] + 1
    assert moved["beta"][1]["cor_px"] == 0.5 and moved["beta"][1]["final"]
    re_delta, re_beta, _ = reconstruct_distances(scans, ReconstructionSettings(phase="ctf"), scans[0].delta_beta,
                                                 0.5, get_backend("cpu"))
    np.testing.assert_allclose(moved["volume"][2][0], re_delta, rtol=1e-4, atol=1e-5 * np.abs(re_delta).max())
    np.testing.assert_allclose(moved["beta"][2][0], re_beta, rtol=1e-4, atol=1e-5 * np.abs(re_beta).max())
    # a new filter is not applied to it, with the reason; it stays a setting of the next scans,
    # so the module's daemon gets its own back (which re-tunes this scan once more, unchanged)
    refused = daemon.ask({"cmd": "set", "params": {"filter": "hann"}})
    assert refused["ok"] and "centre only" in refused["not_retuned"]["filter"]
    assert daemon.ask({"cmd": "set", "params": {"filter": "ram-lak"}})["ok"]
    assert daemon.ask({"cmd": "config"})["config"]["reconstruction"]["filter"] == "ram-lak"


def test_an_angle_missing_a_distance_is_left_out_and_reported(serve, live, four_scans):
    daemon, subscriber = live
    paths, scans = four_scans
    left_out = daemon.status()["ingest"]["angles_left_out"]
    stream_distances(daemon.ingest, scans, "md_gap", skip={(30, 2)})
    header, delta, beta = final_delta_and_beta(subscriber, "md_gap")
    assert header["n_projections_used"] == 59 and header["n_projections_expected"] == 60
    assert header["angles_left_out"] == 1 and header["distances_missing"] == {"2": 1}
    assert np.isfinite(delta).all() and np.abs(beta).max() > 0
    assert "1 angle(s) left out, a distance missing" in open(daemon.log).read()
    serve.wait_for(lambda: daemon.status()["ingest"]["angles_left_out"] == left_out + 1, 10,
                   "the status to count it")


def test_holostream_stream_plays_the_files_of_several_distances(live, four_scans, offline):
    daemon, subscriber = live
    paths, _ = four_scans
    proc = subprocess.run([sys.executable, "-m", "holostream.service.cli", "stream", *map(str, paths),
                           "--address", daemon.ingest, "--scan-id", "md_cli"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "at 4 distances" in proc.stdout
    header, delta, _ = final_delta_and_beta(subscriber, "md_cli")
    assert header["n_projections_used"] == 60
    np.testing.assert_allclose(delta, offline[0], rtol=1e-4, atol=1e-5 * np.abs(offline[0]).max())


def test_split_mode_refuses_several_distances_with_its_reason(ingest_in_process, four_scans):
    """In-process Ingest in split mode: the scan_start is refused, nothing is allocated."""
    import os

    from holostream.service.clients.distances import distances_info
    from holostream.shared.messages import encode_scan_start

    _, scans = four_scans
    ingest, channels = ingest_in_process(split=True)
    ingest.handle(encode_scan_start(distances_info(scans, "md_split")))
    assert ingest.scan is None and ingest.rejects.counts["not_supported"] == 1
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(ingest.prefix)]
    rejection = next(e for e in iter(lambda: channels.events.get(timeout=5), None) if e["type"] == "rejected")
    assert "pool mode only" in rejection["reason"]
    pool, _ = ingest_in_process(split=False)
    pool.handle(encode_scan_start(distances_info(scans, "md_pool")))
    assert pool.scan is not None and pool.scan.n_distances == 4


def test_an_offset_axis_scan_at_several_distances_is_refused_with_its_reason(ingest_in_process, four_scans):
    """Half acquisition is not weighted by the multi-distance worker: refused, not reconstructed wrong."""
    from dataclasses import replace

    from holostream.service.clients.distances import distances_info
    from holostream.shared.messages import encode_scan_start

    _, scans = four_scans
    ingest, channels = ingest_in_process()
    info = replace(distances_info(scans, "md_half"), cor_px=15.0,  # 48 columns: beyond a quarter
                   angles_deg=tuple(np.linspace(0.0, 360.0, 60, endpoint=False)))
    ingest.handle(encode_scan_start(info))
    assert ingest.scan is None and ingest.rejects.counts["not_supported"] == 1
    rejection = next(e for e in iter(lambda: channels.events.get(timeout=5), None) if e["type"] == "rejected")
    assert "360° offset-axis" in rejection["reason"]


def test_a_live_volume_made_anew_with_the_operators_centre_has_its_beta(live, four_scans):
    # Re-centred live volumes are made by the re-tune thread; β of the same groups and axis
    # follows each of them on the `beta` topic, with the same seq.
    import threading

    daemon, subscriber = live
    _, scans = four_scans
    sender = threading.Thread(target=stream_distances, args=(daemon.ingest, scans, "md_centre", 8.0),
                              kwargs={"reconstruction": {"publish_interval_s": 0.5}}, daemon=True)
    sender.start()
    deltas, betas, asked = {}, {}, False
    deadline = time.monotonic() + FINAL_TIMEOUT_S
    while time.monotonic() < deadline:
        message = subscriber.next(0.2)
        if message is None or message[0] not in ("volume", "beta") or message[1]["scan_id"] != "md_centre":
            continue
        topic, header, arrays = message
        if topic == "volume" and not asked:  # the first live volume: the operator moves the axis
            assert daemon.ask({"cmd": "set", "params": {"cor_px": 0.5}})["ok"]
            asked = True
        (deltas if topic == "volume" else betas)[header["seq"]] = (header, arrays[0])
        if topic == "beta" and header["final"]:
            break
    sender.join(60)
    moved = [seq for seq, (h, _) in deltas.items() if not h["final"] and h.get("cor_source") == "operator"]
    assert moved, "no live volume re-centred by the operator"
    for seq in moved:
        header, beta = betas[seq]
        assert header["cor_px"] == 0.5 and header["quantity"] == "beta" and np.abs(beta).max() > 0
