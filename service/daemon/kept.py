"""The last completed scan, kept so that the operator can still re-centre and re-filter it.

A scan's shared memory is released with its final volume (ingest reuses the space). What a
re-centred or re-filtered final volume needs is only the ramp-filtered sinogram of the groups
that arrived, their angles and weights, and the final header: :class:`KeptScan` copies these
out of the shared memory before it is released, if they fit in ``[publish]
keep_last_scan_mb``; a new FBP filter is applied to these filtered projections
(``workers/refilter.py``). A new δ/β or phase chain needs the binned transmissions too
(split mode has them, and pool mode with ``[ingest] keep_transmissions``): copied as well
when both fit in the limit, else the scan can be re-centred and re-filtered only. A scan at
several distances keeps its β sinogram as well (counted in the limit) and, as while it ran,
can be re-centred only; each re-centred δ comes with its β. The volumes are made by the
daemon's re-tune thread (``retune.py``): :meth:`KeptScan.compute_job` reads only this
object's private copies.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from holostream.service.daemon import aims
from holostream.service.daemon.centre import LiveCentre, recentred_volume
from holostream.service.daemon.halfscan import deferred_columns, deferred_volume
from holostream.service.daemon.rings import LiveRings, stripes_for, subtract_stripes
from holostream.service.daemon.volumes import DEFERRED_RETUNE, DISTANCES_RETUNE, LiveScan
from holostream.workers.backend import Backend
from holostream.workers.fbp import RampFilter

log = logging.getLogger(__name__)


@dataclass
class KeptScan:
    """A completed scan's filtered sinogram (private memory) and its final volume's header.

    Attributes
    ----------
    header : dict
        The header of the newest final volume published of this scan.
    sinogram : ndarray, float32, shape (n_arrived, rows_b, cols_b)
        Ramp-filtered projections of the arrived groups, in group order (the scan's filter).
    groups : dict
        ``index into sinogram -> (angle_rad, weight, n_projections)``.
    centre : LiveCentre
        The axis of the newest final volume.
    shape : tuple of int
        ``(nz, n, n)`` of the volume.
    scan, settings : dict
        The scan's ``scan_start`` and settings (what ``sinogram`` was made with).
    binned : ndarray or None
        float32 like ``sinogram``: the binned transmissions (when the scan kept them and they fit).
    reference : ndarray or None
        float32 ``(2, rows, cols)``: dark and flat, with ``binned``.
    aim : dict
        What the next re-tune uses: ``cor_px`` (None: the newest final volume's), and the
        operator's ``filter``, ``delta_beta``, ``phase`` (see ``aims.py``).
    rings : LiveRings or None
        The final volume's streaming ring filter: its stripes are subtracted again.
    deferred : bool
        The sinogram holds unfiltered δ (a 360° scan without cor_px, ``halfscan.py``).
    ring_applied : str
        The ring filter of the newest volume made (its header's ``ring_filter``).
    beta_sinogram : ndarray or None
        float32 like ``sinogram``: a multi-distance scan's ramp-filtered β projections.
    """

    header: dict[str, Any]
    sinogram: np.ndarray
    groups: dict[int, tuple[float, float, int]]
    centre: LiveCentre
    shape: tuple[int, ...]
    scan: dict[str, Any]
    settings: dict[str, Any]
    binned: np.ndarray | None = None
    reference: np.ndarray | None = None
    aim: dict[str, Any] = field(default_factory=dict)
    sinogram_with: dict[str, Any] | None = None  # filter, delta_beta, phase of sinogram (None: the scan's)
    rings: LiveRings | None = None
    deferred: bool = False
    ring_applied: str = "none"
    beta_sinogram: np.ndarray | None = None

    @classmethod
    def of(cls, state: LiveScan, header: dict[str, Any], limit_mb: float) -> "KeptScan | None":
        """Copies of ``state``'s arrived rows (and transmissions), or None when off or over ``limit_mb``."""
        keys = sorted(state.groups)
        sinogram = state.buffers.sinogram
        beta = state.buffers.arrays.get("beta_sinogram")  # several distances: β beside δ
        nbytes = (1 + (beta is not None)) * len(keys) * int(np.prod(sinogram.shape[1:])) * sinogram.itemsize
        if limit_mb <= 0 or not keys:
            return None
        if nbytes > limit_mb * 1e6:
            log.info("scan %s: its sinogram%s (%.1f MB) is over keep_last_scan_mb = %g: not kept, "
                     "it cannot be re-tuned after its end", state.scan_id, "s of δ and β" if beta is not None else "",
                     nbytes / 1e6, limit_mb)
            return None
        binned = state.buffers.arrays.get("binned")
        binned_copy = reference = None
        if binned is not None and 2 * nbytes + state.buffers.reference.nbytes <= limit_mb * 1e6:
            binned_copy, reference = np.array(binned[keys]), np.array(state.buffers.reference)
        elif binned is not None:
            log.info("scan %s: its transmissions do not fit in keep_last_scan_mb = %g beside its sinogram: "
                     "after its end it can be re-centred and re-filtered, not re-phased", state.scan_id, limit_mb)
        rephased, made_with = None, None
        if state.rephased is not None and state.rephased[2] == keys:  # the final volume's projections
            rephased, made_with = state.rephased[0], state.rephased[1]
        return cls(dict(header), rephased if rephased is not None else np.array(sinogram[keys]),
                   {i: state.groups[g] for i, g in enumerate(keys)}, copy.copy(state.centre),
                   tuple(state.buffers.volume.shape[1:]), dict(state.scan), dict(state.settings),
                   binned_copy, reference, dict(state.aim), made_with, state.rings.detached(),
                   bool(state.deferred), state.rings.applied,
                   None if beta is None else np.array(beta[keys]))

    @property
    def scan_id(self) -> str:
        return self.header["scan_id"]

    @property
    def nbytes(self) -> int:
        """The private memory this scan holds (sinogram, and transmissions when kept)."""
        return int(self.sinogram.nbytes + sum(a.nbytes for a in (self.binned, self.reference, self.beta_sinogram)
                                               if a is not None))

    def aim_at(self, params: dict[str, Any], backend: Backend) -> None:
        """Set what the next re-tuned volume uses; ValueError says why it cannot be made.

        Aims accumulate: a centre asked, then a filter before the first volume was made, gives
        one volume with both (the newest request's job replaces the waiting one).
        """
        aim = {**self.aim, **{k: v for k, v in params.items() if v is not None}}
        if params.get("cor_px") is not None:
            copy.copy(self.centre).set_by_operator(params["cor_px"])  # raises for a bad value
            aim["cor_px"] = float(params["cor_px"])
        self._job(aim, backend)  # raises for what cannot be made
        self.aim = aim

    def compute_job(self, backend: Backend) -> tuple[Callable[[], np.ndarray], dict[str, Any]]:
        """The volume of the current aim, for the re-tune thread (reads only this object's copies).

        Returns the computation and the job's ``info`` for :meth:`published`: the aim, and
        when phase retrieval runs again the array it fills with the new filtered projections;
        for a scan at several distances the computation also puts its β volume (same axis)
        in ``info["beta"]``.
        """
        filtered = np.empty_like(self.sinogram) if self.binned is not None else None  # touched if used
        compute, rephased = self._job(self.aim, backend, filtered)
        info = {**self.aim, "filtered": filtered if rephased else None, "beta": None}
        if self.beta_sinogram is None:
            return compute, info
        centre = copy.copy(self.centre)
        if self.aim.get("cor_px") is not None:
            centre.set_by_operator(self.aim["cor_px"])

        def with_beta() -> np.ndarray:
            volume = compute()
            info["beta"] = recentred_volume(self.beta_sinogram, self.groups, centre.binned_px, self.shape,
                                            backend, final=True)
            return volume
        return with_beta, info

    def _job(self, aim: dict[str, Any], backend: Backend, filtered_out: np.ndarray | None = None):
        centre = copy.copy(self.centre)
        if aim.get("cor_px") is not None:
            centre.set_by_operator(aim["cor_px"])
        center_px = centre.binned_px
        base = aims.base_of(self.scan, self.settings)
        if self.beta_sinogram is not None and aims.differs(base, aim):
            raise ValueError(DISTANCES_RETUNE)
        rings = self.rings if self.rings is not None and self.rings.applied != "none" else None
        if self.deferred:  # its width and weights follow the axis (daemon/halfscan.py)
            if aims.differs(base, aim):
                raise ValueError(DEFERRED_RETUNE)

            def deferred() -> np.ndarray:
                ramp = RampFilter(self.sinogram.shape[2], backend, window=str(self.settings["filter"]))
                volume = deferred_volume(self.sinogram, self.groups, center_px, ramp, backend, True)
                stripes = None if rings is None else rings.refiltered(
                    deferred_columns(self.sinogram.shape[2], center_px), backend)
                return self._rings_off(volume, stripes, center_px, backend)
            return deferred, False
        compute, rephased = aims.volume_job(self.sinogram, self.binned, self.reference, self.groups, self.scan,
                                            self.settings, aim, center_px, self.shape, backend, final=True,
                                            sinogram_with=self.sinogram_with, filtered_out=filtered_out)
        stripes = None if rings is None else stripes_for(rings.last_stripes, base, aims.applied(base, aim), backend)
        return (lambda: self._rings_off(compute(), stripes, center_px, backend)), rephased

    def _rings_off(self, volume: np.ndarray, stripes, center_px: float, backend: Backend) -> np.ndarray:
        """``volume`` less its ring stripes (None: none known), noting what its header says."""
        self.ring_applied = "none" if stripes is None else self.rings.method
        return volume if stripes is None else subtract_stripes(volume, stripes, self.groups, center_px, True,
                                                               backend)

    def published(self, made_with: dict[str, Any], volume: np.ndarray) -> dict[str, Any]:
        """The header of a re-tuned volume made with ``made_with`` (an aim); it becomes the kept one.

        The previous final header with the next ``seq``; a new centre gives ``cor_source:
        "operator"`` and ``recentred`` (from which centre it changed); the filter, δ/β and chain
        used, and ``retuned`` (what differs from the scan's own, ``aims.retuned_fields``).
        """
        if made_with.get("filtered") is not None:  # re-phased: later re-tunes start from these
            self.sinogram = made_with["filtered"]
            self.sinogram_with = aims.rephased_with(aims.base_of(self.scan, self.settings), made_with)
        header = {k: v for k, v in self.header.items() if k not in ("republished", "retuned")}
        cor_px = made_with.get("cor_px")
        if cor_px is not None and (cor_px != self.centre.cor_px or self.centre.source != "operator"):
            before = self.centre.fields()
            self.centre.set_by_operator(cor_px)
            header.pop("cor_confidence", None)
            header.update(self.centre.fields(), recentred={"from_cor_px": before["cor_px"],
                                                           "from_cor_source": before["cor_source"]})
        header.update(aims.retuned_fields(aims.base_of(self.scan, self.settings), made_with,
                                          int(self.settings["iterations"])),
                      seq=int(self.header["seq"]) + 1, timestamp=time.time(), ring_filter=self.ring_applied,
                      shape=[int(n) for n in volume.shape],  # a deferred scan's width follows its axis
                      half_acquisition=volume.shape[-1] != self.sinogram.shape[2])
        self.header = header
        return header
