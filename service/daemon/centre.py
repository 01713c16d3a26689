"""The centre of rotation of a live scan: given, estimated as angles arrive, or set by the operator.

A scan whose ``scan_start`` has no ``cor_px`` is back-projected by the workers with the axis
at the middle; :class:`LiveCentre` estimates the offset from the ramp-filtered sinogram in
shared memory once opposite angles have arrived (``workers/cor.py``; the ramp filter is
symmetric, so it keeps the mirror relation the estimate relies on), and refines it as the
scan grows. While the centre to use differs from the workers', each volume is the one-shot
FBP of the arrived groups from the sinogram with that centre (one back-projection pass per
published volume, done by the daemon). The operator's control ``set {"cor_px": x}`` takes
precedence from the next volume on.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from holostream.workers import fbp
from holostream.workers.backend import Backend
from holostream.workers.binning import binned_center_px
from holostream.workers.cor import CorPlan

log = logging.getLogger(__name__)

#: Re-estimate when the arrived groups grew by this fraction since the last estimate.
_REFINE_GROWTH = 0.1
#: Rows of the sinogram the estimate reads at most (spread over the height).
_ESTIMATE_ROWS = 128
#: Binned pixels below which the centre to use and the workers' count as the same.
_SAME_CENTRE_PX = 1e-3


@dataclass
class LiveCentre:
    """What a live scan's volumes use as the axis offset, and where it came from.

    Attributes
    ----------
    cor_px : float
        Axis offset from ``(cols - 1) / 2``, unbinned pixels (0 until estimated).
    source : str
        ``"given"``, ``"estimated"`` or ``"operator"`` (PROTOCOL.md). A centre not given and
        not estimated yet is ``"estimated"`` with confidence 0: the middle, not to be trusted.
    confidence : float or None
        Of the estimate (0 … 1; 0 before the first estimate), None unless estimated.
    """

    cols: int
    binning: int
    cor_px: float = 0.0
    source: str = "estimated"
    confidence: float | None = 0.0
    estimated_at: int = 0  # groups arrived at the last estimate

    @classmethod
    def of_scan(cls, scan: dict[str, Any], settings: dict[str, Any]) -> "LiveCentre":
        """The centre as the ``scan_start`` gave it (``ScanInfo.to_dict()``) or not."""
        centre = cls(int(scan["shape"][1]), int(settings["binning"]))
        if scan.get("cor_px") is not None:
            centre.cor_px, centre.source, centre.confidence = float(scan["cor_px"]), "given", None
        return centre

    @property
    def binned_px(self) -> float:
        """The offset in binned pixels from ``(cols_b - 1) / 2``."""
        return binned_center_px(self.cols, self.binning, self.cor_px)

    def fields(self) -> dict[str, Any]:
        """``cor_px``, ``cor_source`` and (when estimated) ``cor_confidence`` for headers and status."""
        out = {"cor_px": float(self.cor_px), "cor_source": self.source}
        if self.confidence is not None:
            out["cor_confidence"] = float(self.confidence)
        return out

    def set_by_operator(self, cor_px: float) -> None:
        """The operator's value, used from the next volume on."""
        if isinstance(cor_px, bool) or not isinstance(cor_px, (int, float)) or not math.isfinite(cor_px):
            raise ValueError(f"cor_px must be a finite number of pixels, got {cor_px!r}")
        self.cor_px, self.source, self.confidence = float(cor_px), "operator", None

    def refine(self, sinogram: np.ndarray, groups: dict[int, tuple[float, float, int]],
               scan_id: str, final: bool = False) -> None:
        """Estimate (again) from the arrived groups, unless given or set by the operator.

        Parameters
        ----------
        sinogram : ndarray, float32, shape (n_groups, rows_b, cols_b)
            Ramp-filtered projections in shared memory.
        groups : dict
            ``group -> (angle_rad, weight, n_projections)`` of the arrived groups.
        scan_id : str
            For the log.
        final : bool
            The scan is complete: estimate from every arrived group if any came since the last
            estimate (live, only once they grew by ``_REFINE_GROWTH``), so that the final
            volume's centre is that of all its angles, not of those the last live volume had.
        """
        if self.source in ("given", "operator") or len(groups) < 4:
            return
        grown = len(groups) > self.estimated_at if final else len(groups) >= (1 + _REFINE_GROWTH) * self.estimated_at
        if self.estimated_at and not grown:
            return
        keys = np.array(sorted(groups))
        plan = CorPlan(np.degrees([groups[g][0] for g in keys]))
        if plan.method == "none":
            return  # no opposite angles yet
        self.estimated_at = len(groups)
        step = max(1, sinogram.shape[1] // _ESTIMATE_ROWS)
        frames = np.stack([sinogram[g, ::step] for g in keys[plan.indices]])
        estimate = plan.estimate(frames)
        cols_b = sinogram.shape[2]
        # invert binned_center_px: unbinned offset of the binned one
        cor_px = estimate.cor_px * self.binning - (self.cols - self.binning * cols_b) / 2.0
        changed = self.source != "estimated" or self.confidence == 0.0 or abs(cor_px - self.cor_px) > 0.05
        self.cor_px, self.source, self.confidence = cor_px, "estimated", estimate.confidence
        if changed:
            (log.info if estimate.trusted else log.warning)(
                "scan %s: centre of rotation estimated at %+.2f px from %d groups, confidence %.2f%s",
                scan_id, cor_px, len(groups), estimate.confidence,
                "" if estimate.trusted else " (LOW: do not trust it)")

    def differs_from(self, workers_center_px: float) -> bool:
        """True when the workers back-projected with another centre than this one."""
        return abs(self.binned_px - float(workers_center_px)) > _SAME_CENTRE_PX


def recentred_volume(sinogram: np.ndarray, groups: dict[int, tuple[float, float, int]],
                     center_px: float, shape: tuple[int, ...], backend: Backend,
                     final: bool, refilter: Callable[[Any], Any] | None = None) -> np.ndarray:
    """One-shot FBP of the arrived groups from the sinogram with another axis offset.

    Parameters
    ----------
    sinogram : ndarray, float32, shape (n_groups, rows_b, cols_b)
        Ramp-filtered projections.
    groups : dict
        ``group -> (angle_rad, weight, n_projections)`` of the arrived groups.
    center_px : float
        Axis offset in binned pixels.
    shape : tuple of int
        ``(nz, n, n)`` of the volume.
    backend : Backend
    final : bool
        True: the weights are recomputed for exactly the arrived angles (the final volume);
        False: the scan's weights, normalised as if every angle had arrived (a live volume).
    refilter : callable or None
        Applied to each batch of filtered projections before the back-projection: another
        FBP window (:class:`holostream.workers.refilter.WindowChange`); None: as they are.

    Returns
    -------
    ndarray, float32, of ``shape``: δ per voxel.
    """
    keys = np.array(sorted(groups))
    angles = np.array([groups[g][0] for g in keys])
    weights = fbp.angle_weights(angles) if final else np.array([groups[g][1] for g in keys])
    volume = backend.xp.zeros(tuple(shape), dtype=np.float32)
    for start in range(0, keys.size, 32):
        part = slice(start, start + 32)
        batch = backend.asarray(sinogram[keys[part]])
        fbp.backproject(volume, batch if refilter is None else refilter(batch), angles[part],
                        weights[part], center_px, backend)
    return backend.to_host(volume) * np.float32(math.pi / weights.sum())

