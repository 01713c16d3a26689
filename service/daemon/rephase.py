"""A scan's volume again from its binned transmissions, with another δ/β or phase chain.

Phase retrieval happens before the ramp filter, so a new δ/β (or chain, ``phase``) cannot be
applied to the filtered projections the daemon keeps for re-centring: it needs the binned,
flat-fielded transmissions of each group. Split mode has them in shared memory (``binned``,
written by the CPU workers for the reconstructor); :class:`~holostream.service.daemon.kept.KeptScan`
copies them for the last completed scan. Pool mode's workers go from frames to filtered
projections in one step and keep no transmissions: there δ/β applies from the next scan only.

The volume is the one-shot FBP of the arrived groups through the same
:class:`~holostream.workers.pipeline.ProjectionPipeline` the workers build
(:func:`~holostream.service.daemon.worker.build_pipeline`), with the new values: phase
retrieval, δ px, ramp filter with the scan's (or the operator's) window, back-projection.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from holostream.service.daemon.worker import build_pipeline
from holostream.shared.messages import ScanInfo
from holostream.shared.settings import ReconstructionSettings
from holostream.workers import fbp
from holostream.workers.backend import Backend

#: Groups phase-retrieved and back-projected per batch (bounds the memory of the copies).
_BATCH_GROUPS = 32


def rephased_volume(binned: np.ndarray, reference: np.ndarray, groups: dict[int, tuple[float, float, int]],
                    scan: dict[str, Any], settings: dict[str, Any], center_px: float,
                    shape: tuple[int, ...], backend: Backend, final: bool,
                    filtered_out: np.ndarray | None = None, refilter=None) -> np.ndarray:
    """One-shot FBP of the arrived groups, phase-retrieved again from their transmissions.

    Parameters
    ----------
    binned : ndarray, float32, shape (n_groups, rows_b, cols_b)
        Binned, flat-fielded, group-averaged transmissions (dimensionless), indexed like ``groups``.
    reference : ndarray, float32, shape (2, rows, cols)
        Mean dark and flat of the scan (counts): :class:`ProjectionPipeline` is built from them,
        though only its part after the transmission runs here.
    groups : dict
        ``group -> (angle_rad, weight, n_projections)`` of the arrived groups.
    scan : dict
        ``ScanInfo.to_dict()`` of the scan, with the δ/β to use (``delta_beta``).
    settings : dict
        ``ReconstructionSettings.to_dict()`` with the chain (``phase``) and ``filter`` to use.
    center_px : float
        Axis offset from ``(cols_b - 1) / 2``, binned pixels.
    shape : tuple of int
        ``(nz, n, n)`` of the volume (wider than the detector for a 360° offset-axis scan).
    backend : Backend
    final : bool
        As :func:`holostream.service.daemon.centre.recentred_volume`: True, weights of exactly
        the arrived angles; False, the scan's weights normalised as if every angle had arrived.
    filtered_out : ndarray or None
        float32 like ``binned``: receives the new ramp-filtered projections (in ``groups``
        order), so that later re-centring or re-filtering need not phase-retrieve again.
    refilter : callable or None
        Applied to the filtered projections after ``filtered_out`` took them, before the
        back-projection (the service stores ``ram-lak`` ones and re-filters: ``aims.py``).

    Returns
    -------
    ndarray, float32, of ``shape``: δ per voxel.
    """
    info = ScanInfo.from_dict(scan)
    recon = ReconstructionSettings.from_dict(settings)
    half = int(shape[-1]) != int(info.shape[1]) // recon.binning  # the whole disc of a 360° scan
    pipeline = build_pipeline(info, recon, SimpleNamespace(reference=reference), backend, half)
    keys = np.array(sorted(groups))
    angles = np.array([groups[g][0] for g in keys])
    weights = fbp.angle_weights(angles) if final else np.array([groups[g][1] for g in keys])
    volume = backend.xp.zeros(tuple(shape), dtype=np.float32)
    for start in range(0, keys.size, _BATCH_GROUPS):
        part = slice(start, start + _BATCH_GROUPS)
        filtered = pipeline.filtered_from_transmission(backend.asarray(binned[keys[part]]))
        if filtered_out is not None:
            filtered_out[start : start + len(keys[part])] = backend.to_host(filtered)
        if refilter is not None:
            filtered = refilter(filtered)
        fbp.backproject(volume, filtered, angles[part], weights[part], center_px, backend)
    return backend.to_host(volume) * np.float32(np.pi / weights.sum())
