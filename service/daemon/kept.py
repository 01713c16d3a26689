"""The last completed scan, kept so that the operator can still re-centre and re-filter it.

A scan's shared memory is released with its final volume (ingest reuses the space). What a
re-centred final volume needs is only the ramp-filtered sinogram of the groups that arrived,
their angles and weights, and the final header: :class:`KeptScan` copies these out of the
shared memory before it is released, if they fit in ``[publish] keep_last_scan_mb``. A new
FBP filter is applied to these filtered projections (``workers/refilter.py``), so nothing
more is kept for it. The volumes themselves are made by the daemon's re-tune thread
(``retune.py``): :meth:`KeptScan.compute_job` reads only this object's private copies.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from holostream.service.daemon.centre import LiveCentre, recentred_volume
from holostream.service.daemon.volumes import LiveScan, retuned_fields
from holostream.workers.backend import Backend
from holostream.workers.refilter import WindowChange

log = logging.getLogger(__name__)


@dataclass
class KeptScan:
    """A completed scan's filtered sinogram (private memory) and its final volume's header.

    Attributes
    ----------
    header : dict
        The header of the newest final volume published of this scan.
    sinogram : ndarray, float32, shape (n_arrived, rows_b, cols_b)
        Ramp-filtered projections of the arrived groups, in group order.
    groups : dict
        ``index into sinogram -> (angle_rad, weight, n_projections)``.
    centre : LiveCentre
        The axis of the newest final volume.
    shape : tuple of int
        ``(nz, n, n)`` of the volume.
    """

    header: dict[str, Any]
    sinogram: np.ndarray
    groups: dict[int, tuple[float, float, int]]
    centre: LiveCentre
    shape: tuple[int, ...]
    target: dict[str, Any] = field(default_factory=dict)  # the next re-tune's cor_px, window

    def __post_init__(self):
        self.target = {"cor_px": None, "window": self.header["filter"], **self.target}

    @classmethod
    def of(cls, state: LiveScan, header: dict[str, Any], limit_mb: float) -> "KeptScan | None":
        """A copy of ``state``'s arrived sinogram rows, or None when off or over ``limit_mb``."""
        keys = sorted(state.groups)
        nbytes = len(keys) * int(np.prod(state.buffers.sinogram.shape[1:])) * state.buffers.sinogram.itemsize
        if limit_mb <= 0 or not keys:
            return None
        if nbytes > limit_mb * 1e6:
            log.info("scan %s: its sinogram (%.1f MB) is over keep_last_scan_mb = %g: not kept, "
                     "it cannot be re-centred after its end", state.scan_id, nbytes / 1e6, limit_mb)
            return None
        sinogram = np.array(state.buffers.sinogram[keys])  # a private copy: the shm goes away
        groups = {i: state.groups[g] for i, g in enumerate(keys)}
        return cls(dict(header), sinogram, groups, copy.copy(state.centre),
                   tuple(state.buffers.volume.shape[1:]))

    @property
    def scan_id(self) -> str:
        return self.header["scan_id"]

    @property
    def base_window(self) -> str:
        """The FBP window the kept projections were filtered with (the scan's setting)."""
        return (self.header.get("retuned") or {}).get("filter", {}).get("from") or self.header["filter"]

    def aim(self, cor_px: float | None, window: str | None, backend: Backend) -> None:
        """Set what the next re-tuned volume uses (None: as aimed before); ValueError says why not.

        Aims accumulate: a centre asked, then a filter before the first volume was made, gives
        one volume with both (the newest request's job replaces the waiting one).
        """
        target = dict(self.target)
        if cor_px is not None:
            copy.copy(self.centre).set_by_operator(cor_px)  # raises for a bad value
            target["cor_px"] = float(cor_px)
        if window is not None:
            WindowChange(self.sinogram.shape[-1], backend, self.base_window, window)  # raises if refused
            target["window"] = window
        self.target = target

    def compute_job(self, backend: Backend) -> Callable[[], np.ndarray]:
        """The volume of the current aim, for the re-tune thread (reads only this object's copies)."""
        centre = copy.copy(self.centre)
        if self.target["cor_px"] is not None:
            centre.set_by_operator(self.target["cor_px"])
        refilter = (None if self.target["window"] == self.base_window else
                    WindowChange(self.sinogram.shape[-1], backend, self.base_window, self.target["window"]))
        sinogram, groups, shape, center_px = self.sinogram, self.groups, self.shape, centre.binned_px
        return lambda: recentred_volume(sinogram, groups, center_px, shape, backend, final=True,
                                        refilter=refilter)

    def published(self, made_with: dict[str, Any], volume: np.ndarray) -> dict[str, Any]:
        """The header of a re-tuned volume made with ``made_with`` (an aim); it becomes the kept one.

        The previous final header with the next ``seq``; a new centre gives ``cor_source:
        "operator"`` and ``recentred`` (from which centre it changed); the filter gives
        ``filter`` and ``retuned`` (changes from the scan's settings).
        """
        header = {k: v for k, v in self.header.items() if k not in ("republished", "retuned")}
        cor_px = made_with["cor_px"]
        if cor_px is not None and (cor_px != self.centre.cor_px or self.centre.source != "operator"):
            before = self.centre.fields()
            self.centre.set_by_operator(cor_px)
            header.pop("cor_confidence", None)
            header.update(self.centre.fields(), recentred={"from_cor_px": before["cor_px"],
                                                           "from_cor_source": before["cor_source"]})
        header.update(retuned_fields(self.base_window, made_with["window"]),
                      seq=int(self.header["seq"]) + 1, timestamp=time.time())
        self.header = header
        return header
