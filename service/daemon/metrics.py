"""The daemon's Prometheus endpoint (``[metrics] address``, ``GET /metrics``).

What the facility's monitoring scrapes: counters and gauges taken from the same status dict
that the control command ``status`` answers and the ``status`` topic publishes (a snapshot
the main loop hands over every ``status_interval_s``, so a scrape never reads the daemon's
state while the loop changes it), and histograms of the time each stage takes, observed by
the main loop as results come in. prometheus-client serves them from its own thread.

Counters that a restarted ingest process starts again from zero (frames received, rejected,
dropped) are exported as counters all the same: Prometheus' ``rate()`` handles resets.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from holostream import __version__

log = logging.getLogger(__name__)

#: Stage times span 1 ms (a small group on a GPU) to minutes (a big final volume on a CPU).
_STAGE_BUCKETS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)

#: status key -> (metric name, help), exported as counters.
_COUNTERS = {
    "frames_received": ("holostream_frames_received", "messages received on the ingest socket"),
    "frames_rejected": ("holostream_frames_rejected", "messages rejected (all reasons)"),
    "frames_dropped": ("holostream_frames_dropped", "projections dropped (ring full)"),
    "messages_dropped": ("holostream_publish_dropped", "published messages dropped (send queue full)"),
    "volumes_published": ("holostream_volumes_published", "volumes published (live and final)"),
    "scans_completed": ("holostream_scans_completed", "scans finished with a final volume"),
    "scans_failed": ("holostream_scans_failed", "scans that ended without a final volume"),
    "groups_failed": ("holostream_groups_failed", "angle groups whose reconstruction failed"),
    "worker_restarts": ("holostream_worker_restarts", "worker processes replaced after dying"),
    "ingest_restarts": ("holostream_ingest_restarts", "ingest processes replaced after dying"),
}


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` as ``(host, port)``; ValueError with the reason."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT like 127.0.0.1:9560, got {address!r}")
    return host.strip("[]"), int(port)


class Metrics:
    """The daemon's metrics: a status snapshot plus stage-time histograms, in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {}
        self._queues: dict[str, int] = {}
        self.stage_seconds = Histogram(
            "holostream_stage_seconds",
            "seconds per stage: flatfield_binning, phase_filter, backprojection (per angle group, pool "
            "mode), group (a worker's whole group), reconstructor_batch (split mode), live_volume, "
            "final_volume (assembly in the daemon), retune (a re-tuned or re-centred volume, made by "
            "the daemon's re-tune thread), publish",
            ["stage"], buckets=_STAGE_BUCKETS, registry=self.registry)
        self.final_latency = Histogram(
            "holostream_final_volume_latency_seconds",
            "seconds from a scan's last frame reaching ingest to its final volume being published",
            buckets=_STAGE_BUCKETS, registry=self.registry)
        self.registry.register(self)
        self._server = None

    # ---- fed by the daemon's main loop ---------------------------------------------
    def update(self, status: dict[str, Any], queues: dict[str, int]) -> None:
        """Take the daemon's newest status dict and the depth of its queues (messages)."""
        with self._lock:
            self._status, self._queues = status, dict(queues)

    def observe_group(self, event: dict[str, Any]) -> None:
        """Stage times of one ``group_done`` event (``seconds``, ``stage_seconds``)."""
        if event.get("reconstructor"):
            self.stage_seconds.labels("reconstructor_batch").observe(float(event.get("seconds") or 0.0))
            return
        if event.get("seconds") is not None:
            self.stage_seconds.labels("group").observe(float(event["seconds"]))
        for stage, seconds in (event.get("stage_seconds") or {}).items():
            self.stage_seconds.labels(stage).observe(float(seconds))

    # ---- read by prometheus-client's thread ----------------------------------------
    def describe(self):
        return []  # the families depend on the snapshot; nothing to check at registration

    def collect(self):
        """The metric families of the newest snapshot (prometheus-client's collector API)."""
        with self._lock:
            status, queues = self._status, self._queues
        ingest = status.get("ingest") or {}
        for key, (name, text) in _COUNTERS.items():
            family = CounterMetricFamily(name, text)
            family.add_metric([], float(status.get(key) or 0))
            yield family
        by_reason = CounterMetricFamily("holostream_frames_rejected_by_reason",
                                        "messages rejected, by reason code (docs/protocol.md)", labels=["reason"])
        for reason, count in sorted((ingest.get("rejected_by_reason") or {}).items()):
            by_reason.add_metric([reason], float(count))
        yield by_reason
        gauges = {
            "holostream_frames_per_second": ("frames received per second (ingest)", status.get("frames_per_s")),
            "holostream_ring_fill_ratio": ("fraction of the frame ring in use", status.get("ring_fill")),
            "holostream_groups_in_flight": ("angle groups handed to workers, not yet done", ingest.get("in_flight")),
            "holostream_reconstructing": ("1 while a scan is being reconstructed",
                                          float(status.get("state") == "reconstructing")),
            "holostream_projections_used": ("projections in the open scan's volume so far",
                                            status.get("n_projections_used")),
            "holostream_projections_expected": ("projections the open scan announced",
                                                status.get("n_projections_expected")),
            "holostream_workers_alive": ("worker processes alive",
                                         sum(1 for w in status.get("workers") or [] if w.get("alive"))),
            "holostream_uptime_seconds": ("seconds since the daemon started", status.get("uptime_s")),
        }
        for name, (text, value) in gauges.items():
            family = GaugeMetricFamily(name, text)
            family.add_metric([], float(value or 0))
            yield family
        depth = GaugeMetricFamily("holostream_queue_messages", "messages waiting in a queue between processes",
                                  labels=["queue"])
        for queue_name, size in sorted(queues.items()):
            depth.add_metric([queue_name], float(size))
        yield depth
        if status.get("reconstructor"):  # split mode: what a replacement redid for its dead predecessor
            family = CounterMetricFamily("holostream_reconstructor_groups_redone",
                                         "angle groups a dead reconstructor (or dispatcher) held or had queued, "
                                         "reconstructed by its replacement")
            family.add_metric([], float(status["reconstructor"].get("redone") or 0))
            yield family
        device = (status.get("reconstructor") or {}).get("device_bytes")
        if device is not None:
            family = GaugeMetricFamily("holostream_device_memory_bytes", "device memory the reconstructor holds")
            family.add_metric([], float(device))
            yield family
        yield from _cluster_families((status.get("reconstructor") or {}).get("cluster"))
        info = GaugeMetricFamily("holostream_info", "the running holostream", labels=["version", "mode"])
        info.add_metric([__version__, str(status.get("mode", ""))], 1.0)
        yield info

    # ---- the endpoint ---------------------------------------------------------------
    def start(self, address: str) -> str | None:
        """Serve ``/metrics`` on ``address`` (``HOST:PORT``; ``""``: not at all).

        Returns None, or why it cannot listen (logged as an error): the daemon goes on
        without its metrics rather than not reconstructing.
        """
        if not address:
            return None
        try:
            host, port = parse_address(address)
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except (OSError, ValueError) as exc:
            why = f"metrics endpoint {address} not served: {getattr(exc, 'strerror', None) or exc}"
            log.error(why)
            return why
        log.info("metrics on http://%s:%d/metrics", host, port)
        return None

    def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _cluster_families(cluster: dict | None):
    """Cluster mode (``[cluster] actors``): actors ready, actors lost, groups redone, bytes moved."""
    if not cluster:
        return
    family = GaugeMetricFamily("holostream_actors_ready", "reconstructor actors ready on the Dask cluster")
    family.add_metric([], float(sum(1 for a in cluster.get("actors", []) if a.get("ready"))))
    yield family
    for name, key, text in (("holostream_actors_lost", "lost", "actors whose Dask worker was lost"),
                            ("holostream_groups_redone", "redone", "angle groups sent again after an actor was lost")):
        family = CounterMetricFamily(name, text)
        family.add_metric([], float(cluster.get(key) or 0))
        yield family
    moved = CounterMetricFamily("holostream_cluster_bytes", "bytes the dispatcher moved to and from actors",
                                labels=["what"])
    for what, count in sorted((cluster.get("bytes") or {}).items()):
        moved.add_metric([what], float(count))
    yield moved
