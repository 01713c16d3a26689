"""Offline reconstruction of a whole scan: the loop behind ``holostream reconstruct``.

:func:`reconstruct_scan` is a plain function of a
:class:`~holostream.service.files.nxtomo.ScanData`, so tests and the live-vs-offline
comparison call exactly what the command runs. It uses the live workers' code path:
:class:`~holostream.workers.pipeline.ProjectionPipeline` per angle group (phase-retrieved
in batches) and :class:`~holostream.workers.fbp.VolumeAccumulator`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from holostream.shared.settings import ReconstructionSettings

_log = logging.getLogger(__name__)


#: Detector rows the centre estimate uses at most (evenly spread over the height): plenty of
#: evidence, and its memory stays bounded on large detectors.
COR_ROWS = 128


def estimate_centre(scan, backend, guess_px: float | None = None):
    """Estimate the rotation-axis offset of a scan from the few projections it needs.

    Parameters
    ----------
    scan : ScanData
    backend : Backend
        Where the flat-field runs (the estimate itself runs on the host).
    guess_px : float, optional
        Starting guess in unbinned pixels (e.g. NXtomo's ``estimated_cor_from_motor``).

    Returns
    -------
    CorEstimate
        Offset from ``(cols - 1) / 2`` in unbinned pixels, with its confidence.
    """
    from holostream.workers.cor import CorPlan
    from holostream.workers.flatfield import FlatField, average_frames

    plan = CorPlan(scan.angles_deg)
    rows = scan.frame_shape[0]
    step = max(1, rows // COR_ROWS)
    flat_after = None if scan.flats_after is None else average_frames(scan.flats_after, backend)
    flatfield = FlatField(average_frames(scan.darks, backend), average_frames(scan.flats, backend),
                          backend, flat_after=flat_after)
    frames = np.stack([
        backend.to_host(flatfield(scan.projections[i : i + 1], np.array([i]), scan.n_projections)[0, ::step])
        for i in plan.indices
    ])
    return plan.estimate(frames, guess_px=guess_px)


@dataclass
class ReconstructionPlan:
    """What a whole-scan reconstruction is set up with: the pipeline, the angle groups, the disc.

    ``center_px`` is the axis offset in binned pixels; ``half`` says whether the scan is a
    360° offset-axis one, reconstructed over the ``width``-voxel disc its rotation sweeps
    with ``column_weights`` (:mod:`holostream.workers.halfacq`; None otherwise).
    """

    pipeline: Any
    chain: tuple
    groups: list
    angles_deg: Any
    weights: Any
    center_px: float
    half: bool
    width: int
    column_weights: Any


def plan_reconstruction(scan, settings: ReconstructionSettings, delta_beta: float, cor_px: float, backend) -> ReconstructionPlan:
    """Set up the :class:`ProjectionPipeline` and angle groups of ``scan`` (whole volume or slices)."""
    from holostream.workers import halfacq, phasing
    from holostream.workers.flatfield import average_frames
    from holostream.workers.pipeline import ProjectionPipeline, plan_groups

    chain = phasing.default_chain(settings.phase, settings.iterations, delta_beta)
    flat_after = None if scan.flats_after is None else average_frames(scan.flats_after, backend)
    pipeline = ProjectionPipeline(
        scan.frame_shape, average_frames(scan.darks, backend), average_frames(scan.flats, backend),
        binning=settings.binning, chain=chain, filter=settings.filter,
        energy_kev=scan.energy_kev, distance_m=scan.distance_m, pixel_size_m=scan.pixel_size_m,
        delta_beta=delta_beta, backend=backend, pad_mode=settings.pad_mode,
        flat_after=flat_after, n_projections=scan.n_projections,
    )
    groups, group_angles_deg, weights = plan_groups(scan.n_projections, settings.angle_binning, scan.angles_deg)
    cols_b = pipeline.binned_shape[1]
    center = pipeline.center_px(cor_px)
    # 360° with the axis near an edge: the whole disc the rotation sweeps, each projection
    # weighted so that the rays seen twice count once (workers/halfacq.py)
    half = halfacq.is_half_acquisition(scan.angles_deg, cols_b, center) or bool(
        getattr(scan, "half_acquisition", False))
    width = halfacq.volume_width(cols_b, center) if half else cols_b
    column_weights = backend.asarray(halfacq.detector_weights(cols_b, center)) if half else None
    return ReconstructionPlan(pipeline, chain, groups, group_angles_deg, weights, center, half, width, column_weights)


def reconstruct_scan(scan, settings: ReconstructionSettings, delta_beta: float, cor_px: float | None,
                     backend, batch: int = 8,
                     progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, dict]:
    """Reconstruct a whole scan with the live pipeline; returns the δ volume and its attributes.

    Parameters
    ----------
    scan : ScanData
        Raw frames and geometry (:func:`holostream.service.files.nxtomo.read_scan`).
    settings : ReconstructionSettings
        Binning, angle binning, phase chain, iterations, filter, pad mode, ring filter.
    delta_beta : float
        δ/β of the sample.
    cor_px : float or None
        Rotation-axis offset from ``(cols - 1) / 2`` in unbinned pixels; None: estimate it
        (:func:`estimate_centre`, with ``scan.cor_guess_px`` as the starting guess).
    backend : Backend
        Where to compute (``settings.device`` is not consulted here).
    batch : int
        Angle groups phase-retrieved together.
    progress : callable, optional
        ``progress(groups_done, n_groups)`` after each batch.

    Returns
    -------
    volume : ndarray of shape (rows // b, n, n), float32
        δ per voxel, ``[z, y, x]``; ``n = cols // b``, or for a half-acquisition scan
        (:mod:`holostream.workers.halfacq`) the width of the disc its rotation sweeps.
    attrs : dict
        Every parameter of the reconstruction (for :func:`holostream.service.files.volume.write_volume`),
        with ``cor_px``, ``cor_source`` (``"given"`` or ``"estimated"``) and, when estimated,
        ``cor_confidence``.
    """
    from holostream.workers import phasing
    from holostream.workers.fbp import VolumeAccumulator
    from holostream.workers.ring import (STREAMING_RING_FILTERS, absorption, angle_half, remove_stripes,
                                         stripes_volume)

    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    cor_source, cor_confidence = "given", None
    if cor_px is None:
        estimate = estimate_centre(scan, backend, getattr(scan, "cor_guess_px", None))
        cor_px, cor_source, cor_confidence = estimate.cor_px, "estimated", estimate.confidence
        (_log.info if estimate.trusted else _log.warning)(
            "%s: centre of rotation estimated at %+.2f px from the middle, confidence %.2f%s",
            scan.source, cor_px, cor_confidence, "" if estimate.trusted else " (LOW: do not trust it)")
    plan = plan_reconstruction(scan, settings, delta_beta, cor_px, backend)
    pipeline, groups, group_angles_deg, weights = plan.pipeline, plan.groups, plan.angles_deg, plan.weights
    rows_b, cols_b = pipeline.binned_shape
    center, half, n, column_weights = plan.center_px, plan.half, plan.width, plan.column_weights
    # every angle is known up front, so nothing is reweighted: keep no filtered projections
    accumulator = VolumeAccumulator((rows_b, n, n), center, backend, keep_filtered=False)
    def deltas(chunk, first: int):
        transmissions = pipeline.transmissions([scan.projections[g.start : g.stop] for g in chunk],
                                               [np.arange(g.start, g.stop) for g in chunk])
        if absorption_sum is not None:  # the live daemon's running means, in the same order
            for j in range(len(chunk)):
                half = angle_half(math.radians(group_angles_deg[first + j]))
                absorption_sum[half] += weights[first + j] * absorption(transmissions[j], backend)
                absorption_weights[half] += weights[first + j]
        return pipeline.delta_from_transmission(transmissions)

    # The ring filter works on whole sinograms: then every δ projection is kept (one float32
    # binned frame per angle group) until all are in, and back-projected after it.
    whole = None
    streaming = settings.ring_filter in STREAMING_RING_FILTERS
    absorption_sum = backend.xp.zeros((2, rows_b, cols_b), dtype=backend.xp.float64) if streaming else None
    absorption_weights = np.zeros(2)
    if settings.ring_filter != "none" and not streaming:
        whole = backend.xp.empty((len(groups), rows_b, cols_b), dtype=backend.xp.float32)
        for start in range(0, len(groups), batch):
            whole[start : start + batch] = deltas(groups[start : start + batch], start)
        whole = remove_stripes(settings.ring_filter, whole, backend)
    for start in range(0, len(groups), batch):
        chunk = groups[start : start + batch]
        delta = deltas(chunk, start) if whole is None else whole[start : start + batch]
        filtered = pipeline.ramp(delta if column_weights is None else delta * column_weights)
        for j in range(len(chunk)):
            g = start + j
            accumulator.add(g, filtered[j], math.radians(group_angles_deg[g]), weights[g])
        if progress is not None:
            progress(start + len(chunk), len(groups))
    volume = accumulator.volume()
    ring_filter = settings.ring_filter
    if absorption_sum is not None and absorption_weights.min() <= 0.0:
        _log.warning("%s: ring filter %s not applied: its angles do not reach both sides of 90° "
                     "(mod 180°)", scan.source, ring_filter)
        absorption_sum, ring_filter = None, "none"
    if absorption_sum is not None:
        means = absorption_sum / backend.asarray(absorption_weights)[:, None, None]
        volume -= stripes_volume(pipeline, means, column_weights,
                                 np.radians(group_angles_deg), weights, center, volume.shape, backend)
    volume = backend.to_host(volume).astype(np.float32, copy=False)
    attrs = {
        "voxel_size_m": pipeline.voxel_size_m,
        "binning": settings.binning,
        "angle_binning": settings.angle_binning,
        "phase": settings.phase,
        "phase_chain": phasing.format_chain(plan.chain) if plan.chain else "none",
        "iterations": settings.iterations,
        "filter": settings.filter,
        "pad_mode": settings.pad_mode,
        "ring_filter": ring_filter,
        "half_acquisition": half,
        "cor_px": float(cor_px),
        "cor_source": cor_source,
        "cor_confidence": cor_confidence,
        "center_px_binned": center,
        "delta_beta": float(delta_beta),
        "energy_kev": scan.energy_kev,
        "distance_m": scan.distance_m,
        "pixel_size_m": scan.pixel_size_m,
        "magnification": float(getattr(scan, "magnification", 1.0)),
        "n_projections_used": scan.n_projections,
        "n_projections_expected": scan.n_projections,
        "n_angle_groups": len(groups),
        "device": backend.name,
        "source": scan.source,
    }
    return volume, attrs
