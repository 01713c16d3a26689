"""The daemon's Prometheus endpoint, scraped over HTTP during and after a live scan.

Its counters must say what ``status`` says (they come from the same status dict), rejects
must be counted by reason, and the stage times and the latency to the final volume must
have been observed for the scan that ran.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from holostream.service.clients.detector import stream_scan

pytestmark = pytest.mark.integration


def scrape(address: str) -> dict[tuple[str, tuple], float] | None:
    """``{(sample name, sorted labels): value}`` of ``GET /metrics``; None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


#: metric (counter sample) -> the status key it exports
SAME_AS_STATUS = {
    "holostream_frames_received_total": "frames_received",
    "holostream_frames_rejected_total": "frames_rejected",
    "holostream_frames_dropped_total": "frames_dropped",
    "holostream_volumes_published_total": "volumes_published",
    "holostream_scans_completed_total": "scans_completed",
    "holostream_worker_restarts_total": "worker_restarts",
}


def test_metrics_during_and_after_a_live_scan(tmp_path, serve, small_scan_data):
    address = f"127.0.0.1:{serve.free_port()}"
    daemon = serve.Daemon(tmp_path, metrics=address)
    try:
        daemon.wait_ready()
        first = serve.wait_for(lambda: scrape(address), 20, "the metrics endpoint to answer")
        assert value(first, "holostream_info", version="0.1.0", mode="pool") == 1.0

        subscriber = serve.Subscriber(daemon.publish)
        subscriber.wait_connected()
        errors = []

        def send():
            try:
                # with one malformed message, to be counted by its reason
                stream_scan(daemon.ingest, small_scan_data, "metrics_0001", fps=30,
                            extra={-1: [[b"{not json"]]})
            except Exception as exc:  # noqa: BLE001 - re-raised in the test thread
                errors.append(exc)
        sender = threading.Thread(target=send, daemon=True)
        sender.start()

        # during the scan: the endpoint shows it being reconstructed, and ingest's count of its
        # frames (ingest reports every 0.5 s: the scan can be open before its first report)
        def live():
            samples = scrape(address)
            if samples and value(samples, "holostream_reconstructing") == 1.0 \
                    and value(samples, "holostream_projections_expected") == 90 \
                    and value(samples, "holostream_frames_received_total") > 0:
                return samples
            return None
        during = serve.wait_for(live, 60, "a scrape during the scan with its frames counted")
        assert 0.0 <= value(during, "holostream_ring_fill_ratio") <= 1.0
        assert value(during, "holostream_workers_alive") == 2
        assert value(during, "holostream_queue_messages", queue="tasks") >= 0

        subscriber.volumes_until_final("metrics_0001", 120)
        subscriber.close()
        sender.join(30)
        assert not errors, errors

        # after it: every counter equals status (the snapshot follows within status_interval_s)
        frames = len(small_scan_data.darks) + len(small_scan_data.flats) + len(small_scan_data.angles_deg)
        sent = 1 + frames + 2  # the bad one, the frames, scan_start and scan_end
        def consistent():
            status = daemon.status()
            samples = scrape(address)
            pairs = {m: (value(samples, m), float(status[k])) for m, k in SAME_AS_STATUS.items()}
            reasons = status["ingest"]["rejected_by_reason"]
            pairs.update({f"rejected[{r}]": (value(samples, "holostream_frames_rejected_by_reason_total",
                                                   reason=r), float(n)) for r, n in reasons.items()})
            # ingest's counters reach status a report (0.25 s) after its last message
            if status["state"] == "idle" and status["frames_received"] == sent \
                    and all(a == b for a, b in pairs.values()):
                return samples, status
            return None
        samples, status = serve.wait_for(consistent, 20, "metrics equal to status")
        assert status["scans_completed"] == 1 and status["frames_rejected"] == 1
        assert value(samples, "holostream_frames_rejected_by_reason_total", reason="bad_json") == 1.0
        assert value(samples, "holostream_frames_received_total") == sent
        assert value(samples, "holostream_reconstructing") == 0.0

        # stage times: every angle group through every stage of the chain, one final volume
        groups = sum(w["groups_done"] for w in status["workers"])
        for stage in ("group", "flatfield_binning", "phase_filter", "backprojection"):
            assert value(samples, "holostream_stage_seconds_count", stage=stage) == groups, stage
            assert value(samples, "holostream_stage_seconds_sum", stage=stage) > 0.0, stage
        assert value(samples, "holostream_stage_seconds_count", stage="final_volume") == 1
        assert value(samples, "holostream_stage_seconds_count", stage="publish") == status["volumes_published"]
        assert value(samples, "holostream_final_volume_latency_seconds_count") == 1
        assert 0.0 < value(samples, "holostream_final_volume_latency_seconds_sum") < 120.0

        code, _ = daemon.terminate()
        assert code == 0
        assert scrape(address) is None  # the endpoint closed with the daemon
    finally:
        daemon.close()


def test_a_taken_metrics_port_is_reported_and_the_daemon_runs_on(tmp_path, serve):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = "127.0.0.1:%d" % taken.getsockname()[1]
        daemon = serve.Daemon(tmp_path, metrics=address)
        try:
            status = daemon.wait_ready()
            assert status["last_error"].startswith(f"metrics endpoint {address} not served")
        finally:
            daemon.close()
