"""The streaming ring filter of a live scan (``ring_filter = "column-mean"``, workers/ring.py).

Each worker (and the split mode's reconstructor) adds ``weight·δ`` of its groups, before the
ramp filter, to its row of ``delta_sum`` in the scan's shared memory when it commits them
(:class:`DeltaSum`). At publish time the daemon divides the sum by the committed weights,
takes the stripes of that mean projection, ramp-filters them and subtracts their
back-projection at the volume's angles from the volume (:class:`LiveRings`): the same
volume as filtering the whole sinogram first, as ``holostream reconstruct`` does, at the
cost of one back-projection pass per published volume (BENCHMARKS.md, issue 10 part 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from holostream.workers.backend import Backend
from holostream.workers.fbp import RampFilter, angle_weights
from holostream.workers.halfacq import detector_weights
from holostream.workers.ring import STREAMING_RING_FILTERS, column_stripes, ring_volume

#: Live volumes are filtered once the arrived weights cover this fraction of π: before,
#: the mean over a few angles still shows the sample's own structure, not only the stripes.
_MIN_COVERAGE = 0.5


class DeltaSum:
    """A worker's Σ weight·δ of its groups not yet committed (nothing unless the filter streams).

    Parameters
    ----------
    ring_filter : str
        The scan's ``ring_filter`` setting.
    binned_shape : (rows_b, cols_b)
    backend : Backend
    """

    def __init__(self, ring_filter: str, binned_shape: tuple[int, int], backend: Backend):
        self.backend = backend
        self.active = ring_filter in STREAMING_RING_FILTERS
        self.sum = backend.xp.zeros(tuple(binned_shape), dtype=backend.xp.float64) if self.active else None

    def add(self, delta, weights) -> None:
        """Add ``Σ_i weights[i]·delta[i]`` (``delta`` (n, rows_b, cols_b) on the backend)."""
        if self.active:
            xp = self.backend.xp
            self.sum += xp.tensordot(xp.asarray(weights, dtype=xp.float64), delta, axes=1)

    def commit(self, shared: np.ndarray) -> None:
        """Add the uncommitted sum to ``shared`` (the partial's ``delta_sum`` row) and restart."""
        if self.active:
            shared += self.backend.to_host(self.sum)
            self.sum.fill(0.0)


@dataclass
class LiveRings:
    """The daemon's side: what to subtract from a volume of a scan, and what was applied.

    Attributes
    ----------
    method : str
        The scan's ``ring_filter`` setting.
    applied : str
        The filter applied to the last volume computed (``"none"`` while it was not).
    last_stripes : ndarray or None
        The stripes subtracted from that volume (host, float32): a kept scan re-centred after
        its end subtracts them again.
    """

    method: str
    filter_window: str
    cols: int
    binning: int
    applied: str = "none"
    last_stripes: np.ndarray | None = None
    _ramp: Any = field(default=None, repr=False)

    @classmethod
    def of_scan(cls, scan: dict[str, Any], settings: dict[str, Any]) -> "LiveRings":
        return cls(str(settings.get("ring_filter", "none")), str(settings["filter"]),
                   int(scan["shape"][1]), int(settings["binning"]))

    @property
    def streams(self) -> bool:
        return self.method in STREAMING_RING_FILTERS

    def stripes(self, delta_sum: np.ndarray, weights: np.ndarray, workers_center_px: float,
                half: bool, backend: Backend):
        """The ramp-filtered stripes of the mean projection so far (None: not enough angles yet).

        Parameters
        ----------
        delta_sum : ndarray, float64, shape (n_partials, rows_b, cols_b)
            The partials' Σ weight·δ (shared memory).
        weights : ndarray, float64, shape (n_partials,)
            Their committed Σ weight (radians).
        workers_center_px : float
            The axis the workers used (binned px): the half-acquisition detector weights.
        half : bool
            A half-acquisition scan (its projections were weighted before the ramp filter).
        backend : Backend

        Returns
        -------
        array of shape (rows_b, cols_b), float32, on the backend, or None
        """
        total = float(np.sum(weights))
        if not self.streams or total < _MIN_COVERAGE * math.pi:
            return None
        xp = backend.xp
        mean = backend.asarray(np.sum(delta_sum, axis=0) / total)
        stripes = column_stripes(mean, backend)
        cols_b = stripes.shape[1]
        if half:
            stripes = stripes * xp.asarray(detector_weights(cols_b, workers_center_px))
        if self._ramp is None:
            self._ramp = RampFilter(cols_b, backend, window=self.filter_window)
        return self._ramp(stripes[None])[0]

    def subtract(self, volume: np.ndarray, stripes, groups: dict[int, tuple[float, float, int]],
                 center_px: float, final: bool, backend: Backend) -> np.ndarray:
        """``volume`` less the back-projection of ``stripes`` at the arrived groups' angles.

        Parameters
        ----------
        volume : ndarray, float32, shape (nz, n, n)
            A live or final volume of the arrived ``groups`` about ``center_px``.
        stripes : array or None
            :meth:`stripes`; None returns ``volume`` (and :attr:`applied` says ``"none"``).
        groups : dict
            ``group -> (angle_rad, weight, n_projections)``.
        center_px : float
            The volume's axis offset, binned px.
        final : bool
            The weights of exactly the arrived angles (the final volume's), else the scan's.
        backend : Backend
        """
        if stripes is None or not groups:
            self.applied = "none"
            return volume
        keys = sorted(groups)
        angles = np.array([groups[g][0] for g in keys])
        weights = angle_weights(angles) if final else np.array([groups[g][1] for g in keys])
        rings = ring_volume(stripes, angles, weights, center_px, volume.shape, backend)
        self.applied, self.last_stripes = self.method, np.asarray(backend.to_host(stripes))
        return volume - backend.to_host(rings)
