"""A new scan before its first frame: its angle groups, its shared memory, and whether it fits.

:func:`plan_scan` works out the groups and the buffer layout without side effects, so a
``scan_start`` that cannot be grouped or does not fit the memory budget is refused before
the open scan is touched; :func:`open_scan` then creates the shared memory and the
:class:`~holostream.service.daemon.scan.OpenScan` that keeps the books.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from holostream.service.daemon.halfscan import centre_deferred
from holostream.service.daemon.offsets import SHIFT_ANGLES
from holostream.service.daemon.scan import OpenScan, half_acquisition
from holostream.shared.distances import given_shifts
from holostream.shared.messages import ProtocolError, ScanInfo
from holostream.shared.scanbuffers import PartSpec, ScanBuffers, layout
from holostream.shared.settings import ReconstructionSettings
from holostream.workers.memory import DeviceBudget
from holostream.workers.phasing import default_chain
from holostream.workers.pipeline import plan_groups

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanPlan:
    """A scan's angle groups and shared-memory layout, worked out before anything is made."""

    groups: list
    group_angles_deg: np.ndarray
    weights: np.ndarray
    n_slots: int
    specs: dict[str, PartSpec]

    @property
    def nbytes(self) -> int:
        """Shared memory the scan will hold (bytes): ring, reference, sinogram, volumes."""
        return sum(spec.nbytes for spec in self.specs.values())

    def describe(self) -> str:
        """``"ring 0.52 GB, volumes 2.15 GB, ..."``: where the bytes go, for a refusal."""
        return ", ".join(f"{part} {spec.nbytes / 1e9:.3g} GB" for part, spec in self.specs.items()
                         if spec.nbytes >= 1e6)


def check_device(info: ScanInfo, settings: ReconstructionSettings, volume_width: int | None,
                 budget: DeviceBudget) -> None:
    """Refuse, before any frame, a scan whose chain the workers cannot parse or that cannot fit
    the device (``budget``; ``volume_width``: a 360° offset-axis scan's disc, else None).

    Raises
    ------
    ProtocolError
        ``settings`` (a step no worker knows: the settings check reads the chain's syntax
        only) or ``no_memory`` (each part of the estimate in GB).
    """
    try:
        steps = default_chain(settings.phase, settings.iterations, info.delta_beta)
    except ValueError as exc:
        raise ProtocolError(f"scan_start {info.scan_id}: phase chain: {exc}", "settings") from exc
    try:
        budget.check(info.shape, info.frame_nbytes // (info.shape[0] * info.shape[1]), settings.binning,
                     settings.angle_binning, volume_width, step_names=[step.name for step in steps],
                     n_distances=max(1, len(info.distances)))
    except MemoryError as exc:
        raise ProtocolError(f"scan_start {info.scan_id}: does not fit the device: {exc}", "no_memory") from exc


def plan_scan(info: ScanInfo, settings: ReconstructionSettings, ring_slots: int, n_partials: int,
              split: bool, keep_transmissions: bool = True) -> ScanPlan:
    """The groups and buffer layout of a scan (see :func:`open_scan`); no side effect.

    ``keep_transmissions`` (``[ingest] keep_transmissions``): in pool mode, a ``binned`` part
    too, for re-tuning δ/β and the phase chain; never for several distances nor a 360° scan
    whose centre is deferred (re-tunable in their centre only, ``volumes.py`` check_aim).

    Raises
    ------
    ProtocolError
        ``bad_field`` when the angles cannot be grouped.
    """
    angles = info.all_angles_deg()
    if angles is None:  # angles come with the frames; plan with uniform placeholders
        angles = np.linspace(0.0, 180.0, info.n_projections, endpoint=False)
    rows, cols = info.shape
    b = settings.binning
    try:
        groups, group_angles, weights = plan_groups(info.n_projections, settings.angle_binning, angles)
    except ValueError as exc:
        raise ProtocolError(f"scan_start {info.scan_id}: {exc}", "bad_field") from exc
    nd = len(info.distances) or 1
    # one slot per frame of each distance; at least one group's, or with offsets to measure
    # the first SHIFT_ANGLES groups' (nothing is dispatched before they are all in)
    least = max(len(g) for g in groups) * nd
    if info.distances and given_shifts(info.distances) is None:
        least = max(least, sum(len(g) for g in groups[:SHIFT_ANGLES]) * nd)
    n_slots = max(min(ring_slots, info.n_projections * nd), least)
    half = half_acquisition(info, b)  # a 360° offset-axis scan: the whole disc
    specs = layout(info.shape, info.dtype, n_slots, len(groups), (rows // b, cols // b), n_partials,
                   binned=split, volume_width=None if half is None else half[0], n_distances=nd,
                   transmissions=keep_transmissions and nd == 1 and not centre_deferred(info))
    return ScanPlan(groups, group_angles, weights, n_slots, specs)


def open_scan(seq: int, info: ScanInfo, settings: ReconstructionSettings, prefix: str,
              ring_slots: int, n_partials: int, split: bool, plan: ScanPlan | None = None,
              keep_transmissions: bool = True) -> OpenScan:
    """Plan the angle groups of a new scan (unless ``plan`` is given) and create its shared memory.

    Parameters
    ----------
    seq : int
        The scan's running number; its buffers are named ``<prefix>_<seq>_<part>``.
    info, settings
        The validated ``scan_start`` and the settings it runs with.
    prefix : str
        ``holostream_<daemon pid>``.
    ring_slots : int
        Frames the ring holds (``[ingest] ring_slots``; at least one angle group).
    n_partials : int
        Partial volumes (one per worker in pool mode, one in split mode).
    split : bool
        Split mode: also the ``binned`` and ``handoff`` parts.
    keep_transmissions : bool
        Pool mode: also ``binned`` (see :func:`plan_scan`).

    Raises
    ------
    ProtocolError
        ``bad_field`` when the angles cannot be grouped, ``no_memory`` when the shared
        memory cannot be had.
    """
    plan = plan or plan_scan(info, settings, ring_slots, n_partials, split, keep_transmissions)
    groups, group_angles, weights, n_slots = plan.groups, plan.group_angles_deg, plan.weights, plan.n_slots
    try:
        buffers = ScanBuffers.create(f"{prefix}_{seq}", plan.specs)
    except (MemoryError, FileExistsError) as exc:
        raise ProtocolError(f"scan_start {info.scan_id}: {exc}", "no_memory") from exc
    # Touch every ring page now: a first write into fresh shared memory costs ~20x a warm
    # copy (page allocation), which would otherwise halve the ingest rate.
    t0 = time.monotonic()
    buffers.ring.fill(0)
    log.debug("ring of %.2f GB populated in %.2f s", buffers.ring.nbytes / 1e9, time.monotonic() - t0)
    scan = OpenScan(seq, info, settings, buffers, groups, group_angles, weights)
    if info.distances:
        from holostream.service.daemon.distances import measure_shifts  # numpy/scipy only when needed
        scan.measure_shifts = measure_shifts
    log.info("scan %s open (seq %d): %d projections in %d groups, ring of %d slots, %.2f GB shared",
             info.scan_id, seq, info.n_projections, len(groups), n_slots, buffers.nbytes / 1e9)
    if info.n_darks == 0 and info.n_flats == 0:
        scan.complete_reference()
    return scan


