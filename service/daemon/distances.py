"""Live multi-distance scans: the daemon's side of docs/multi-distance.md, "Live".

What the ingest process, the workers and the daemon do differently for a scan recorded at
several propagation distances, kept here so that their own modules change by a few lines:

- ingest (:mod:`.scan` books) measures the distances' offsets once per scan,
  :func:`measure_shifts`, on the first groups, with the very code offline runs;
- a worker runs :class:`DistanceWork` on a group's frames of every distance
  (:class:`~holostream.workers.multipipeline.MultiDistancePipeline`) and back-projects
  δ into ``volume[w]`` and β into ``beta_volume[w]``;
- the daemon publishes β beside δ (``Daemon._send``: topic ``beta`` with δ's header and
  ``quantity: "beta"``, and ``/entry/data/beta`` in the saved file) and says in each
  header which distances were used with which offsets (:func:`header_fields`).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from holostream.shared.messages import ScanInfo
from holostream.shared.scanbuffers import ScanBuffers
from holostream.shared.settings import ReconstructionSettings
from holostream.workers import fbp
from holostream.workers.backend import Backend, get_backend
from holostream.workers.binning import binned_center_px
from holostream.workers.multipipeline import MultiDistancePipeline
from holostream.workers.phasing import default_chain

log = logging.getLogger(__name__)


def make_pipeline(info: ScanInfo, settings: ReconstructionSettings, reference: np.ndarray,
                  backend: Backend, shifts_px=None) -> MultiDistancePipeline:
    """The :class:`MultiDistancePipeline` of a live scan, as offline's ``make_pipeline`` builds it.

    Parameters
    ----------
    info : ScanInfo
        A scan with ``distances`` (entry 0 the reference).
    settings : ReconstructionSettings
    reference : ndarray of shape (n_distances, 2, rows, cols), float32
        Dark and flat mean of each distance (the scan's shared ``reference``).
    backend : Backend
    shifts_px : array of shape (n_distances, 2), optional
        Offsets in each distance's own unbinned pixels; None: zero.
    """
    chain = default_chain(settings.phase, settings.iterations, info.delta_beta)
    return MultiDistancePipeline(
        tuple(info.shape), [backend.asarray(r[0]) for r in reference], [backend.asarray(r[1]) for r in reference],
        binning=settings.binning, chain=chain, filter=settings.filter, energy_kev=info.energy_kev,
        distances_m=[e.distance_m for e in info.distances], pixel_sizes_m=[e.pixel_size_m for e in info.distances],
        delta_beta=info.delta_beta, backend=backend, shifts_px=shifts_px, pad_mode=settings.pad_mode)


def measure_shifts(scan, group_slots: list[list[list[int]]]) -> np.ndarray:
    """The offsets of an open scan's distances, measured on some of its complete groups.

    Runs in the ingest process, once per scan, on the CPU: the same
    :meth:`MultiDistancePipeline.measure_shifts` as offline on the same first groups, so
    both reconstruct with the same offsets. Its cost (a Paganin retrieval and a sub-pixel
    cross-correlation per distance and group) holds ingest back for that moment; the
    frames wait in the ZeroMQ queues, none is lost.

    Parameters
    ----------
    scan : OpenScan
        Reference complete; the groups' frames in its ring.
    group_slots : list over groups of list over distances of list of int
        Ring slots of each group's frames at each distance.

    Returns
    -------
    ndarray of shape (n_distances, 2), float64
        ``(dv, du)`` in each distance's own unbinned pixels.
    """
    start = time.perf_counter()
    backend = get_backend("cpu", threads=1)
    pipeline = make_pipeline(scan.info, scan.settings, scan.buffers.reference, backend)
    ring = scan.buffers.ring
    stack = np.stack([pipeline.transmission([ring[slots] for slots in per_distance])
                      for per_distance in group_slots])
    shifts = pipeline.measure_shifts(stack)
    log.info("scan %s: offsets measured on %d groups in %.2f s", scan.info.scan_id, len(group_slots),
             time.perf_counter() - start)
    return shifts


class DistanceWork:
    """A worker's multi-distance part of one scan: its pipeline and its β accumulator.

    Parameters
    ----------
    scan : ScanInfo
    settings : ReconstructionSettings
    buffers : ScanBuffers
        The scan's shared memory (``reference`` per distance, ``beta_volume``, ...).
    backend : Backend
    worker_id : int
        Index ``w`` of the partial volumes ``volume[w]`` and ``beta_volume[w]``.
    shifts_px : array of shape (n_distances, 2)
        The offsets ingest dispatched the scan with (own unbinned pixels).
    """

    def __init__(self, scan: ScanInfo, settings: ReconstructionSettings, buffers: ScanBuffers,
                 backend: Backend, worker_id: int, shifts_px):
        self.backend = backend
        self.buffers = buffers
        self.pipeline = make_pipeline(scan, settings, buffers.reference, backend, shifts_px)
        self.beta_shared = buffers.arrays["beta_volume"][worker_id]
        self.beta = backend.asarray(self.beta_shared)

    def center_px(self, cor_px: float) -> float:
        """Axis offset in binned reference pixels for ``cor_px`` unbinned."""
        return binned_center_px(self.pipeline.raw_shape[1], self.pipeline.binning, cor_px)

    def run(self, task: dict[str, Any], accumulator, center_px: float) -> dict[str, float]:
        """One group of every distance into ``sinogram``/``beta_sinogram`` and both accumulators.

        Returns the seconds of its stages (the metrics' names).
        """
        ring = self.buffers.ring
        t0 = time.perf_counter()
        raws = [self.backend.asarray(ring[slots]) for slots in task["distance_slots"]]
        transmission = self.pipeline.transmission(raws)
        t1 = time.perf_counter()
        delta, beta = self.pipeline.filtered_from_transmission(transmission)
        g = task["group"]
        self.buffers.sinogram[g] = self.backend.to_host(delta)
        self.buffers.arrays["beta_sinogram"][g] = self.backend.to_host(beta)
        t2 = time.perf_counter()
        angle_rad = np.array([math.radians(float(task["angle_deg"]))])
        weight = np.array([float(task["weight"])])
        for volume, filtered in ((accumulator, delta), (self.beta, beta)):
            fbp.backproject(volume, filtered[None], angle_rad, weight, center_px, self.backend)
        return {"flatfield_binning": t1 - t0, "phase_filter": t2 - t1, "backprojection": time.perf_counter() - t2}

    def commit(self) -> None:
        """Copy a device-side β accumulator to shared memory (before ``weights`` moves)."""
        if self.beta is not self.beta_shared:
            self.beta_shared[...] = self.backend.to_host(self.beta)

    def close(self) -> None:
        """Drop every view of the shared memory (the buffers are closed by the caller)."""
        self.pipeline = self.beta = self.beta_shared = self.buffers = None


def header_fields(scan: dict[str, Any], buffers: ScanBuffers, complete: dict[str, Any] | None,
                  final: bool) -> dict[str, Any]:
    """What a multi-distance volume header adds: ``n_distances``, ``distances`` and what was left out.

    ``distances`` lists each entry's effective ``distance_m``, ``pixel_size_m``,
    ``magnification`` and the ``shift_px`` used (None until ingest has it). A final volume
    also says how many angles were left out because a distance was missing
    (``angles_left_out``) and which distances they lacked (``distances_missing``:
    ``{"<index>": angles}``).
    """
    info = ScanInfo.from_dict(scan)
    shifts = np.array(buffers.arrays["shifts"])
    entries = [{"distance_m": e.distance_m, "pixel_size_m": e.pixel_size_m, "magnification": e.magnification,
                "shift_px": None if np.isnan(shift).any() else [round(float(v), 4) for v in shift]}
               for e, shift in zip(info.distances, shifts)]
    fields = {"n_distances": len(entries), "distances": entries}
    if final and complete is not None:
        fields["angles_left_out"] = int(complete.get("angles_left_out", 0))
        fields["distances_missing"] = dict(complete.get("distances_missing", {}))
    return fields
