"""A subscriber that does not read loses messages, they are counted in status
``messages_dropped``, and the other subscribers still get everything (issue 9, finding 10)."""

from __future__ import annotations

import pytest
import zmq

from holostream.service.clients.detector import stream_scan

pytestmark = pytest.mark.integration


def test_slow_subscriber_drops_are_counted_and_others_get_the_final_volume(tmp_path, serve, small_scan_data):
    daemon = serve.Daemon(tmp_path, publish_keys={"sndhwm": 2})
    context = zmq.Context()
    stuck = context.socket(zmq.SUB)  # subscribes to everything and never reads
    stuck.setsockopt(zmq.RCVHWM, 1)
    stuck.setsockopt(zmq.RCVBUF, 4096)
    stuck.setsockopt(zmq.LINGER, 0)
    stuck.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        daemon.wait_ready(60)
        assert daemon.status()["messages_dropped"] == 0
        stuck.connect(daemon.publish)
        sub = serve.Subscriber(daemon.publish)
        try:
            sub.wait_connected()
            stream_scan(daemon.ingest, small_scan_data, "drops", timeout_s=60.0)
            volumes = sub.volumes_until_final("drops", timeout_s=120)
        finally:
            sub.close()
        header, _ = volumes[-1]
        assert header["final"] and header["n_projections_used"] == 90

        def dropped_after_republishing():
            # each republish sends the 1 MB volume again: the stuck subscriber's pipe and the
            # kernel's socket buffers fill within a few, however fast the scan itself went
            daemon.ask({"cmd": "republish"})
            return daemon.status()["messages_dropped"]

        dropped = serve.wait_for(dropped_after_republishing, 60, "drops to be counted", interval_s=0.02)
        assert dropped > 0
    finally:
        stuck.close()
        context.destroy(linger=0)
        daemon.close()
