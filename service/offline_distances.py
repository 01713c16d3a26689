"""Offline reconstruction of a scan recorded at several distances (one NXtomo per distance).

:func:`reconstruct_distances` is the multi-distance counterpart of
:func:`holostream.service.offline.reconstruct_scan`, a plain function of the
:class:`~holostream.service.files.nxtomo.ScanData` of each distance (the first is the
reference), so tests and the live-vs-offline comparison call what ``holostream
reconstruct a_1.nx a_2.nx ...`` runs. Per angle group it runs
:class:`~holostream.workers.multipipeline.MultiDistancePipeline`; offsets not given are
measured once, on the first :data:`SHIFT_ANGLES` angle groups, the rule the live service
follows too, so both measure the same offsets.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from holostream.shared.settings import ReconstructionSettings

#: Angle groups the offsets of the distances are measured on (the first ones, in order).
SHIFT_ANGLES = 8


class DistanceMismatch(ValueError):
    """Scans that cannot be one multi-distance scan; ``str()`` says which and why."""


def check_distances(scans) -> None:
    """Raise :class:`DistanceMismatch` unless the scans share frame shape, energy and angles."""
    first = scans[0]
    if len(scans) < 2:
        raise DistanceMismatch("a multi-distance scan needs at least 2 scans")
    for i, scan in enumerate(scans[1:], start=1):
        where = f"{scan.source or f'scan {i}'}"
        if scan.frame_shape != first.frame_shape:
            raise DistanceMismatch(f"{where}: frames {scan.frame_shape} differ from the reference's "
                                   f"{first.frame_shape}")
        if not math.isclose(scan.energy_kev, first.energy_kev, rel_tol=1e-6):
            raise DistanceMismatch(f"{where}: energy {scan.energy_kev} keV differs from the "
                                   f"reference's {first.energy_kev} keV")
        angles, reference = np.asarray(scan.angles_deg), np.asarray(first.angles_deg)
        if angles.shape != reference.shape or not np.allclose(angles, reference, atol=1e-3):
            raise DistanceMismatch(f"{where}: its {angles.size} angles differ from the reference's "
                                   f"{reference.size}: every distance must share the same angles")


def make_pipeline(scans, settings: ReconstructionSettings, delta_beta: float, backend, shifts_px=None):
    """The :class:`MultiDistancePipeline` of the scans (darks and flats averaged per distance)."""
    from holostream.workers import phasing
    from holostream.workers.flatfield import average_frames
    from holostream.workers.multipipeline import MultiDistancePipeline

    chain = phasing.default_chain(settings.phase, settings.iterations, delta_beta)
    return MultiDistancePipeline(
        scans[0].frame_shape, [average_frames(s.darks, backend) for s in scans],
        [average_frames(s.flats, backend) for s in scans], binning=settings.binning, chain=chain,
        filter=settings.filter, energy_kev=scans[0].energy_kev,
        distances_m=[s.distance_m for s in scans], pixel_sizes_m=[s.pixel_size_m for s in scans],
        delta_beta=delta_beta, backend=backend, shifts_px=shifts_px, pad_mode=settings.pad_mode)


def reconstruct_distances(scans, settings: ReconstructionSettings, delta_beta: float, cor_px: float,
                          backend, shifts_px=None, batch: int = 8,
                          progress: Callable[[int, int], None] | None = None):
    """Reconstruct δ and β of a multi-distance scan; returns both volumes and their attributes.

    Parameters
    ----------
    scans : sequence of ScanData
        One per distance, the reference first; same frame shape, energy and angles.
    settings : ReconstructionSettings
        Binning, angle binning, phase chain (:mod:`holostream.workers.multiphasing`),
        iterations, filter, pad mode.
    delta_beta : float
        δ/β of the chain's start (the prior of ``ctf_mixed``).
    cor_px : float
        Rotation-axis offset from ``(cols - 1) / 2`` in unbinned reference pixels.
    backend : Backend
    shifts_px : array of shape (n_distances, 2), optional
        Known offsets ``(dv, du)`` in each distance's own pixels; None: measured.
    batch : int
        Angle groups phase-retrieved together.
    progress : callable, optional
        ``progress(groups_done, n_groups)``.

    Returns
    -------
    delta, beta : ndarray of shape (rows // b, cols // b, cols // b), float32
    attrs : dict
        Reconstruction parameters, with ``distances`` (JSON text of each entry's effective
        values and the shift used) and ``shifts_measured``.

    Raises
    ------
    DistanceMismatch
        Scans that do not belong together.
    """
    import json

    from holostream.workers import phasing
    from holostream.workers.fbp import VolumeAccumulator
    from holostream.workers.pipeline import plan_groups

    check_distances(scans)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    reference = scans[0]
    pipeline = make_pipeline(scans, settings, delta_beta, backend, shifts_px)
    groups, group_angles_deg, weights = plan_groups(
        reference.n_projections, settings.angle_binning, reference.angles_deg)

    def transmission(group):
        return pipeline.transmission([s.projections[group.start : group.stop] for s in scans])

    if shifts_px is None:
        pipeline.measure_shifts(backend.xp.stack([transmission(g) for g in groups[:SHIFT_ANGLES]]))
    rows_b, cols_b = pipeline.binned_shape
    center = binned_center(reference.frame_shape[1], settings.binning, cor_px)
    accumulators = [VolumeAccumulator((rows_b, cols_b, cols_b), center, backend, keep_filtered=False)
                    for _ in range(2)]
    for start in range(0, len(groups), batch):
        chunk = groups[start : start + batch]
        filtered = pipeline.filtered_from_transmission(backend.xp.stack([transmission(g) for g in chunk]))
        for accumulator, projections in zip(accumulators, filtered):
            for j in range(len(chunk)):
                g = start + j
                accumulator.add(g, projections[j], math.radians(group_angles_deg[g]), weights[g])
        if progress is not None:
            progress(start + len(chunk), len(groups))
    delta, beta = (backend.to_host(a.volume()).astype(np.float32, copy=False) for a in accumulators)
    entries = [{"distance_m": s.distance_m, "pixel_size_m": s.pixel_size_m,
                "shift_px": [round(float(v), 4) for v in shift], "source": s.source}
               for s, shift in zip(scans, pipeline.shifts_px)]
    chain = pipeline.phase.chain
    attrs = {
        "voxel_size_m": pipeline.voxel_size_m, "binning": settings.binning,
        "angle_binning": settings.angle_binning, "phase": phasing.format_chain(chain),
        "phase_setting": settings.phase, "iterations": settings.iterations,
        "filter": settings.filter, "pad_mode": settings.pad_mode, "cor_px": float(cor_px),
        "center_px_binned": center, "delta_beta": float(delta_beta),
        "energy_kev": reference.energy_kev, "distance_m": reference.distance_m,
        "pixel_size_m": reference.pixel_size_m, "n_distances": len(scans),
        "distances": json.dumps(entries), "shifts_measured": shifts_px is None,
        "n_projections_used": reference.n_projections,
        "n_projections_expected": reference.n_projections, "n_angle_groups": len(groups),
        "device": backend.name, "source": " ".join(s.source for s in scans),
    }
    return delta, beta, attrs


def binned_center(cols: int, binning: int, cor_px: float) -> float:
    """Axis offset in binned pixels for ``cor_px`` unbinned (as the single-distance pipeline)."""
    from holostream.workers.binning import binned_center_px

    return binned_center_px(cols, binning, cor_px)
