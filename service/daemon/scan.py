"""Book-keeping of the scan being received: ring slots, dark/flat sums, angle groups, completion.

Pure state, no sockets and no queues: the ingest process (:mod:`.ingest`) feeds it the
validated frames and the workers' reports and sends on what it returns, the group tasks for
the workers and the events for the daemon. A scan's life:

- projections are copied into free ring slots; darks and flats are summed into their means
  (``reference``) and need no slot;
- an angle group is *ready* when all its projections are in the ring; it is dispatched (a
  task is returned) once the reference is complete;
- a dispatched group is *in flight* until the worker's ``done`` (or, in split mode, the
  reconstructor's) or ``failed`` — or until it is taken as lost (its worker or the
  reconstructor died holding it);
- ``end()`` dispatches the partial groups; the scan is *finished* once it has ended (or
  was aborted) and nothing is in flight, and :meth:`OpenScan.completion` is its
  ``scan_complete`` event.

A multi-distance scan (``info.distances``; docs/multi-distance.md, "Live") keeps the same
books with one key per (distance, index): a frame's key is ``index + distance_index ·
count``, darks and flats are summed per distance, a group is ready when every member has
arrived at every distance, and nothing is dispatched before the distances' offsets are
known (given, or measured by ``measure_shifts`` on the first groups). An angle that lacks
a distance at the end is left out and reported (``left_out``).
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from holostream.service.daemon.halfscan import centre_deferred
from holostream.service.daemon.offsets import DistanceBooks
from holostream.shared.distances import given_shifts
from holostream.shared.messages import Frame, ProtocolError, ScanInfo
from holostream.shared.scanbuffers import HANDOFF_TAKEN, ScanBuffers
from holostream.shared.settings import ReconstructionSettings
from holostream.workers.binning import binned_center_px
from holostream.workers.halfacq import detector_weights, is_half_acquisition, volume_width

log = logging.getLogger(__name__)


LOST_AFTER_S = 60.0  # least time a group in a worker's hands may take before it counts as lost
OVERTAKEN_S = 1.0  # split mode: a group queued this much later was taken first, so this one was too


@dataclass
class InFlight:
    """A group sent to the workers: its slots stay taken until its ``done`` (or ``binned``)."""

    slots: list[int]
    indices: list[int]
    order: int  # dispatch order; tasks leave the queue in this order
    picked_at: float | None = None  # when it was surely in a worker's (reconstructor's) hands
    stage: str = "raw"  # raw (in a worker) or binned (queued for or held by the reconstructor)
    binned_at: float = 0.0  # when the worker handed it to the reconstructor (split mode)
    worker_pid: int | None = None  # the worker that said it took it (raw stage)
    task: dict[str, Any] | None = None  # what was sent, to send it again if that worker dies
    binned_by: int | None = None  # split mode: the worker id that binned it
    # split mode, after a reconstructor died (daemon/handoff.py): sent again at "binned";
    # sent again already (its row's "taken" may be the dead one's); dead ones that held it
    requeue: bool = False
    requeued: bool = False
    reconstructor_losses: int = 0


class OpenScan(DistanceBooks):
    """The scan being received: which projections are where, which groups are done.

    Parameters
    ----------
    seq : int
        The daemon's running number of the scan.
    info : ScanInfo
        The validated ``scan_start``.
    settings : ReconstructionSettings
        The settings this scan runs with (server settings + its overrides).
    buffers : ScanBuffers
        The scan's shared memory (``ring``, ``reference``, ...).
    groups : list of range
        Projection indices of each angle group.
    group_angles_deg, weights : sequence of float
        Planned mean angle (degrees) and FBP weight (radians) of each group.
    """

    def __init__(self, seq: int, info: ScanInfo, settings: ReconstructionSettings,
                 buffers: ScanBuffers, groups: list[range], group_angles_deg, weights):
        self.incomplete: str | None = None  # why it ended without scan_end (a stall), if so
        self.seq, self.info, self.settings, self.buffers = seq, info, settings, buffers
        self.groups = groups
        self.group_angles_deg = [float(a) for a in group_angles_deg]
        self.weights = [float(w) for w in weights]
        self.group_of = np.empty(info.n_projections, dtype=np.int64)
        for g, members in enumerate(groups):
            self.group_of[list(members)] = g
        self.n_distances = len(info.distances) or 1
        self.missing = [len(members) * self.n_distances for members in groups]
        self.free_slots = list(range(self.n_slots - 1, -1, -1))
        self.slot_of: dict[int, int] = {}  # projection key (index + distance · n) -> slot, until dispatched
        self.angle_of: dict[int, float] = {}
        self.sums = {kind: np.zeros((self.n_distances, *info.shape), np.float64) for kind in ("dark", "flat")}
        self.seen: dict[str, set[int]] = {"dark": set(), "flat": set(), "projection": set()}  # keys
        # several distances: offsets (n_distances, 2) in each distance's own pixels; None until
        # measured. measure_shifts(scan, groups) is set by whoever opens the scan.
        given = given_shifts(info.distances)
        self.shifts_px = np.zeros((1, 2)) if not info.distances else None if given is None else np.array(given)
        self.measure_shifts = None
        self.measuring: Future | None = None  # the offsets being measured (service/daemon/offsets.py)
        self.partials_sent = False  # end(): the partial groups were dispatched
        if self.n_distances > 1:  # what the daemon's headers say until they are known: NaN
            buffers.arrays["shifts"][...] = np.nan if self.shifts_px is None else self.shifts_px
        self.left_out: dict[int, list[int]] = {}  # angle index -> distances it lacked at the end
        self.reference_ready = False
        self.ready: list[int] = []  # complete groups waiting for the reference
        self.in_flight: dict[int, InFlight] = {}
        self.dispatched = 0
        self.groups_done: list[int] = []
        self.reconstructed_upto = 0.0  # split mode: latest binned_at of a group the reconstructor took
        self.n_projections_used = 0
        self.ending = False
        self.last_frame_time: float | None = None  # time.time() of the last frame (metrics' latency)
        self.aborted = False
        self.error: str | None = None
        # What every task repeats, built once. Workers need the scan's geometry, not a list
        # of 100 000 angles in every task.
        # (a 360° offset-axis scan is recognised from its angles here, once, and says so)
        self.task_base = {"type": "group", "scan_seq": seq,
                          "scan": {k: v for k, v in info.to_dict().items() if k != "angles_deg"},
                          "settings": settings.to_dict(), "buffers": buffers.description(),
                          "half_acquisition": half_acquisition(info, settings.binning) is not None,
                          "centre_deferred": centre_deferred(info)}

    # ---- state -------------------------------------------------------------------------
    @property
    def n_slots(self) -> int:
        """Slots of the ring."""
        return self.buffers.ring.shape[0]

    @property
    def closing(self) -> bool:
        """Ended or aborted: no more frames are taken."""
        return self.ending or self.aborted

    @property
    def finished(self) -> bool:
        """Ended or aborted, with nothing left in flight: ready for ``scan_complete``."""
        if not self.closing or self.in_flight or (self.measuring is not None and not self.measuring.done()):
            return False
        return self.aborted or self.partials_sent

    def holds_slots(self) -> bool:
        """Whether a group in flight still holds ring slots (so a ``done`` will free some)."""
        return any(task.slots for task in self.in_flight.values())

    def ring_fill(self) -> float:
        """Fraction of the ring's slots taken."""
        return (self.n_slots - len(self.free_slots)) / self.n_slots

    # ---- frames ------------------------------------------------------------------------
    def key(self, frame: Frame) -> int:
        """The frame's book-keeping key: its index, offset by its distance's share."""
        return frame.index + (frame.distance_index or 0) * self.info.count_of(frame.kind)

    def counts(self, kind: str) -> np.ndarray:
        """Frames of ``kind`` arrived at each distance, shape (n_distances,)."""
        count = max(self.info.count_of(kind), 1)
        return np.bincount([k // count for k in self.seen[kind]], minlength=self.n_distances)

    def complete_reference(self, partial: bool = False) -> bool:
        """Write dark and flat means into ``reference`` once all (or, ``partial``, any) arrived.

        With several distances, every distance needs its own (at least one flat each).
        """
        counts = {kind: self.counts(kind) for kind in ("dark", "flat")}
        if not partial and (counts["dark"].min() < self.info.n_darks or counts["flat"].min() < self.info.n_flats):
            return False
        if self.info.n_flats > 0 and counts["flat"].min() == 0:
            return False
        for d in range(self.n_distances):
            dark = self.sums["dark"][d] / counts["dark"][d] if counts["dark"][d] else 0.0
            flat = self.sums["flat"][d] / counts["flat"][d] if counts["flat"][d] else 1.0
            reference = self.buffers.reference if self.n_distances == 1 else self.buffers.reference[d]
            reference[0] = dark
            reference[1] = flat
        self.reference_ready = True
        return True

    def check_new(self, frame: Frame) -> None:
        """Raise :class:`ProtocolError` for a frame this scan cannot take (shape, dtype, duplicate)."""
        self.info.check_frame(frame)
        if self.key(frame) in self.seen[frame.kind]:
            where = f" at distance {frame.distance_index}" if frame.distance_index is not None else ""
            raise ProtocolError(f"duplicate {frame.kind} index {frame.index}{where}", "duplicate")

    def add_reference(self, frame: Frame) -> list[dict[str, Any]]:
        """Add a dark or flat to its sum; returns the tasks it releases (reference now complete)."""
        self.seen[frame.kind].add(self.key(frame))
        self.sums[frame.kind][frame.distance_index or 0] += frame.array()
        if not self.reference_ready and self.complete_reference():
            return self.take_ready()
        return []

    def add_projection(self, frame: Frame) -> list[dict[str, Any]] | None:
        """Copy a projection into a free slot; returns the tasks it completes, None without a slot."""
        if not self.free_slots:
            return None
        slot = self.free_slots.pop()
        np.copyto(self.buffers.ring[slot], frame.array())  # the one copy, ZeroMQ buffer -> ring
        key = self.key(frame)
        self.seen["projection"].add(key)
        self.slot_of[key] = slot
        self.angle_of[frame.index] = self.info.angle_of(frame.index, frame.angle_deg)
        g = int(self.group_of[frame.index])
        self.missing[g] -= 1
        if self.missing[g] == 0:
            self.ready.append(g)
            return self.take_ready()
        return []

    # ---- dispatch ----------------------------------------------------------------------
    def task(self, g: int) -> dict[str, Any] | None:
        """Put group ``g`` (what of it is in the ring) in flight; returns its worker task.

        Only the angles present at every distance go in; the others are left out (their
        slots freed, the distances they lacked in ``left_out``). None when none is left.
        """
        n, nd = self.info.n_projections, self.n_distances
        indices = [i for i in self.groups[g] if all(i + d * n in self.slot_of for d in range(nd))]
        lacking = [i for i in self.groups[g] if i not in indices and any(i + d * n in self.slot_of for d in range(nd))]
        for i in lacking:
            self.left_out[i] = [d for d in range(nd) if i + d * n not in self.slot_of]
            self.free_slots.extend(self.slot_of.pop(i + d * n) for d in range(nd) if i + d * n in self.slot_of)
        if not indices:
            return None
        per_distance = [[self.slot_of.pop(i + d * n) for i in indices] for d in range(nd)]
        slots = [slot for part in per_distance for slot in part]
        if self.info.angles_known and len(indices) == len(self.groups[g]):
            angle = self.group_angles_deg[g]
        else:  # angles from the frames, or a partial group
            angle = float(np.mean([self.angle_of[i] for i in indices]))
        task = {**self.task_base, "group": g, "slots": slots, "indices": indices,
                "angle_deg": angle, "weight": self.weights[g]}
        if nd > 1:  # the worker's frames per distance, and the offsets they are registered with
            task.update(distance_slots=per_distance, shifts_px=self.shifts_px.tolist())
        self.in_flight[g] = InFlight(slots, indices, self.dispatched, task=task)
        self.dispatched += 1
        return task

    def redo(self, dead_pids: set[int]) -> list[dict[str, Any]]:
        """Tasks to send again: the raw-stage groups a now dead worker had taken.

        Their frames are still in the ring (slots are freed only by ``done``), so any
        worker can redo them at once; the sinogram row is simply written again.
        """
        again = [g for g, t in self.in_flight.items() if t.stage == "raw" and t.worker_pid in dead_pids]
        for g in again:
            flight = self.in_flight[g]
            flight.worker_pid, flight.picked_at, flight.order = None, None, self.dispatched
            self.dispatched += 1
        return [self.in_flight[g].task for g in again]

    def take_ready(self) -> list[dict[str, Any]]:
        """Tasks of the complete groups, once the reference (and the offsets) are there."""
        if not self.reference_ready or not self.shifts_known():
            return []
        tasks = [self.task(g) for g in self.ready]
        self.ready.clear()
        return [t for t in tasks if t is not None]

    def end(self) -> list[dict[str, Any]]:
        """No more frames: the tasks of what is complete and of the partial groups.

        Without any flat the scan cannot be reconstructed: it is aborted, with ``error`` set.
        """
        self.ending = True
        if not self.reference_ready:
            log.warning("scan %s ended with %d of %d darks and %d of %d flats", self.info.scan_id,
                        len(self.seen["dark"]), self.info.n_darks, len(self.seen["flat"]), self.info.n_flats)
        if not self.reference_ready and not self.complete_reference(partial=True):
            self.error = "no flat arrived: the scan cannot be reconstructed"
            log.error("scan %s: %s", self.info.scan_id, self.error)
            self.abort(self.error)
            return []
        return self.poll()

    def poll(self) -> list[dict[str, Any]]:
        """Tasks that became possible meanwhile: the groups that waited for the offsets and,
        once the scan has ended, the partial groups (once, when the offsets are known)."""
        if self.aborted or not self.reference_ready or not self.shifts_known():
            return []
        tasks = self.take_ready()
        if self.ending and not self.partials_sent:
            self.partials_sent = True
            partial = sorted({int(self.group_of[k % self.info.n_projections]) for k in self.slot_of})
            tasks += [t for t in (self.task(g) for g in partial) if t is not None]
            if self.left_out:
                log.warning("scan %s: %d angle(s) left out, a distance missing: %s", self.info.scan_id,
                            len(self.left_out), self.left_out_summary())
        return tasks

    def abort(self, why: str) -> None:
        """Drop the scan: held frames are discarded, groups in flight are waited for."""
        log.info("scan %s aborted: %s", self.info.scan_id, why)
        self.aborted = True
        self.free_slots.extend(self.slot_of.values())
        self.slot_of.clear()
        self.ready.clear()

    def completion(self) -> dict[str, Any]:
        """The ``scan_complete`` event of a finished scan."""
        return {"type": "scan_complete", "scan_seq": self.seq, "scan_id": self.info.scan_id,
                "groups_arrived": sorted(self.groups_done), "n_projections_used": self.n_projections_used,
                "aborted": self.aborted, "error": self.error, "group_angles_deg": self.group_angles_deg,
                "last_frame_time": self.last_frame_time, "incomplete": self.incomplete,
                **({"angles_left_out": len(self.left_out), "distances_missing": self.left_out_summary()}
                   if self.n_distances > 1 else {})}

    # ---- results -----------------------------------------------------------------------
    def group_result(self, msg: dict[str, Any], now: float) -> bool:
        """Take a worker's ``done``/``failed`` (or split mode's ``binned``) of a group in flight.

        Frees the group's slots; ``binned`` keeps the group in flight for the
        reconstructor. Returns True when the group is now done (reconstructed).
        """
        task = self.in_flight[msg["group"]]
        self.free_slots.extend(task.slots)
        task.slots = []
        if task.stage == "raw":
            for other in self.in_flight.values():  # sent earlier, so already taken by a worker
                if other.stage == "raw" and other.order < task.order and other.picked_at is None:
                    other.picked_at = now
        if msg.get("type") == "binned":
            task.stage, task.picked_at, task.binned_at = "binned", None, now
            task.binned_by = msg.get("worker")
            return False
        del self.in_flight[msg["group"]]
        if task.stage == "binned":
            self.reconstructed_upto = max(self.reconstructed_upto, task.binned_at)
        if msg.get("type") != "done":
            return False
        self.groups_done.append(msg["group"])
        self.n_projections_used += len(task.indices)
        return True

    def drop(self, g: int) -> None:
        """Give up group ``g`` (lost with its worker, or with reconstructors: ``daemon/handoff.py``)."""
        self.free_slots.extend(self.in_flight.pop(g).slots)

    def reclaim_lost(self, now: float, queue_empty: bool, limit_s: float) -> list[int]:
        """Drop the groups whose worker died, so that a scan never waits forever; returns them.

        A group counts as lost once it has been in a worker's hands (the task queue was seen
        empty, ``queue_empty``, or a group sent after it came back) for more than ``limit_s``
        seconds. In split mode, once in the reconstructor's: marked taken in ``handoff``, or
        overtaken by a group queued ``OVERTAKEN_S`` after it (taken but never marked: the
        reconstructor was killed in between; a group sent again after a reconstructor died
        counts from then, overtaken only). A backlog in the reconstruct queue is never lost
        by waiting.
        """
        handoff = self.buffers.arrays.get("handoff")
        lost = []
        for g, task in list(self.in_flight.items()):
            if task.picked_at is None and task.stage == "raw" and queue_empty:
                task.picked_at = now
            elif (task.picked_at is None and task.stage == "binned" and not task.requeued
                  and handoff[g, 0] == HANDOFF_TAKEN):
                task.picked_at = now  # in the reconstructor's hands
                self.reconstructed_upto = max(self.reconstructed_upto, task.binned_at)
            elif (task.picked_at is None and task.stage == "binned"
                  and task.binned_at + OVERTAKEN_S < self.reconstructed_upto):
                task.picked_at = now
            if task.picked_at is not None and now - task.picked_at > limit_s:
                log.error("scan %s group %d not done %.0f s after a worker took it: taken as lost",
                          self.info.scan_id, g, limit_s)
                self.drop(g)
                lost.append(g)
        return lost




def half_acquisition(scan, binning: int) -> tuple[int, np.ndarray] | None:
    """A live 360° offset-axis scan's volume width and detector weights, or None.

    Only a scan that gives its axis (``cor_px``) and announces its angles qualifies: the
    volume is allocated at ``scan_start``, before any estimate could be made.

    Parameters
    ----------
    scan : ScanInfo
    binning : int

    Returns
    -------
    (volume_width, weights) : (int, ndarray of shape (cols_b,), float32) or None
        See :mod:`holostream.workers.halfacq`.
    """
    angles = scan.all_angles_deg()
    if scan.cor_px is None or angles is None:
        return None
    cols = int(scan.shape[1])
    cols_b = cols // int(binning)
    center = binned_center_px(cols, int(binning), scan.cor_px)
    if not is_half_acquisition(angles, cols_b, center):
        return None
    return volume_width(cols_b, center), detector_weights(cols_b, center)
