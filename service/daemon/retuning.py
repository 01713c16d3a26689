"""The operator's re-tuning of the current or the last scan, made off the main loop.

A part of :class:`~holostream.service.daemon.main.Daemon` (a mixin, like ``requests.py``):
``set`` with ``cor_px``, ``filter``, ``delta_beta`` or ``phase`` changes the current scan
(from its next volume on) or, with none open, the last completed one (its final volume
again, from what is kept of it; ``aims.py`` says how each is made). The volume is computed by :class:`~holostream.service.daemon.retune.Retuner`
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

from holostream.service.daemon import aims
from holostream.service.daemon.control import ControlError
from holostream.service.daemon.retune import Job, Result, Retuner
from holostream.service.daemon.volumes import LiveScan
from holostream.service.files.volume import save_new_volume_h5
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

    def _set_retune(self, cor_px: Any, asked: dict[str, Any]) -> dict[str, Any]:
        """Re-tune the current or the last scan; the reply's fields (ControlError: refused).

        Parameters
        ----------
        cor_px : float or None
            The centre asked for (None: not asked).
        asked : dict
            ``filter``, ``phase`` (also settings from the next scan on, applied by the
            caller) and ``delta_beta`` (a scan's only) as asked. A filter or chain the scan
            cannot be re-tuned to is said in the reply's ``not_retuned`` (key → reason), not
            refused; a δ/β that cannot be used is refused.
        """
        asked = {k: asked[k] for k in aims.RETUNABLE if asked.get(k) is not None}
        if cor_px is None and not asked:
            return {}
        open_scans = [s for s in self.scans.values() if s.complete is None]
        state = open_scans[-1] if open_scans else None
        if state is None and self.scans:  # complete, final volume still to come: re-tuned right after
            finishing = max(self.scans.values(), key=lambda s: s.seq)
            before = getattr(self, "_after_final", None)
            if before is None or before[0] != finishing.scan_id:
                before = (finishing.scan_id, None, {})
            self._after_final = (finishing.scan_id, cor_px if cor_px is not None else before[1],
                                 {**before[2], **asked})
            return {"scan_id": finishing.scan_id, "retune_applies": "the scan is complete: its final "
                    "volume comes first, then it is republished re-tuned"}
        if state is None and self.kept is None:
            if cor_px is None and "delta_beta" not in asked:
                return {}  # settings with no scan to re-tune: only from the next scan
            raise ControlError(f"{'cor_px' if cor_px is not None else 'delta_beta'} applies to the scan being "
                               "reconstructed, and there is none (nor a completed one kept: "
                               "[publish] keep_last_scan_mb)")
        backend = self.retuner.backend
        if state is not None:
            current, check = state.aim, lambda aim: state.check_aim(aim, backend)  # raises: cannot be made
        else:
            current, check = self.kept.aim, lambda aim: self.kept._job(aim, backend)
        accepted, not_retuned = {}, {}
        for key, value in asked.items():  # each on its own: one that cannot be made spoils no other
            try:
                check({**current, **accepted, key: value})
                accepted[key] = value
            except ValueError as err:
                not_retuned[key] = str(err)
        if "delta_beta" in not_retuned:  # not a setting: it has nowhere else to apply
            raise ControlError(not_retuned["delta_beta"])
        try:
            if cor_px is not None:
                if state is not None:
                    state.centre.set_by_operator(cor_px)
                else:
                    self.kept.aim_at({"cor_px": cor_px}, backend)
        except ValueError as err:
            raise ControlError(str(err)) from None
        reply: dict[str, Any] = {"scan_id": state.scan_id if state is not None else self.kept.scan_id}
        if not_retuned:
            reply["not_retuned"] = not_retuned
        if cor_px is None and not accepted:
            return reply
        if cor_px is not None:
            reply["cor_px"] = float(state.centre.cor_px if state is not None else cor_px)
        reply["retuned"] = sorted(accepted) + (["cor_px"] if cor_px is not None else [])
        if state is not None:
            state.aim = {**state.aim, **accepted}
            log.info("scan %s re-tuned by the operator: %s", state.scan_id,
                     {**accepted, **({"cor_px": reply["cor_px"]} if cor_px is not None else {})})
            if state.groups:
                self._submit_live(state)
            return {**reply, "retune_applies": "from the current scan's next volume (made now)"}
        self.kept.aim = {**self.kept.aim, **accepted}
        self.retuner.submit(Job(KEPT, *self.kept.compute_job(backend)))
        return {**reply, "retune_applies": "republishes the completed scan's final volume, re-tuned"}

    def _retune_after_final(self) -> None:
        """What was asked while the last scan's final volume was on its way: applied to it now."""
        pending, self._after_final = getattr(self, "_after_final", None), None
        if pending is None or self.kept is None or self.kept.scan_id != pending[0]:
            return  # nothing asked, or that scan ended without a final volume (or was not kept)
        try:
            self._set_retune(*pending[1:])
        except ControlError as err:
            self.last_error = f"re-tune of {self.kept.scan_id} after its final volume: {err}"
            log.error(self.last_error)

    def retune_status(self) -> dict[str, Any]:
        """``status["retune"]``: the re-tune thread, and the last scan kept (and its bytes)."""
        kept = self.kept
        return {**(self.retuner.status() if hasattr(self, "retuner") else {}),
                "kept_scan_id": kept.scan_id if kept is not None else None,
                "kept_bytes": kept.nbytes if kept is not None else 0,
                "kept_transmissions": kept is not None and kept.binned is not None,
                # what the kept filtered projections are made with (None: as the scan was)
                "kept_projections_with": kept.sinogram_with if kept is not None else None,
                "keep_last_scan_mb": float(self.config.publish.keep_last_scan_mb)}

    def _submit_live(self, state: LiveScan, final: bool = False) -> None:
        """A volume of ``state`` with its centre and aim, made in the background."""
        keys = sorted(state.groups)
        # a re-phased final volume's projections become the kept scan's (no phase retrieval again)
        filtered = (np.empty((len(keys), *state.buffers.sinogram.shape[1:]), np.float32)
                    if final and "binned" in state.buffers.arrays else None)
        compute, rephased = state.volume_job(self.retuner.backend, final, filtered)
        state.published_groups = len(state.groups)
        self.retuner.submit(Job(state.seq, compute, {
            "n_used": state.n_used, "centre": state.centre.fields(), "aim": dict(state.aim), "final": final,
            "rephased": (filtered, aims.rephased_with(aims.base_of(state.scan, state.settings), state.aim), keys)
            if rephased else None}))

    def _submit_final(self, state: LiveScan) -> None:
        """The final volume of a re-centred or re-tuned scan, made in the background (then _finish)."""
        state.final_job = True
        try:
            self._submit_live(state, final=True)
        except ValueError as err:  # checked at the request; a scan changed since cannot do it
            self._final_failed(state, str(err))

    def _final_failed(self, state: LiveScan, why: str) -> None:
        self.last_error = f"scan {state.scan_id}: no final volume ({why})"
        log.error(self.last_error)
        self.counters["scans_failed"] += 1
        self._drop(state)

    def _collect_retuned(self) -> None:
        """Publish the volumes the background thread finished (called by the loop)."""
        for result in self.retuner.finished():
            self.metrics.stage_seconds.labels("retune").observe(result.compute_s)
            state = self.scans.get(result.job.key)
            if result.error is not None:
                self.last_error = f"re-tune of {result.job.key}: {result.error}"
                if state is not None and result.job.info.get("final"):
                    self._final_failed(state, result.error)
            elif result.job.key == KEPT:
                self._publish_kept(result)
            elif state is not None and result.job.info["final"]:
                state.rephased = result.job.info["rephased"]
                self._finish(state, result.volume)
            elif state is not None:
                self._publish_live(state, result)

    def _publish_live(self, state: LiveScan, result: Result) -> None:
        info = result.job.info
        header = state.header(result.volume, final=False)
        # what this volume was made with, not what the scan has now
        for key in ("cor_confidence", "retuned"):
            header.pop(key, None)
        header.update(info["centre"], n_projections_used=info["n_used"],
                      **aims.retuned_fields(aims.base_of(state.scan, state.settings), info["aim"],
                                            int(state.settings["iterations"])))
        header["retune_s"] = round(time.monotonic() - result.job.submitted, 3)
        beta, state.job_beta = state.job_beta, None  # several distances: made with the volume
        self.publisher.publish_volume(header, result.volume)
        self.publisher.publish_preview(header, result.volume)
        if beta is not None:
            self.publisher.publish_beta({**header, "quantity": "beta"}, beta)
        self.counters["volumes_published"] += 1

    def _publish_kept(self, result: Result) -> None:
        header = self.kept.published(result.job.info, result.volume)
        header["retune_s"] = round(time.monotonic() - result.job.submitted, 3)
        beta = result.job.info.get("beta")  # several distances: made with the volume, same axis
        self.publisher.publish_volume(header, result.volume)
        self.publisher.publish_preview(header, result.volume)
        if beta is not None:
            self.publisher.publish_beta({**header, "quantity": "beta"}, beta)
        self.counters["volumes_published"] += 1
        self.last_final = (header, result.volume, beta)
        self._write_retuned(header, result.volume, beta)
        log.info("scan %s: final volume republished, re-tuned (cor_px %+.2f, filter %s, delta_beta %g, "
                 "phase %s) in %.2f s", header["scan_id"], header["cor_px"], header["filter"],
                 header["delta_beta"], header["phase"], header["retune_s"])

    def _write_retuned(self, header: dict[str, Any], volume: np.ndarray, beta: np.ndarray | None = None) -> None:
        """A re-tuned final volume to ``output_dir`` too (when the daemon writes volumes)."""
        if self.config.publish.output_dir:
            self._save(f"{header['scan_id']}_{header['scan_seq']}_retuned", header, volume, beta)

    def _save(self, name: str, header: dict[str, Any], volume: np.ndarray, beta: np.ndarray | None) -> None:
        """Write ``name.h5`` (δ, and β if given) to ``output_dir``; a failure is logged and kept as
        ``last_error``, never raised (the volume was published; the daemon goes on)."""
        out = self.config.publish.output_dir
        try:
            Path(out).mkdir(parents=True, exist_ok=True)
            self.last_volume_file = str(save_new_volume_h5(out, name, header, volume,
                                                           self.config.publish.compression, beta=beta))
        except (OSError, ValueError) as exc:  # ValueError: lz4/zstd without hdf5plugin
            self.last_error = f"cannot write {name}.h5 to {out}: {exc}"
            log.error(self.last_error)
