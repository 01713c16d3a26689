"""The operator's re-tuning of the current or the last scan, made off the main loop.

A part of :class:`~holostream.service.daemon.main.Daemon` (a mixin, like ``requests.py``):
``set {"cor_px": x}`` and ``set {"filter": w}`` change the current scan (from its next
volume on) or, with none open, the last completed one (its final volume again, from the
kept sinogram). The volume is computed by :class:`~holostream.service.daemon.retune.Retuner`
in a background thread, started at once (not at the next publication tick); the loop only
publishes it (:meth:`Retuning._collect_retuned`). Control replies therefore never wait for
a back-projection, and a burst of requests costs one volume (the newest wins).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from holostream.service.daemon.control import ControlError
from holostream.service.daemon.retune import Job, Result, Retuner
from holostream.service.daemon.volumes import LiveScan, retuned_fields
from holostream.service.files.volume import save_new_volume_h5
from holostream.shared.settings import FILTERS
from holostream.workers import fbp
from holostream.workers.backend import get_backend
from holostream.workers.refilter import WindowChange

log = logging.getLogger("holostream.service.daemon.main")

#: Key of the last completed scan's jobs (live scans use their ``scan_seq``).
KEPT = "kept"


def start_retuner() -> Retuner:
    """The background thread and its backend (every core: a re-tune is wanted now), warmed."""
    backend = get_backend("cpu", threads=len(os.sched_getaffinity(0)))

    def warm() -> None:  # loads the compiled kernel (or compiles it) before the first request
        # 32 angles onto 32 × 128²: just large enough for the compiled kernel (backprojection.py)
        fbp.backproject(np.zeros((32, 128, 128), np.float32), np.zeros((32, 32, 128), np.float32),
                        np.zeros(32), np.ones(32), 0.0, backend)
        WindowChange(8, backend, "ram-lak", "hann")(np.zeros((1, 8), np.float32))

    return Retuner(backend, warm)


class Retuning:
    """The re-tuning handlers of the :class:`Daemon` (a mixin of it)."""

    retuner: Retuner

    def _set_retune(self, cor_px: Any, window: str | None) -> dict[str, Any]:
        """Apply ``cor_px`` and ``filter`` of a ``set`` (None: not asked) to the current or last scan.

        The filter also applies from the next scan on (a setting, applied by the caller). A
        filter the scan's projections cannot be re-filtered to is said in the reply
        (``filter_not_retuned``), not refused. Returns the reply's fields; ControlError refuses.
        """
        if cor_px is None and window is None:
            return {}
        if window is not None and window not in FILTERS:
            raise ControlError(f"filter must be one of {list(FILTERS)}, got {window!r}")
        open_scans = [s for s in self.scans.values() if s.complete is None]
        if open_scans:
            return self._retune_live(open_scans[-1], cor_px, window)
        if self.kept is None:
            if cor_px is None:
                return {}  # a filter with no scan to re-tune: only from the next scan
            raise ControlError("cor_px applies to the scan being reconstructed, and there is none "
                               "(nor a completed one kept: [publish] keep_last_scan_mb)")
        reply: dict[str, Any] = {"scan_id": self.kept.scan_id}
        backend = self.retuner.backend
        try:
            self.kept.aim(cor_px, None, backend)
        except ValueError as err:
            raise ControlError(str(err)) from None
        if window is not None:
            try:
                self.kept.aim(None, window, backend)
            except ValueError as err:
                reply["filter_not_retuned"] = str(err)
                if cor_px is None:
                    return reply
        self.retuner.submit(Job(KEPT, self.kept.compute_job(backend), dict(self.kept.target)))
        if cor_px is not None:
            reply["cor_px"] = float(cor_px)
        return {**reply, "retune_applies": "republishes the completed scan's final volume, re-tuned"}

    def _retune_live(self, state: LiveScan, cor_px: Any, window: str | None) -> dict[str, Any]:
        """The current scan's centre and/or filter from its next volume on, that volume at once."""
        reply: dict[str, Any] = {"scan_id": state.scan_id}
        if cor_px is not None:
            try:
                state.centre.set_by_operator(cor_px)
            except ValueError as err:
                raise ControlError(str(err)) from None
            reply["cor_px"] = state.centre.cor_px
        if window is not None:
            try:  # refused here, with the reason, rather than in the thread
                WindowChange(state.buffers.sinogram.shape[-1], self.retuner.backend,
                             state.settings["filter"], window)
                state.window = window
            except ValueError as err:
                reply["filter_not_retuned"] = str(err)
        if "cor_px" not in reply and "filter_not_retuned" in reply:
            return reply
        log.info("scan %s re-tuned by the operator: cor_px %s, filter %s", state.scan_id,
                 reply.get("cor_px", "unchanged"), state.window or state.settings["filter"])
        if state.groups:
            self._submit_live(state)
        return {**reply, "retune_applies": "from the current scan's next volume (made now)"}

    def retune_status(self) -> dict[str, Any]:
        """``status["retune"]``: the re-tune thread, and the last scan kept (and its bytes)."""
        kept = self.kept
        return {**(self.retuner.status() if hasattr(self, "retuner") else {}),
                "kept_scan_id": kept.scan_id if kept is not None else None,
                "kept_bytes": int(kept.sinogram.nbytes) if kept is not None else 0,
                "keep_last_scan_mb": float(self.config.publish.keep_last_scan_mb)}

    def _submit_live(self, state: LiveScan) -> None:
        """A live volume of ``state`` with its centre and filter, made in the background."""
        groups = dict(state.groups)  # a snapshot: the loop adds groups meanwhile
        centre_px, refilter = state.centre.binned_px, state.refilter(self.retuner.backend)
        shape, sinogram, backend = state.buffers.volume.shape[1:], state.buffers.sinogram, self.retuner.backend
        from holostream.service.daemon.centre import recentred_volume

        state.published_groups = len(groups)
        self.retuner.submit(Job(state.seq, lambda: recentred_volume(
            sinogram, groups, centre_px, shape, backend, final=False, refilter=refilter),
            {"n_used": sum(n for _, _, n in groups.values()), "centre": state.centre.fields(),
             "window": state.window}))

    def _collect_retuned(self) -> None:
        """Publish the volumes the background thread finished (called by the loop)."""
        for result in self.retuner.finished():
            self.metrics.stage_seconds.labels("retune").observe(result.compute_s)
            if result.error is not None:
                self.last_error = f"re-tune of {result.job.key}: {result.error}"
                continue
            if result.job.key == KEPT:
                self._publish_kept(result)
            elif result.job.key in self.scans:
                self._publish_live(self.scans[result.job.key], result)

    def _publish_live(self, state: LiveScan, result: Result) -> None:
        info = result.job.info
        header = state.header(result.volume, final=False)
        # what this volume was made with, not what the scan has now
        for key in ("cor_confidence", "retuned"):
            header.pop(key, None)
        header.update(info["centre"], n_projections_used=info["n_used"],
                      **retuned_fields(state.settings["filter"], info["window"]))
        header["retune_s"] = round(time.monotonic() - result.job.submitted, 3)
        self.publisher.publish_volume(header, result.volume)
        self.publisher.publish_preview(header, result.volume)
        self.counters["volumes_published"] += 1

    def _publish_kept(self, result: Result) -> None:
        header = self.kept.published(result.job.info, result.volume)
        header["retune_s"] = round(time.monotonic() - result.job.submitted, 3)
        self.publisher.publish_volume(header, result.volume)
        self.publisher.publish_preview(header, result.volume)
        self.counters["volumes_published"] += 1
        self.last_final = (header, result.volume)
        self._write_retuned(header, result.volume)
        log.info("scan %s: final volume republished, re-tuned (cor_px %+.2f, filter %s) in %.2f s",
                 header["scan_id"], header["cor_px"], header["filter"], header["retune_s"])

    def _write_retuned(self, header: dict[str, Any], volume: np.ndarray) -> None:
        """A re-tuned final volume to ``output_dir`` too (when the daemon writes volumes)."""
        out = self.config.publish.output_dir
        if not out:
            return
        name = f"{header['scan_id']}_{header['scan_seq']}_retuned"
        try:
            Path(out).mkdir(parents=True, exist_ok=True)
            self.last_volume_file = str(save_new_volume_h5(out, name, header, volume,
                                                           self.config.publish.compression))
        except (OSError, ValueError) as exc:  # ValueError: lz4/zstd without hdf5plugin
            self.last_error = f"cannot write {name}.h5 to {out}: {exc}"
            log.error(self.last_error)
