"""The daemon's re-tune thread (service/daemon/retune.py): newest wins, forget, errors."""

import threading

import numpy as np
import pytest

from holostream.service.daemon.retune import Job, Retuner
from holostream.workers.backend import get_backend

CPU = get_backend("cpu", threads=1)
DEADLINE_S = 30.0


def _finished(retuner, count):
    """The results once ``count`` have finished (polled on the thread's condition, bounded)."""
    results = []
    with retuner._cond:
        retuner._cond.wait_for(lambda: len(retuner._done) >= count, DEADLINE_S)
    results += retuner.finished()
    assert len(results) >= count, results
    return results


def test_newest_job_of_a_key_wins_and_others_keep_their_turn():
    release, started = threading.Event(), threading.Event()
    ran = []

    def blocking():
        started.set()
        assert release.wait(DEADLINE_S)
        ran.append("first")
        return np.zeros(1, np.float32)

    retuner = Retuner(CPU)
    try:
        retuner.submit(Job(1, blocking))
        assert started.wait(DEADLINE_S)  # the first job of key 1 runs: the next ones wait
        assert retuner.status()["running"] == "1" and retuner.busy(1) and not retuner.busy(2)
        for value in (1.0, 2.0, 3.0):
            retuner.submit(Job(1, lambda v=value: ran.append(v) or np.full(1, v, np.float32), {"v": value}))
        retuner.submit(Job(2, lambda: ran.append("other") or np.zeros(1, np.float32)))
        assert retuner.status()["waiting"] == ["1", "2"] and retuner.coalesced == 2
        release.set()
        results = _finished(retuner, 3)
        assert ran == ["first", 3.0, "other"]  # 1.0 and 2.0 were replaced before they started
        assert [r.job.info.get("v") for r in results] == [None, 3.0, None]
        assert all(r.error is None and r.compute_s >= 0 for r in results)
    finally:
        release.set()
        retuner.close()


def test_forget_drops_the_waiting_job_and_waits_for_the_running_one():
    release, started = threading.Event(), threading.Event()

    def blocking():
        started.set()
        assert release.wait(DEADLINE_S)
        return np.zeros(1, np.float32)

    retuner = Retuner(CPU)
    try:
        retuner.submit(Job("kept", blocking))
        assert started.wait(DEADLINE_S)
        retuner.submit(Job("kept", lambda: pytest.fail("a forgotten job ran")))
        with pytest.raises(TimeoutError, match="still runs"):
            retuner.forget("kept", timeout_s=0.05)  # bounded: never hangs the daemon's loop
        threading.Timer(0.05, release.set).start()
        retuner.forget("kept")
        assert not retuner.busy("kept") and retuner.finished() == []  # its result is dropped too
    finally:
        release.set()
        retuner.close()


def test_a_failing_job_is_reported_and_the_thread_lives_on():
    warmed = []
    retuner = Retuner(CPU, warm=lambda: warmed.append(True))
    try:
        retuner.submit(Job(7, lambda: 1 / 0))
        [failed] = _finished(retuner, 1)
        assert failed.volume is None and "ZeroDivisionError" in failed.error
        retuner.submit(Job(7, lambda: np.ones(2, np.float32)))
        [ok] = _finished(retuner, 1)
        assert ok.error is None and ok.volume.sum() == 2
        assert warmed == [True] and retuner.status()["warm_s"] is not None
    finally:
        retuner.close()
    with pytest.raises(RuntimeError, match="closed"):
        retuner.submit(Job(7, lambda: None))
