"""The shared-memory budget: stated in status, enforced at scan_start, and a refused start
leaves the open scan alone (issue 9, findings 5 and 8)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from holostream.service.clients.detector import scan_info_of, stream_scan
from holostream.shared.messages import encode_scan_start

pytestmark = pytest.mark.integration

BUDGET_GB = 0.05  # the small scan needs ~4 MB; a 2048x2048 ring of 32 slots needs 268 MB


def test_scan_start_over_budget_is_refused_and_the_open_scan_finishes(tmp_path, serve, small_scan_data):
    daemon = serve.Daemon(tmp_path, ingest_keys={"memory_budget_gb": BUDGET_GB})
    try:
        status = daemon.wait_ready(60)
        serve.wait_for(lambda: daemon.status()["memory_budget_bytes"] == int(BUDGET_GB * 1e9), 30,
                       "the budget in status")
        big = dataclasses.replace(scan_info_of(small_scan_data, "huge", 200.0), shape=(2048, 2048),
                                  n_projections=64, angles_deg=None, angle_start_deg=0.0, angle_step_deg=3.0)
        sub = serve.Subscriber(daemon.publish)
        try:
            sub.wait_connected()
            # the oversized scan_start arrives in the middle of the open scan
            stream_scan(daemon.ingest, small_scan_data, "open_one", timeout_s=60.0,
                        extra={45: [encode_scan_start(big)]})
            header, _ = sub.volumes_until_final("open_one", timeout_s=120)[-1]
        finally:
            sub.close()
        assert header["n_projections_used"] == 90  # not ended early by the refused start
        status = daemon.status()
        assert status["ingest"]["rejected_by_reason"].get("no_memory") == 1, status["ingest"]
        assert "over the budget of 0.05 GB" in status["last_error"] and "ring 0.268 GB" in status["last_error"]
        assert status["scans_completed"] == 1 and status["scans_failed"] == 0
        assert len(json.dumps(status)) < 20_000
    finally:
        daemon.close()
