"""A live 360° scan without ``cor_px``: its axis, and whether it is offset, found from the data.

A 360° offset-axis (half-acquisition) scan weights every projection by a function of the
distance from the axis *before* the ramp filter (workers/halfacq.py) and needs a volume
nearly twice the detector width: neither is known before the axis is. Such a scan's
centre is therefore deferred: the workers write each group's projected δ (not ramp-filtered,
not weighted) to ``sinogram`` and back-project nothing; at publish time the daemon
estimates the axis from those projections (:class:`~holostream.service.daemon.centre.LiveCentre`,
opposite angles 180° apart), decides from it whether the scan is half acquisition, and
makes the volume of the arrived groups with that axis, weights and width
(:func:`deferred_volume`): one ramp filter and one back-projection pass per published
volume, as for a re-centred one. Only scans whose angles are announced in ``scan_start``
qualify (a 360° scan is recognised before its first frame).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from holostream.shared.messages import ScanInfo
from holostream.workers import fbp
from holostream.workers.backend import Backend
from holostream.workers.halfacq import OFFSET_FRACTION, covers_360, detector_weights, volume_width

#: Groups filtered and back-projected per call.
_BATCH = 32


def centre_deferred(info: ScanInfo) -> bool:
    """True for a scan whose axis is not given and whose announced angles cover 360°."""
    angles = info.all_angles_deg()
    return info.cor_px is None and angles is not None and covers_360(angles)


def deferred_columns(cols_b: int, center_px: float) -> np.ndarray | None:
    """The detector weights of a deferred-centre scan about ``center_px`` (None: not half acquisition).

    Its announced angles cover 360° (:func:`centre_deferred`), so the axis alone decides,
    from the first volume on, not once the arrived angles cover the turn.
    """
    half = abs(float(center_px)) > OFFSET_FRACTION * cols_b
    return detector_weights(cols_b, center_px) if half else None


def deferred_volume(deltas: np.ndarray, groups: dict[int, tuple[float, float, int]], center_px: float,
                    ramp: fbp.RampFilter, backend: Backend, final: bool) -> np.ndarray:
    """The volume of the arrived groups of a deferred-centre scan about the axis ``center_px``.

    Parameters
    ----------
    deltas : ndarray, float32, shape (n_groups, rows_b, cols_b)
        Projected δ of the groups (``sinogram`` of such a scan), neither weighted nor filtered.
    groups : dict
        ``group -> (angle_rad, weight, n_projections)`` of the arrived groups.
    center_px : float
        Axis offset from ``(cols_b - 1) / 2``, binned pixels.
    ramp : RampFilter
        The scan's ramp filter (``cols_b`` columns).
    backend : Backend
    final : bool
        True: weights of exactly the arrived angles; False: the scan's, as if all had arrived.

    Returns
    -------
    ndarray, float32, shape (rows_b, n, n): δ per voxel, ``n = cols_b``, or for a
    half-acquisition axis :func:`~holostream.workers.halfacq.volume_width`.
    """
    if not groups:
        raise ValueError("a deferred-centre volume needs at least one reconstructed group")
    keys = np.array(sorted(groups))
    angles = np.array([groups[g][0] for g in keys])
    rows_b, cols_b = deltas.shape[1:]
    weights_of_columns = deferred_columns(cols_b, center_px)
    n = cols_b if weights_of_columns is None else volume_width(cols_b, center_px)
    columns = None if weights_of_columns is None else backend.asarray(weights_of_columns)
    weights = fbp.angle_weights(angles) if final else np.array([groups[g][1] for g in keys])
    volume = backend.xp.zeros((rows_b, n, n), dtype=np.float32)
    for start in range(0, keys.size, _BATCH):
        part = slice(start, start + _BATCH)
        delta = backend.asarray(deltas[keys[part]])
        filtered = ramp(delta if columns is None else delta * columns)
        fbp.backproject(volume, filtered, angles[part], weights[part], center_px, backend)
    return backend.to_host(volume) * np.float32(math.pi / weights.sum())


def ramp_of(scan: dict[str, Any], settings: dict[str, Any], backend: Backend) -> fbp.RampFilter:
    """The ramp filter of a scan (its binned width and the ``filter`` setting)."""
    return fbp.RampFilter(int(scan["shape"][1]) // int(settings["binning"]), backend,
                          window=str(settings["filter"]))
