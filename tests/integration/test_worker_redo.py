"""A worker killed while it holds a group: the group is sent again at once, not given up after
60 s, and the final volume has every projection (issue 9, finding 6)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from holostream.service.clients.detector import stream_scan

pytestmark = pytest.mark.integration


def test_group_of_a_killed_worker_is_redone_within_seconds(tmp_path, serve, small_scan_data):
    # slow groups (400 AP iterations on 10 projections each) so the worker surely holds one
    daemon = serve.Daemon(tmp_path, workers=1, phase="ap", iterations=400, angle_binning=10)
    try:
        status = daemon.wait_ready(60)
        victim = status["workers"][0]["pid"]
        sub = serve.Subscriber(daemon.publish)
        try:
            sub.wait_connected()
            sender = threading.Thread(target=stream_scan, args=(daemon.ingest, small_scan_data, "redo"),
                                      kwargs={"timeout_s": 120.0}, daemon=True)
            sender.start()
            serve.wait_for(lambda: daemon.status()["ingest"].get("in_workers", 0) >= 1, 60,
                           "the worker to take a group")
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            redone = serve.wait_for(lambda: daemon.status()["ingest"].get("redone_groups", 0), 30,
                                    "the group to be sent again")
            redone_s = time.monotonic() - killed_at
            header, _ = sub.volumes_until_final("redo", timeout_s=180)[-1]
            sender.join(60)
        finally:
            sub.close()
        assert redone >= 1 and redone_s < 20  # not LOST_AFTER_S = 60 s
        assert header["n_projections_used"] == 90  # nothing given up
        status = daemon.status()
        assert status["ingest"]["lost_groups"] == 0 and status["worker_restarts"] == 1
        print(f"group sent again {redone_s:.2f} s after SIGKILL of the worker")
    finally:
        daemon.close()
