"""The last completed scan, kept so that the operator can still re-centre it.

A scan's shared memory is released with its final volume (ingest reuses the space). What a
re-centred final volume needs is only the ramp-filtered sinogram of the groups that arrived,
their angles and weights, and the final header: :class:`KeptScan` copies these out of the
shared memory before it is released, if they fit in ``[publish] keep_last_scan_mb``.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from holostream.service.daemon.centre import LiveCentre, recentred_volume
from holostream.service.daemon.halfscan import deferred_columns, deferred_volume
from holostream.service.daemon.rings import LiveRings
from holostream.service.daemon.volumes import LiveScan
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
    rings: LiveRings | None = None  # the final volume's streaming ring filter, subtracted again
    deferred: bool = False  # the sinogram holds unfiltered δ (a 360° scan without cor_px)

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
                   tuple(state.buffers.volume.shape[1:]), state.rings.detached(), bool(state.deferred))

    @property
    def scan_id(self) -> str:
        return self.header["scan_id"]

    def check(self, cor_px: float) -> None:
        """Raise ValueError (with the reason) for a centre that cannot be used."""
        copy.copy(self.centre).set_by_operator(cor_px)

    def recentre(self, cor_px: float, backend: Backend) -> tuple[dict[str, Any], np.ndarray]:
        """The final volume again, about the axis ``cor_px`` (unbinned px); header and δ volume.

        The header is the previous final one with the new ``cor_px``, ``cor_source:
        "operator"``, the next ``seq`` and ``recentred`` saying from which centre it changed.
        The kept header becomes this one, so that a later re-centring starts from it.
        """
        before = self.centre.fields()
        self.centre.set_by_operator(cor_px)
        stripes = None if self.rings is None or self.rings.applied == "none" else self.rings.last_stripes
        if self.deferred:  # its width and weights follow the axis (daemon/halfscan.py)
            ramp = RampFilter(self.sinogram.shape[2], backend, window=str(self.header["filter"]))
            volume = deferred_volume(self.sinogram, self.groups, self.centre.binned_px, ramp, backend, True)
            if stripes is not None:
                stripes = self.rings.refiltered(deferred_columns(self.sinogram.shape[2], self.centre.binned_px),
                                                backend)
        else:
            volume = recentred_volume(self.sinogram, self.groups, self.centre.binned_px, self.shape,
                                      backend, final=True)
        if stripes is not None:
            volume = self.rings.subtract(volume, stripes, self.groups, self.centre.binned_px, True, backend)
        header = {k: v for k, v in self.header.items() if k not in ("cor_confidence", "republished")}
        header.update(shape=[int(n) for n in volume.shape],  # a deferred scan's width follows its axis
                      half_acquisition=volume.shape[-1] != self.sinogram.shape[2])
        header.update(self.centre.fields(), seq=int(self.header["seq"]) + 1, timestamp=time.time(),
                      recentred={"from_cor_px": before["cor_px"], "from_cor_source": before["cor_source"]})
        self.header = header
        return header, volume
