"""Re-tuning a real daemon: the FBP filter of the current and of the last scan, a control
``status`` answered while a re-tune runs, the newest request winning, re-tuned final volumes
written to ``output_dir``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from holostream.service.clients.detector import simulated_scan_data, stream_scan
from holostream.service.files.volume import read_default_plot

pytestmark = pytest.mark.integration


def _stream(address, data, scan_id, fps, **kwargs):
    errors = []

    def run():
        try:
            stream_scan(address, data, scan_id, fps=fps, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


@pytest.fixture
def daemon(shared_daemon):
    """The session's shared daemon (conftest.shared_daemon) for the test that needs a default one."""
    return shared_daemon


def _inside(volume):
    """The field of view: voxels within the detector's half-width of the axis."""
    n = volume.shape[-1]
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    return np.hypot(yy, xx) < n / 2 - 2


def test_filter_retuned_on_the_current_and_on_the_last_scan(daemon, subscriber, small_scan_data, serve):
    thread, errors = _stream(daemon.ingest, small_scan_data, "filt_a", 40.0)
    serve.wait_for(lambda: (daemon.status().get("n_projections_used") or 0) > 0, 30,
                   "the scan to start reconstructing")
    reply = daemon.ask({"cmd": "set", "params": {"filter": "hann"}})
    assert reply["ok"] and reply["scan_id"] == "filt_a" and "current" in reply["retune_applies"], reply
    assert reply["settings"]["filter"] == "hann"  # and from the next scan on
    volumes = subscriber.volumes_until_final("filt_a", timeout_s=60)
    thread.join(30)
    assert not errors
    hann = {"filter": {"from": "ram-lak", "to": "hann"}}
    retuned = [h for h, _ in volumes if h.get("retuned")]
    assert retuned and all(h["filter"] == "hann" and h["retuned"] == hann for h in retuned)
    final_header, final_hann = volumes[-1]
    assert final_header["final"] and final_header["retuned"] == hann

    # the completed scan: its final volume again, filtered with shepp-logan from the kept sinogram
    again = daemon.ask({"cmd": "set", "params": {"filter": "shepp-logan"}})
    assert again["ok"] and again["scan_id"] == "filt_a" and "completed" in again["retune_applies"], again
    [(header, shepp)] = subscriber.volumes_until_final("filt_a", timeout_s=60)
    assert header["seq"] == final_header["seq"] + 1 and header["filter"] == "shepp-logan"
    assert header["retuned"] == {"filter": {"from": "ram-lak", "to": "shepp-logan"}}
    assert daemon.ask({"cmd": "republish"})["seq"] == header["seq"]

    # the same frames again: the workers filter with shepp-logan (set above, from the next scan)
    thread, errors = _stream(daemon.ingest, small_scan_data, "filt_b", 200.0)
    b_header, direct = subscriber.volumes_until_final("filt_b", timeout_s=60)[-1]
    thread.join(30)
    assert not errors
    assert b_header["filter"] == "shepp-logan" and "retuned" not in b_header
    inside = _inside(direct)
    error = np.abs(shepp - direct)[:, inside].max()
    print(f"re-filtered vs filtered by the workers: max |diff| {error:.3g} of max {np.abs(direct).max():.3g}")
    assert error < 2e-4 * np.abs(direct).max()  # the truncation of workers/refilter.py
    assert np.abs(final_hann - direct)[:, inside].max() > 20 * error  # the filter did change

    # a scan filtered with hann lacks what ram-lak needs: not re-tuned (said), set for the next one
    assert daemon.ask({"cmd": "set", "params": {"filter": "hann"}})["ok"]
    subscriber.volumes_until_final("filt_b", timeout_s=60)  # filt_b re-filtered: shepp-logan → hann
    thread, errors = _stream(daemon.ingest, small_scan_data, "filt_c", 200.0)
    assert subscriber.volumes_until_final("filt_c", timeout_s=60)[-1][0]["filter"] == "hann"
    thread.join(30)
    assert not errors
    # ram-lak needs what hann removed: pool mode kept the transmissions, so phase retrieval again
    # brings it back (without them it is not re-tuned: test_delta_beta_refused_in_pool_mode_...)
    back = daemon.ask({"cmd": "set", "params": {"filter": "ram-lak"}})
    assert back["ok"] and back["retuned"] == ["filter"] and "completed" in back["retune_applies"], back
    assert back["settings"]["filter"] == "ram-lak"
    [(header, _)] = subscriber.volumes_until_final("filt_c", timeout_s=60)
    assert header["filter"] == "ram-lak" and header["retuned"] == {"filter": {"from": "hann", "to": "ram-lak"}}
    bad = daemon.ask({"cmd": "set", "params": {"filter": "gauss"}})
    assert not bad["ok"] and "filter" in bad["error"], bad
    # pool mode keeps the transmissions too: a δ/β re-phases the completed scan
    again = daemon.ask({"cmd": "set", "params": {"delta_beta": 400.0}})
    assert again["ok"] and again["retuned"] == ["delta_beta"] and "completed" in again["retune_applies"], again
    [(header, _)] = subscriber.volumes_until_final("filt_c", timeout_s=60)
    assert header["delta_beta"] == 400.0 and header["retuned"]["delta_beta"]["to"] == 400.0


def test_delta_beta_refused_in_pool_mode_without_kept_transmissions(tmp_path, serve, small_scan_data):
    daemon = serve.Daemon(tmp_path, ingest_keys={"keep_transmissions": False}, filter="hann")
    subscriber = None
    try:
        daemon.wait_ready()
        subscriber = serve.Subscriber(daemon.publish)
        subscriber.wait_connected()
        thread, errors = _stream(daemon.ingest, small_scan_data, "nokeep", 200.0)
        subscriber.volumes_until_final("nokeep", timeout_s=60)
        thread.join(30)
        assert not errors
        no = daemon.ask({"cmd": "set", "params": {"delta_beta": 400.0}})
        assert not no["ok"] and "keep_transmissions = false" in no["error"], no
        assert not daemon.status()["retune"]["kept_transmissions"]
        # a scan filtered with hann lacks what ram-lak needs, and has no transmissions to retrieve
        # it from: not re-tuned (said), set for the next one
        no = daemon.ask({"cmd": "set", "params": {"filter": "ram-lak"}})
        assert no["ok"] and "cannot be recovered" in no["not_retuned"]["filter"], no
        assert no["settings"]["filter"] == "ram-lak"
    finally:
        if subscriber is not None:
            subscriber.close()
        daemon.close()


@pytest.mark.parametrize("mode", ["split", "pool"])
def test_delta_beta_retuned_on_the_current_and_on_the_last_scan(tmp_path, serve, small_scan_data, mode,
                                                                tmp_path_factory):
    from holostream.service.offline import reconstruct_scan
    from holostream.shared.settings import ReconstructionSettings
    from holostream.workers.backend import get_backend

    def offline(delta_beta, **settings):
        volume, _ = reconstruct_scan(small_scan_data, ReconstructionSettings(**settings), delta_beta, 0.0,
                                     get_backend("cpu", threads=1))
        return volume

    # pool mode: each worker keeps the transmissions it made beside its filtered projections; the
    # session's shared daemon is one (2 CPU workers, mode auto: pool), its filter given back after
    shared = mode == "pool"
    daemon = (serve.shared_daemon_of(tmp_path_factory) if shared else
              serve.Daemon(tmp_path, workers_keys={"mode": mode, "batch": 4}))
    subscriber = None
    try:
        if shared:
            assert daemon.status()["mode"] == "pool"
        else:
            daemon.wait_ready()
            serve.wait_for(lambda: daemon.status()["reconstructor"]["alive"], 30, "the reconstructor to start")
        subscriber = serve.Subscriber(daemon.publish)
        subscriber.wait_connected()
        thread, errors = _stream(daemon.ingest, small_scan_data, "db_a", 30.0)
        serve.wait_for(lambda: (daemon.status().get("n_projections_used") or 0) > 0, 30,
                       "the scan to start reconstructing")
        reply = daemon.ask({"cmd": "set", "params": {"delta_beta": 400.0}})
        assert reply["ok"] and reply["retuned"] == ["delta_beta"] and "current" in reply["retune_applies"], reply
        header, live_final = subscriber.volumes_until_final("db_a", timeout_s=60)[-1]
        thread.join(30)
        assert not errors
        assert header["delta_beta"] == 400.0 and header["retuned"] == {"delta_beta": {"from": serve.DELTA_BETA,
                                                                                      "to": 400.0}}
        scale = float(np.abs(live_final).max())
        want_400 = offline(400.0)
        np.testing.assert_allclose(live_final, want_400, rtol=0, atol=2e-5 * scale)
        # the final volume's re-phased projections are what is kept of the scan
        assert daemon.status()["retune"]["kept_projections_with"] == {
            "filter": "ram-lak", "delta_beta": 400.0, "phase": header["phase"]}

        # after its end: from the kept transmissions, δ/β 100 (and the scan's own chain text)
        reply = daemon.ask({"cmd": "set", "params": {"delta_beta": 100.0}})
        assert reply["ok"] and "completed" in reply["retune_applies"], reply
        [(header, kept_100)] = subscriber.volumes_until_final("db_a", timeout_s=60)
        assert header["delta_beta"] == 100.0 and header["retuned"]["delta_beta"]["to"] == 100.0
        want_100 = offline(100.0)
        np.testing.assert_allclose(kept_100, want_100, rtol=0, atol=2e-5 * scale)
        assert np.abs(want_100 - want_400).max() > 50 * 2e-5 * scale  # δ/β did change the volume
        # then the filter: from the re-phased projections, so δ/β stays 100
        reply = daemon.ask({"cmd": "set", "params": {"filter": "hann"}})
        assert reply["ok"] and reply["retuned"] == ["filter"], reply
        [(header, kept_hann)] = subscriber.volumes_until_final("db_a", timeout_s=60)
        assert header["retuned"] == {"filter": {"from": "ram-lak", "to": "hann"},
                                     "delta_beta": {"from": serve.DELTA_BETA, "to": 100.0}}
        inside = _inside(kept_hann)  # re-filtered: the field of view within 2e-4 (workers/refilter.py)
        assert np.abs(kept_hann - offline(100.0, filter="hann"))[:, inside].max() < 2e-4 * scale
        status = daemon.status()["retune"]
        assert status["kept_transmissions"] and status["kept_bytes"] >= 2 * 90 * 64 * 64 * 4
    finally:
        if subscriber is not None:
            subscriber.close()
        if not shared:
            daemon.close()


def test_status_answered_while_a_retune_runs_and_the_newest_wins(serve, shared_daemon):
    daemon = shared_daemon  # conftest: the session's default daemon, final volumes written to output_dir
    out = daemon.output_dir
    coalesced = daemon.status()["retune"]["coalesced"]
    subscriber = None
    try:
        subscriber = serve.Subscriber(daemon.publish)
        subscriber.wait_connected()
        # demo size: a re-tune back-projects 180 projections onto 128³ (a few tenths of a second)
        thread, errors = _stream(daemon.ingest, simulated_scan_data(256, 180), "busy", 400.0,
                                 reconstruction={"binning": 2, "phase": "paganin"})
        final_header, _ = subscriber.volumes_until_final("busy", timeout_s=120)[-1]
        thread.join(30)
        assert not errors

        assert daemon.ask({"cmd": "set", "params": {"cor_px": 0.5}})["ok"]

        def running_or_published():
            if daemon.status()["retune"]["running"] == "kept":
                return "running"
            while (message := subscriber.next(0)) is not None:
                if message[0] == "volume":
                    return "published"
            return None

        seen = serve.wait_for(running_or_published, 30, "a status during the re-tune")
        assert seen == "running", "the re-tuned volume arrived before any status showed its job running"
        # three at once, ms apart: whichever job runs meanwhile (each takes >= 0.1 s), at
        # least one of them waits and is replaced by a newer one
        for cor_px in (1.0, 2.0, 3.0):
            assert daemon.ask({"cmd": "set", "params": {"cor_px": cor_px}})["ok"]
        cli = subprocess.run([sys.executable, "-m", "holostream.service.cli", "set", "cor_px=4.0",
                              "--config", str(daemon.config)], capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0 and "re-tuned scan busy: cor_px=4.0" in cli.stdout, cli
        headers = []
        while not headers or headers[-1]["cor_px"] != 4.0:
            headers.append(subscriber.volumes_until_final("busy", timeout_s=60)[-1][0])
        assert daemon.status()["retune"]["coalesced"] >= coalesced + 1 and len(headers) <= 4, headers
        assert [h["seq"] for h in headers] == list(range(final_header["seq"] + 1, final_header["seq"] + 1 + len(headers)))
        assert headers[-1]["recentred"]["from_cor_source"] == "operator"

        # every re-tuned final volume is written too, with what it was made with
        serve.wait_for(lambda: len(list(out.glob("busy_*_retuned*.h5"))) == len(headers), 10,
                       "the re-tuned volumes in output_dir")
        last = max(out.glob("busy_*_retuned*.h5"), key=lambda p: p.stat().st_mtime_ns)
        _, attrs = read_default_plot(last)
        assert attrs["cor_px"] == 4.0 and attrs["cor_source"] == "operator"
        assert json.loads(attrs["recentred"])["from_cor_source"] == "operator"
        status = daemon.status()["retune"]
        # pool mode keeps the sinogram, the transmissions and dark/flat (256² frames)
        assert status["kept_scan_id"] == "busy" and status["kept_transmissions"]
        assert status["kept_bytes"] == 2 * 180 * 128 * 128 * 4 + 2 * 256 * 256 * 4
    finally:
        if subscriber is not None:
            subscriber.close()
