"""Split mode for real: CPU workers bin, one reconstructor process phases and back-projects.

``[workers] mode = "split"`` with ``device = "cpu"`` (how this runs without a GPU): the final
volume must be the offline reconstruction and the pool mode's, live volumes must arrive, a
killed reconstructor's groups must be redone by its replacement (every angle in the final
volume), and SIGTERM must leave nothing behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from test_metrics import scrape, value  # GET /metrics

from holostream.service.offline import reconstruct_scan
from holostream.service.clients.detector import stream_scan
from holostream.shared.settings import ReconstructionSettings
from holostream.workers.backend import get_backend

pytestmark = pytest.mark.integration

DELTA_BETA = 200.0  # of the phantom of the conftest's small_scan
SLOW = {"phase": "ap", "iterations": 6}  # settings that make a batch take a while
# a batch of 8 at 64² takes ~0.2 s with these (6 iterations: 0.04 s, faster than 90 frames/s
# arrive on a quiet machine): streamed at 180 frames/s, a backlog builds whatever the load
HEAVY = {"phase": "ap", "iterations": 40}


def start_daemon(serve, folder, mode: str, batch: int = 4, workers: int = 2):
    """The conftest's ``Daemon`` helper with ``[workers] mode``/``batch`` set."""
    return serve.Daemon(folder, workers=workers, workers_keys={"mode": mode, "batch": batch})


def wait_split_ready(serve, daemon) -> dict:
    """Workers and the reconstructor alive."""
    daemon.wait_ready()
    return serve.wait_for(lambda: (s := daemon.status())["reconstructor"]["alive"] and s, 30,
                          "the reconstructor to start")


def offline(scan_data, **settings) -> np.ndarray:
    volume, _ = reconstruct_scan(scan_data, ReconstructionSettings(**settings), DELTA_BETA, 0.0,
                                 get_backend("cpu", threads=1))
    return volume


def assert_same_volume(volume: np.ndarray, reference: np.ndarray) -> None:
    assert volume.shape == reference.shape
    scale = float(np.abs(reference).max())
    np.testing.assert_allclose(volume, reference, rtol=0, atol=2e-5 * scale)


def final_of(serve, daemon, scan_data, scan_id: str, fps: float, during=None, timeout_s: float = 60.0,
             **reconstruction) -> list:
    """Stream one scan to ``daemon`` (``reconstruction`` overrides); ``during()`` runs while it
    streams; every volume of it up to the final one."""
    sub = serve.Subscriber(daemon.publish)
    try:
        sub.wait_connected()
        kwargs = {"fps": fps, "timeout_s": 10.0, **({"reconstruction": reconstruction} if reconstruction else {})}
        sender = threading.Thread(target=stream_scan, args=(daemon.ingest, scan_data, scan_id),
                                  kwargs=kwargs, daemon=True)
        sender.start()
        if during is not None:
            during()
        volumes = sub.volumes_until_final(scan_id, timeout_s=timeout_s)
        sender.join(30)
        return volumes
    finally:
        sub.close()


def test_split_final_equals_offline_and_pool_mode(tmp_path, serve, small_scan_data):
    split_dir, pool_dir = tmp_path / "split", tmp_path / "pool"
    split_dir.mkdir(), pool_dir.mkdir()
    split = start_daemon(serve, split_dir, "split")
    try:
        status = wait_split_ready(serve, split)
        assert status["mode"] == "split" and len(status["workers"]) == 2
        volumes = final_of(serve, split, small_scan_data, "split_a", fps=30.0)
        status = split.status()
        code, _ = split.terminate()
        assert code == 0 and serve.shm(split.proc.pid) == []
    finally:
        split.close()
    header, final = volumes[-1]
    assert header["n_projections_used"] == 90 and header["shape"] == [64, 64, 64]
    intermediate = [h for h, _ in volumes if not h["final"]]
    assert len(intermediate) >= 2, [h["n_projections_used"] for h, _ in volumes]  # live volumes
    assert status["reconstructor"]["groups_done"] == 90
    assert sum(w["groups_done"] for w in status["workers"]) == 90  # they binned every group
    assert_same_volume(final, offline(small_scan_data))
    log = split.log.read_text()
    assert "split mode" in log and "reconstructor ready on cpu, batches of 4" in log

    pool = start_daemon(serve, pool_dir, "pool")
    try:
        assert pool.wait_ready()["mode"] == "pool"
        pool_header, pool_final = final_of(serve, pool, small_scan_data, "pool_a", fps=60.0)[-1]
        assert pool.status()["reconstructor"] is None
        assert pool.terminate()[0] == 0
    finally:
        pool.close()
    assert pool_header["n_projections_used"] == 90
    assert_same_volume(final, pool_final)


def logged_groups(log: str, pattern: str) -> set[int]:
    """The group numbers of every ``[g, ...]`` list that ``pattern`` (around ``LIST``) finds."""
    found = set()
    for match in re.finditer(pattern.replace("LIST", r"\[([\d, ]*)\]"), log):
        found |= {int(g) for g in match.group(1).split(",") if g.strip()}
    return found


def lost_projections(log: str) -> set[int]:
    """Groups (= projections, angle binning 1) not in the volume after a reconstructor died.

    Ingest counts as lost only what cannot be redone (``daemon/handoff.py``); the daemon
    recovers those the dead one had added to the volume before it could report them.
    """
    return (logged_groups(log, r"groups LIST died with the reconstructor")
            - logged_groups(log, r"groups LIST are in the volume but their report was lost"))


def held_when_killed(log: str) -> set[int]:
    """Groups a dead reconstructor (or dispatcher) held: ingest sent them again to its replacement."""
    return logged_groups(log, r"groups LIST the dead reconstructor held")


def test_killed_reconstructor_is_replaced_and_its_groups_are_redone(tmp_path, serve, small_scan_data):
    """SIGKILL mid-batch: the replacement redoes what the dead one held, from ``binned``; every
    angle is in the final volume, which is the offline one; status and /metrics count them."""
    metrics = f"127.0.0.1:{serve.free_port()}"
    daemon = serve.Daemon(tmp_path, workers=2, workers_keys={"mode": "split", "batch": 8}, metrics=metrics)
    try:
        victim = wait_split_ready(serve, daemon)["reconstructor"]["pid"]

        def kill_when_holding():
            # iterative phasing keeps the reconstructor busy; a backlog of binned groups means it
            # holds a batch (it takes one the moment it is free), so the kill costs it some
            def holding():
                status = daemon.status()
                return (status["reconstructor"]["groups_done"] >= 8
                        and (status.get("ingest") or {}).get("in_flight", 0) >= 12)
            serve.wait_for(holding, 30, "the reconstructor to be under way with a backlog")
            os.kill(victim, signal.SIGKILL)

        header, final = final_of(serve, daemon, small_scan_data, "kill_r", fps=180.0, during=kill_when_holding,
                                 **HEAVY)[-1]
        status = daemon.status()  # the final volume is out: every redone group is counted

        def redone_on_metrics():  # the endpoint serves the status snapshot of up to a second ago
            found = scrape(metrics)
            redone = found and value(found, "holostream_reconstructor_groups_redone_total")
            return redone if redone == status["reconstructor"]["redone"] else None
        serve.wait_for(redone_on_metrics, 10, "the redone groups on /metrics")
        code, _ = daemon.terminate(timeout_s=10)
        assert code == 0 and serve.shm(daemon.proc.pid) == []
    finally:
        daemon.close()
    reconstructor = status["reconstructor"]
    assert reconstructor["restarts"] == 1 and reconstructor["alive"] and reconstructor["pid"] != victim
    log = daemon.log.read_text()
    assert "reconstructor (pid" in log and "replacing it" in log
    held = held_when_killed(log)
    print(f"groups the dead reconstructor held: {sorted(held)}; redone: {reconstructor['redone']}")
    assert held and not lost_projections(log)  # it held some, and none is lost
    # what it held is redone, with the never-marked groups sent again; the copy of a group
    # still queued that comes second is dropped (no group is back-projected twice: the volume
    # below would say so)
    assert len(held) <= reconstructor["redone"]
    assert reconstructor["groups_done"] == 90
    assert header["n_projections_used"] == 90 and not header.get("incomplete"), header
    assert_same_volume(final, offline(small_scan_data, **HEAVY))


def test_sigterm_mid_scan_stops_every_process_and_frees_shared_memory(tmp_path, serve, small_scan_data):
    daemon = start_daemon(serve, tmp_path, "split")
    try:
        status = wait_split_ready(serve, daemon)
        children = ([w["pid"] for w in status["workers"]] + [status["ingest_pid"]]
                    + [status["reconstructor"]["pid"]])
        sender = threading.Thread(target=lambda: _quietly(daemon.ingest, small_scan_data), daemon=True)
        sender.start()
        serve.wait_for(lambda: (daemon.status()["n_projections_used"] or 0) >= 10, 30,
                       "the scan to be under way")
        assert serve.shm(daemon.proc.pid), "a scan in progress has shared memory"
        assert any(name.endswith("_binned") for name in serve.shm(daemon.proc.pid))
        code, seconds = daemon.terminate(timeout_s=10)
        assert code == 0, daemon.log.read_text()
        assert serve.shm(daemon.proc.pid) == []
        assert not any(os.path.exists(f"/proc/{pid}") and _state(pid) != "Z" for pid in children)
        assert "reconstructor stopped" in daemon.log.read_text()
        sender.join(10)
    finally:
        daemon.close()


def _quietly(address, scan_data) -> None:
    try:
        stream_scan(address, scan_data, "sigterm_s", fps=20.0, timeout_s=3.0)
    except TimeoutError:
        pass  # the daemon went away mid-scan: that is the point


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_bad_mode_and_batch_are_refused_naming_the_key(tmp_path):
    for line, key in (('mode = "gpu-only"', "workers.mode"), ("batch = 0", "workers.batch")):
        config = tmp_path / "bad.toml"
        config.write_text(f"[workers]\n{line}\n")
        result = subprocess.run([sys.executable, "-m", "holostream.service.cli", "serve", "--config",
                                 str(config)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and key in result.stderr, result.stderr


def test_ingest_sends_the_groups_of_a_dead_reconstructor_again_from_their_handoff_rows(ingest_in_process):
    """In-process Ingest in split mode: slots freed at ``binned``; taken or never marked = sent
    again on the reconstruct queue, not yet binned = sent again at its ``binned``, committed = done."""
    import queue

    from holostream.shared.messages import ScanInfo, encode_frame, encode_scan_end, encode_scan_start
    from holostream.shared.scanbuffers import HANDOFF_COMMITTED, HANDOFF_TAKEN

    reconstruct = queue.Queue()  # what the daemon's multiprocessing queue offers ingest: put
    ingest, channels = ingest_in_process(n_workers=3, split=True, reconstruct=reconstruct)
    info = ScanInfo(scan_id="s1", shape=(8, 12), dtype="uint16", n_darks=1, n_flats=1,
                    n_projections=5, energy_kev=17.5, distance_m=0.05, pixel_size_m=1e-6,
                    delta_beta=200.0, angle_start_deg=0.0, angle_step_deg=36.0)
    frame = np.full(info.shape, 1000, np.uint16)
    ingest.handle(encode_scan_start(info))
    ingest.handle(encode_frame("s1", "dark", 0, frame * 0))
    ingest.handle(encode_frame("s1", "flat", 0, frame))
    for i in range(4):
        ingest.handle(encode_frame("s1", "projection", i, frame))
    tasks = [channels.tasks.get(timeout=5) for _ in range(4)]
    buffers = ingest.scan.buffers
    assert buffers.volume.shape[0] == 1 and buffers.binned.shape == (5, 8, 12)
    assert not ingest.scan.free_slots  # four groups, four slots, all taken

    def binned(task, worker):  # the worker wrote binned[g] and handed the group on
        ingest.on_done({"type": "binned", "scan_seq": task["scan_seq"], "group": task["group"],
                        "slots": task["slots"], "worker": worker, "seconds": 0.01})

    def done(group):  # the reconstructor's report
        ingest.on_done({"type": "done", "scan_seq": tasks[0]["scan_seq"], "group": group, "slots": [],
                        "seconds": 0.02})

    for w, task in enumerate(tasks):
        binned(task, w % 3)
    assert len(ingest.scan.free_slots) == 4 and len(ingest.scan.in_flight) == 4  # slots free, groups not
    ingest.handle(encode_frame("s1", "projection", 4, frame))
    tasks.append(channels.tasks.get(timeout=5))  # in a worker when the reconstructor dies
    g_done, g_taken, g_committed, g_queued, g_raw = (t["group"] for t in tasks)
    done(g_done)
    buffers.handoff[g_taken, 0] = HANDOFF_TAKEN
    buffers.handoff[g_committed] = (HANDOFF_COMMITTED, 90.0, 0.785, 1, 0.0)
    ingest.handle(encode_scan_end("s1"))
    ingest.on_command({"type": "reconstructor_lost"})
    assert sorted(ingest.scan.in_flight) == sorted([g_taken, g_queued, g_raw])  # for the next reconstructor
    again = [reconstruct.get_nowait() for _ in range(2)]
    assert reconstruct.empty() and sorted(m["group"] for m in again) == sorted([g_taken, g_queued])
    binned(tasks[g_raw], 1)  # the dead one may have taken it from the queue before it died
    again.append(reconstruct.get_nowait())
    assert again[-1]["group"] == g_raw and again[-1]["worker"] == 1
    for message in again:  # what a worker put on the queue, marked as sent again
        task = tasks[message["group"]]
        assert message["redone"] and message["type"] == "group" and "slots" not in message
        assert message["buffers"] == task["buffers"] and message["angle_deg"] == task["angle_deg"]
        done(message["group"])
    events = []
    while not any(e["type"] == "scan_complete" for e in events):
        events.append(channels.events.get(timeout=5))
    complete = events[-1]
    assert complete["groups_arrived"] == [0, 1, 2, 3, 4] and complete["n_projections_used"] == 5
    stats = ingest.stats(time.monotonic())
    assert stats["lost_groups"] == 0 and stats["requeued_groups"] == 3


def test_ingest_waits_for_a_backlog_but_not_for_a_group_overtaken_in_the_reconstructor(ingest_in_process):
    """A group never marked taken is lost only once groups queued after it were reconstructed."""
    from holostream.service.daemon.scan import LOST_AFTER_S, OVERTAKEN_S
    from holostream.shared.messages import ScanInfo, encode_frame, encode_scan_end, encode_scan_start

    ingest, channels = ingest_in_process(n_workers=2, split=True)
    info = ScanInfo(scan_id="s2", shape=(8, 12), dtype="uint16", n_darks=0, n_flats=1,
                    n_projections=3, energy_kev=17.5, distance_m=0.05, pixel_size_m=1e-6,
                    delta_beta=200.0, angle_start_deg=0.0, angle_step_deg=60.0)
    frame = np.full(info.shape, 1000, np.uint16)
    ingest.handle(encode_scan_start(info))
    ingest.handle(encode_frame("s2", "flat", 0, frame))
    for i in range(3):
        ingest.handle(encode_frame("s2", "projection", i, frame))
    tasks = [channels.tasks.get(timeout=5) for _ in range(3)]
    for task in tasks:
        ingest.on_done({"type": "binned", "scan_seq": task["scan_seq"], "group": task["group"],
                        "slots": task["slots"], "seconds": 0.01})
    first, backlog, later = (t["group"] for t in tasks)
    ingest.handle(encode_scan_end("s2"))
    far = time.monotonic() + 10 * LOST_AFTER_S
    ingest.reclaim_lost(far)  # a queue that is merely long: nothing is lost by waiting
    assert sorted(ingest.scan.in_flight) == sorted([first, backlog, later])
    ingest.scan.in_flight[first].binned_at -= 2 * OVERTAKEN_S  # queued well before `later`
    ingest.on_done({"type": "done", "scan_seq": tasks[0]["scan_seq"], "group": later, "slots": [],
                    "seconds": 0.02})
    ingest.reclaim_lost(far)  # `first` overtaken: surely taken by a reconstructor
    ingest.reclaim_lost(far + LOST_AFTER_S + 1)
    assert list(ingest.scan.in_flight) == [backlog]  # queued with `later`: still waited for
    assert ingest.stats(time.monotonic())["lost_groups"] == 1