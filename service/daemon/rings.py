"""The streaming ring filter of a live scan (``ring_filter = "column-mean"``, workers/ring.py).

Each worker (and the split mode's reconstructor) adds ``weight·(-ln T)`` of its groups' binned
transmissions to its rows of ``absorption_sum`` (one per set of angles, ``angle_half``) in the
scan's shared memory when it commits them (:class:`AbsorptionSum`). At publish time the daemon
divides the sums by their weights, takes the stripes both means show, turns them into the change of every filtered
projection (phase retrieval and ramp filter of the scan, :func:`filtered_stripes`) and
subtracts its back-projection at the volume's angles from the volume (:class:`LiveRings`):
the volume ``holostream reconstruct`` makes of the same frames, at the cost of one
back-projection pass per published volume (BENCHMARKS.md, issue 10 part 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from holostream.workers.backend import Backend
from holostream.workers.fbp import angle_weights
from holostream.workers.fbp import RampFilter
from holostream.workers.ring import (STREAMING_RING_FILTERS, absorption, angle_half, delta_change,
                                     filter_change, ring_volume)

#: Live volumes are filtered once each of the two angle sets holds this much weight
#: (radians; a quarter turn each): before, a mean over a few angles still shows the
#: sample's own structure, not only the stripes.
_MIN_SET_WEIGHT_RAD = math.pi / 4


def live_ring_filter(ring_filter: str, several_distances: bool) -> str:
    """The ring filter a live scan streams: its setting, none at several distances (each
    distance would need its own sums; headers then say ``"none"``)."""
    return "none" if several_distances else ring_filter


class AbsorptionSum:
    """A worker's Σ weight·(-ln T) of its groups not yet committed (nothing unless the filter streams).

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
        shape = (2, *binned_shape)
        self.sum = backend.xp.zeros(shape, dtype=backend.xp.float64) if self.active else None
        self.weights = np.zeros(2)

    def add(self, transmissions, weights, angles_deg) -> None:
        """Add ``weights[i]·(-ln transmissions[i])`` to the sum of the set of ``angles_deg[i]``.

        ``transmissions``: binned, (n, rows_b, cols_b), on the backend (:func:`angle_half`).
        """
        if self.active:
            for t, w, a in zip(transmissions, weights, angles_deg):  # in the order offline adds them
                half = angle_half(math.radians(float(a)))
                self.sum[half] += float(w) * absorption(t, self.backend)
                self.weights[half] += float(w)

    def commit(self, shared_sum: np.ndarray, shared_weights: np.ndarray) -> None:
        """Add the uncommitted sums to the partial's ``absorption_sum``/``absorption_weights`` rows."""
        if self.active:
            shared_sum += self.backend.to_host(self.sum)
            shared_weights += self.weights
            self.sum.fill(0.0)
            self.weights[:] = 0.0


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
        The stripes of that volume, as the scan's own filter, δ/β and chain make them (host,
        float32; a re-tuned volume subtracts :func:`stripes_for` of them): a kept scan
        re-tuned after its end derives its stripes from them again.
    last_change : ndarray or None
        The same before detector weights and ramp filter (:func:`delta_change`, host).
    """

    method: str
    scan: dict[str, Any]
    settings: dict[str, Any]
    applied: str = "none"
    last_stripes: np.ndarray | None = None
    last_change: np.ndarray | None = None
    _pipeline: Any = field(default=None, repr=False)

    @classmethod
    def of_scan(cls, scan: dict[str, Any], settings: dict[str, Any]) -> "LiveRings":
        return cls(live_ring_filter(str(settings.get("ring_filter", "none")), bool(scan.get("distances"))),
                   scan, settings)

    @property
    def streams(self) -> bool:
        return self.method in STREAMING_RING_FILTERS

    def stripes(self, buffers: Any, half: bool, backend: Backend, column_weights: Any = None):
        """The filtered stripes of the mean ``-ln T`` so far (None: not enough angles yet).

        Parameters
        ----------
        buffers : ScanBuffers
            The scan's: ``absorption_sum`` and ``absorption_weights`` (the partials' committed
            sums over two angle sets), ``reference`` (dark and flat, for the scan's pipeline).
        half : bool
            A half-acquisition scan (its projections are weighted before the ramp filter).
        backend : Backend
        column_weights : array of shape (cols_b,), optional
            Detector weights to use instead of the pipeline's (a deferred-centre scan's, from
            the axis estimated so far).

        Returns
        -------
        array of shape (rows_b, cols_b), float32, on the backend, or None
        """
        if not self.streams:
            return None
        weights = np.array(buffers.absorption_weights, dtype=np.float64).sum(axis=0)  # before the sums
        if weights.min() < _MIN_SET_WEIGHT_RAD:
            return None
        mean = backend.asarray(np.sum(buffers.absorption_sum, axis=0) / weights[:, None, None])
        if self._pipeline is None:
            # the workers' own pipeline (phase retrieval, detector weights, ramp filter); imported
            # here because the worker module imports this one for AbsorptionSum
            from holostream.service.daemon.worker import build_pipeline
            from holostream.shared.messages import ScanInfo
            from holostream.shared.settings import ReconstructionSettings

            self._pipeline = build_pipeline(ScanInfo.from_dict(self.scan),
                                            ReconstructionSettings.from_dict(self.settings),
                                            buffers, backend, half)
        self.last_change = np.asarray(backend.to_host(delta_change(self._pipeline, mean, backend)))
        weights_now = self._pipeline.column_weights if column_weights is None else column_weights
        return filter_change(self.last_change, weights_now, self._pipeline.ramp, backend)

    def refiltered(self, column_weights: Any, backend: Backend):
        """The last stripes again, with other detector weights (a kept deferred scan re-centred)."""
        ramp = RampFilter(self.last_change.shape[1], backend, window=str(self.settings["filter"]))
        return filter_change(backend.asarray(self.last_change), column_weights, ramp, backend)

    def detached(self) -> "LiveRings":
        """A copy without the scan's pipeline (whose dark/flat are views of its shared memory)."""
        return LiveRings(self.method, self.scan, self.settings, self.applied, self.last_stripes,
                         self.last_change)

    def release(self) -> None:
        """Drop the pipeline: its views of the shared memory would keep it from being unmapped."""
        self._pipeline = None

    def subtract(self, volume: np.ndarray, stripes, groups: dict[int, tuple[float, float, int]],
                 center_px: float, final: bool, backend: Backend, base=None) -> np.ndarray:
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
        base : array, optional
            The scan's own stripes ``stripes`` were derived from (a re-tuned volume's,
            :func:`stripes_for`); default ``stripes``. Kept as :attr:`last_stripes`.
        """
        if stripes is None or not groups:
            self.applied = "none"
            return volume
        self.applied = self.method
        self.last_stripes = np.asarray(backend.to_host(stripes if base is None else base))
        return subtract_stripes(volume, stripes, groups, center_px, final, backend)


def subtract_stripes(volume: np.ndarray, stripes, groups: dict[int, tuple[float, float, int]],
                     center_px: float, final: bool, backend: Backend) -> np.ndarray:
    """``volume`` less the back-projection of ``stripes`` at ``groups``' angles (see LiveRings.subtract)."""
    keys = sorted(groups)
    angles = np.array([groups[g][0] for g in keys])
    weights = angle_weights(angles) if final else np.array([groups[g][1] for g in keys])
    rings = ring_volume(backend.asarray(stripes), angles, weights, center_px, volume.shape, backend)
    return volume - backend.to_host(rings)


def stripes_for(stripes, base: dict[str, Any], used: dict[str, Any], backend: Backend):
    """A scan's own filtered stripes as a re-tuned volume needs them (None: not known).

    Parameters
    ----------
    stripes : array of shape (rows_b, cols_b) or None
        Stripes made with ``base`` (the scan's ``filter``, ``delta_beta``, ``phase``).
    base, used : dict
        ``service/daemon/aims.py``'s base of the scan and the values the volume is made with.
    backend : Backend

    A new filter is one rescaling of the stripes' spectrum, as of the projections
    (``workers/refilter.py``); a new δ/β or chain changes them in a way only the scan's
    transmissions could tell, so such a volume gets no ring filter (its header says so).
    """
    if stripes is None or any(used[k] != base[k] for k in ("delta_beta", "phase")):
        return None
    if used["filter"] == base["filter"]:
        return stripes
    from holostream.workers.refilter import WindowChange

    try:
        change = WindowChange(stripes.shape[-1], backend, base["filter"], used["filter"])
    except ValueError:  # frequencies the scan's filter removed: not recoverable from the stripes
        return None
    return change(backend.asarray(stripes))
