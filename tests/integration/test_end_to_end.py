"""The whole service: detector PUSH → `holostream serve` (ingest + 2 workers) → SUB client.

The live result must be the offline one: the final volume equals ``reconstruct_scan`` of
the same frames, and it matches the phantom. Scans run back to back, and a scan that ends
early is finished as the one-shot reconstruction of the angles that arrived.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading

import h5py
import numpy as np
import pytest

from holostream.service.offline import reconstruct_scan
from holostream.service.clients.detector import scan_info_of, stream_scan
from holostream.shared.messages import encode_frame, encode_scan_end, encode_scan_start
from holostream.shared.settings import ReconstructionSettings
from holostream.workers.backend import get_backend

pytestmark = pytest.mark.integration

DELTA_BETA = 200.0  # of the phantom of the conftest's small_scan


@pytest.fixture(scope="module")
def live(tmp_path_factory, serve):
    """The session's shared daemon (conftest.shared_daemon, final volumes written to its
    output_dir; stopped after the last integration test, exit status 0 checked there) and one
    connected subscriber for the scans of this module."""
    daemon = serve.shared_daemon_of(tmp_path_factory)
    sub = serve.Subscriber(daemon.publish)
    # a subscriber that never reads: it must lose messages, never slow the daemon down
    stalled = serve.Subscriber(daemon.publish, topics=(b"",), rcvhwm=1)
    try:
        sub.wait_connected()
        yield daemon, sub
    finally:
        stalled.close()
        sub.close()


def offline(scan_data, **settings) -> np.ndarray:
    volume, _ = reconstruct_scan(scan_data, ReconstructionSettings(**settings), DELTA_BETA, 0.0,
                                 get_backend("cpu", threads=1))
    return volume


def in_background(target, *args, **kwargs) -> threading.Thread:
    """Run a sender in a thread; its exception, if any, is re-raised by ``join_checked``."""
    errors = []

    def run():
        try:
            target(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.errors = errors
    thread.start()
    return thread


def join_checked(thread: threading.Thread) -> None:
    thread.join(30)
    assert not thread.is_alive(), "sender still running"
    if thread.errors:
        raise thread.errors[0]


def cylinder_correlation(volume: np.ndarray, truth: np.ndarray) -> float:
    n = truth.shape[1]
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    mask = np.broadcast_to(np.hypot(yy, xx) < n / 2 - 2, truth.shape)
    return float(np.corrcoef(volume[mask], truth[mask])[0, 1])


def assert_same_volume(live_volume: np.ndarray, reference: np.ndarray) -> None:
    assert live_volume.shape == reference.shape
    scale = float(np.abs(reference).max())
    np.testing.assert_allclose(live_volume, reference, rtol=0, atol=2e-5 * scale)


def test_live_volumes_then_final_equal_to_offline(live, small_scan, small_scan_data):
    daemon, sub = live
    # 90 projections at 30 fps: three seconds of scan, live volumes every 0.5 s
    sender = in_background(stream_scan, daemon.ingest, small_scan_data, "live_a", fps=30.0)
    volumes = sub.volumes_until_final("live_a", timeout_s=60)
    join_checked(sender)
    intermediate = [h for h, _ in volumes if not h["final"]]
    assert len(intermediate) >= 2, [h["n_projections_used"] for h, _ in volumes]
    used = [h["n_projections_used"] for h, _ in volumes]
    assert used == sorted(used) and used[0] < 90
    assert [h["seq"] for h, _ in volumes] == list(range(len(volumes)))
    header, final = volumes[-1]
    assert header["n_projections_used"] == header["n_projections_expected"] == 90
    assert header["shape"] == [64, 64, 64] and header["quantity"] == "delta"
    assert header["voxel_size_m"] == pytest.approx(2e-6)
    assert header["phase"] == header["phase_chain"] == "paganin" and header["delta_beta"] == DELTA_BETA
    assert_same_volume(final, offline(small_scan_data))
    assert cylinder_correlation(final, small_scan.ground_truth) >= 0.97
    # [publish] output_dir: the final volume is also on disk, with its header as attributes
    with h5py.File(daemon.output_dir / f"live_a_{header['scan_seq']}.h5") as fh:
        np.testing.assert_array_equal(fh["volume"][()], final)
        assert fh["volume"].attrs["n_projections_used"] == 90
    # the live volumes converge on the final one
    errors = [float(np.abs(v - final).mean()) for h, v in volumes if not h["final"]]
    assert errors[-1] <= errors[0]


def test_second_scan_back_to_back_gets_its_own_volumes(live, small_scan_data):
    daemon, sub = live
    # per-scan override: this scan binned 2×2, so its volumes are unmistakably its own
    sender = in_background(stream_scan, daemon.ingest, small_scan_data, "live_b", fps=60.0,
                           reconstruction={"binning": 2})
    volumes = sub.volumes_until_final("live_b", timeout_s=60)
    join_checked(sender)
    header, final = volumes[-1]
    assert all(h["scan_id"] == "live_b" and h["shape"] == [32, 32, 32] for h, _ in volumes)
    assert header["binning"] == 2 and header["voxel_size_m"] == pytest.approx(4e-6)
    assert header["n_projections_used"] == 90
    assert_same_volume(final, offline(small_scan_data, binning=2))
    status = daemon.status()
    assert status["scans_completed"] >= 1 and status["state"] == "idle"


def send_first_projections(address: str, scan_data, scan_id: str, n_send: int,
                           reconstruction: dict | None = None) -> None:
    """A detector that announces the whole scan, then stops after ``n_send`` projections."""
    import zmq

    # the tests' shared context (live_service.client_context): close() returns at once and its I/O
    # thread delivers what is queued for up to the linger; no term() to wait in
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 10_000)
    push.connect(address)
    push.send_multipart(encode_scan_start(scan_info_of(scan_data, scan_id, reconstruction=reconstruction)))
    for kind, stack in (("dark", scan_data.darks), ("flat", scan_data.flats)):
        for i, frame in enumerate(stack):
            push.send_multipart(encode_frame(scan_id, kind, i, frame))
    for i in range(n_send):
        push.send_multipart(encode_frame(scan_id, "projection", i, scan_data.projections[i],
                                         angle_deg=float(scan_data.angles_deg[i])))
    push.send_multipart(encode_scan_end(scan_id))
    push.close()


def test_scan_ending_early_is_the_reconstruction_of_the_arrived_angles(live, small_scan_data):
    daemon, sub = live
    # groups of 3 angles: the 61st projection is a group of one at the end
    n_send = 61
    send_first_projections(daemon.ingest, small_scan_data, "early_c", n_send, {"angle_binning": 3})
    header, final = sub.volumes_until_final("early_c", timeout_s=60)[-1]
    assert header["n_projections_used"] == n_send < header["n_projections_expected"] == 90
    assert header["angle_binning"] == 3
    arrived = dataclasses.replace(small_scan_data, projections=small_scan_data.projections[:n_send],
                                  angles_deg=small_scan_data.angles_deg[:n_send])
    # the two groups beside the missing wedge each get half of it as weight, as in
    # the one-shot FBP of these angles; with the planned weights they would not
    assert_same_volume(final, offline(arrived, angle_binning=3))


def test_scan_that_workers_cannot_reconstruct_fails_with_the_reason(live, small_scan_data, serve):
    daemon, sub = live
    before = daemon.status()
    # a chain the workers cannot run for this scan: a start step that needs several
    # distances (ingest checks the chain's steps, not what the scan's distances allow)
    send_first_projections(daemon.ingest, small_scan_data, "bad_chain", 6, {"phase": "ctf_mixed, ap**2"})
    status = serve.wait_for(lambda: (s := daemon.status())["scans_failed"] > before["scans_failed"] and s,
                            30, "the scan to fail")
    assert status["groups_failed"] - before["groups_failed"] == 6
    assert "no projection was reconstructed" in status["last_error"]
    assert "needs images at several distances" in status["last_error"]
    assert all(w["alive"] and w["restarts"] == b["restarts"]  # they carried on
               for w, b in zip(status["workers"], before["workers"]))
    assert status["scans_completed"] == before["scans_completed"]


def test_control_requests_are_answered(live, small_scan_data, serve):
    daemon, sub = live
    bogus = daemon.ask({"cmd": "bogus"})
    assert not bogus["ok"] and "unknown cmd" in bogus["error"]
    assert not daemon.ask({"status": 1})["ok"]
    bad = daemon.ask({"cmd": "set", "params": {"binnig": 2}})
    assert not bad["ok"] and "binnig" in bad["error"]
    assert not daemon.ask({"cmd": "abort"})["ok"]  # nothing open
    config = daemon.ask({"cmd": "config"})
    assert config["ok"] and config["config"]["ingest"]["address"] == daemon.ingest
    good = daemon.ask({"cmd": "set", "params": {"filter": "hann"}})
    assert good["ok"] and good["settings"]["filter"] == "hann"
    assert daemon.status()["settings"]["filter"] == "hann"
    assert daemon.ask({"cmd": "config"})["config"]["reconstruction"]["filter"] == "hann"
    # "from the next scan": ingest takes the command on its next turn; two reports later it has
    reports = daemon.status()["ingest_reports"]
    serve.wait_for(lambda: daemon.status()["ingest_reports"] >= reports + 2, 10, "ingest's next reports")
    send_first_projections(daemon.ingest, small_scan_data, "after_set", 10)
    assert sub.volumes_until_final("after_set", timeout_s=30)[-1][0]["filter"] == "hann"
    assert daemon.ask({"cmd": "set", "params": {"filter": "ram-lak"}})["ok"]  # as the other tests expect


def test_subscribe_command_saves_republished_volume(live, small_scan_data, tmp_path, serve):
    daemon, sub = live
    send_first_projections(daemon.ingest, small_scan_data, "cli_d", 30)
    header, final = sub.volumes_until_final("cli_d", timeout_s=60)[-1]
    out = tmp_path / "out"
    client = subprocess.Popen(
        [sys.executable, "-m", "holostream.service.cli", "subscribe", "--publish", daemon.publish,
         "--final-only", "--count", "1", "--save-h5", str(out), "--save-png", str(out),
         "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # a new subscriber misses what was published before it joined: republish until it has it
        def received():
            assert daemon.ask({"cmd": "republish"})["ok"]
            return client.poll() is not None
        serve.wait_for(received, 30, "holostream subscribe to receive the republished volume", 0.3)
        stdout, stderr = client.communicate(timeout=10)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 0, stderr
    assert "cli_d" in stdout and "FINAL" in stdout and "30/90" in stdout
    h5_files = sorted(out.glob("cli_d_*.h5"))
    png_files = sorted(out.glob("cli_d_*.png"))
    assert len(h5_files) == 1 and len(png_files) == 3, sorted(out.iterdir())
    assert all(p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for p in png_files)
    with h5py.File(h5_files[0]) as fh:
        np.testing.assert_array_equal(fh["volume"][()], final)
        assert fh["volume"].attrs["final"]

    status = subprocess.run([sys.executable, "-m", "holostream.service.cli", "status",
                             "--control", daemon.control, "--json"], capture_output=True, text=True,
                            timeout=30)
    assert status.returncode == 0 and json.loads(status.stdout)["scans_completed"] >= 1


def test_status_command_without_daemon(serve):
    nobody = f"tcp://127.0.0.1:{serve.free_port()}"
    result = subprocess.run([sys.executable, "-m", "holostream.service.cli", "status", "--control", nobody,
                             "--timeout", "0.5"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "no answer from the holostream daemon" in result.stderr
