"""The daemon's answers to control requests (status, config, set, abort, republish) and its status.

A part of :class:`~holostream.service.daemon.main.Daemon` kept apart so that the main loop's
module stays short: every method here reads or changes the daemon's own state, on the main
loop's thread, one request at a time (``control.py`` parses the requests and sends the replies).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from holostream.service.daemon.control import ControlError
from holostream.shared.settings import RING_FILTERS

log = logging.getLogger("holostream.service.daemon.main")


class ControlRequests:
    """The control handlers and the status dict of the :class:`Daemon` (a mixin of it)."""

    def _handlers(self) -> dict[str, Any]:
        return {"status": lambda req: {"status": self.status()},
                "config": lambda req: {"config": {**self.config.to_dict(),
                                                  "reconstruction": self.settings.to_dict()},
                                       "ring_filters": list(RING_FILTERS)},
                "set": self._set, "abort": self._abort, "republish": self._republish}

    def _set(self, request: dict[str, Any]) -> dict[str, Any]:
        params = dict(request["params"])
        cor_px = params.pop("cor_px", None)  # a scan's, not a setting
        delta_beta = params.pop("delta_beta", None)  # a scan's (scan_start), not a setting
        settings = self.settings.merged(params) if params else self.settings  # SettingsError: refused
        # cor_px, filter, delta_beta, phase: the current scan from its next volume on, else the last one
        reply = self._set_retune(cor_px, {**params, "delta_beta": delta_beta})  # ControlError: refused
        if params:
            self.settings = settings
            self.channels.commands.put({"type": "settings", "settings": self.settings.to_dict()})
            log.info("settings changed from the next scan on: %s", params)
            reply.update(applies="from the next scan")
        return {"settings": self.settings.to_dict(), **reply}

    def _abort(self, request: dict[str, Any]) -> dict[str, Any]:
        open_ids = [s.scan["scan_id"] for s in self.scans.values() if s.complete is None]
        if not open_ids:
            raise ControlError("no scan is being reconstructed")
        self.channels.commands.put({"type": "abort"})
        return {"aborted": open_ids[-1]}

    def _republish(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.last_final is None:
            raise ControlError("no final volume has been published yet")
        header, volume, beta = self.last_final
        header = dict(header, timestamp=time.time(), republished=True)
        self.publisher.publish_volume(header, volume)
        self.publisher.publish_preview(header, volume)
        if beta is not None:  # several distances: β right after δ, as at the scan's end
            self.publisher.publish_beta({**header, "quantity": "beta"}, beta)
        return {"scan_id": header["scan_id"], "seq": header["seq"], "beta": beta is not None}

    def status(self) -> dict[str, Any]:
        """The status dict of ``{"cmd": "status"}`` and of the published ``status`` topic."""
        open_scans = [s for s in self.scans.values() if s.complete is None]
        current = open_scans[-1] if open_scans else None
        return {
            "state": "stopping" if self.stop_requested else ("reconstructing" if current else "idle"),
            "scan_id": current.scan["scan_id"] if current else None,
            "scan_seq": current.seq if current else None,
            "n_projections_used": current.n_used if current else None,
            "n_projections_expected": current.scan["n_projections"] if current else None,
            # the current scan's axis: cor_px, cor_source, cor_confidence (when estimated)
            "centre": current.centre.fields() if current else None,
            # the ring filter the current scan's last volume had ("none" before it applies)
            "ring_filter": current.rings.applied if current else None,
            "frames_received": self.stats.get("received", 0),
            "frames_rejected": self.stats.get("rejected", self.counters["rejected"]),
            "frames_dropped": self.stats.get("dropped", 0),
            "frames_per_s": self.stats.get("frames_per_s", 0.0),
            "ring_fill": self.stats.get("ring_fill", 0.0),
            "memory_budget_bytes": self.stats.get("memory_budget_bytes", 0),
            "scan_memory_bytes": self.stats.get("scan_memory_bytes", 0),
            "ingest": self.stats, **self.counters,
            "messages_dropped": self.publisher.dropped,
            "workers": self.pool.status(), "worker_restarts": sum(self.pool.restarts.values()),
            "mode": self.mode,
            "reconstructor": self.reconstructor.status() if self.reconstructor is not None else None,
            "ingest_restarts": self.ingest.restarts, "ingest_pid": self.ingest.pid,
            "settings": self.settings.to_dict(), "last_error": self.last_error,
            "last_volume_file": self.last_volume_file,
            "retune": self.retune_status(),
            "curve": ("on" if self.curve is not None else
                      "off (plaintext on a network address)" if self.config.plaintext_remote() else "off (loopback)"),
            "pid": os.getpid(), "uptime_s": round(time.time() - self.started, 3),
        }


