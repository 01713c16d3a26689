"""The multi-distance part of a scan's books: the offsets of its distances, what was left out.

:class:`DistanceBooks` is mixed into :class:`~holostream.service.daemon.scan.OpenScan`
(docs/multi-distance.md, "Live"): it decides when the offsets are known (given on the wire,
or measured once on the first :data:`SHIFT_ANGLES` groups in a thread of the ingest
process) and summarises the angles left out because a distance was missing.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from holostream.service.offline_distances import SHIFT_ANGLES  # the same rule live and offline

__all__ = ["SHIFT_ANGLES", "DistanceBooks"]

log = logging.getLogger("holostream.service.daemon.scan")

#: Where a multi-distance scan's offsets are measured: one thread of the ingest process
#: (numpy and scipy's FFTs release the GIL), so the loop keeps receiving and reporting.
_OFFSETS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="holostream-offsets")


class DistanceBooks:
    """Offsets and left-out angles of an :class:`OpenScan` (its attributes, set there)."""

    def shifts_known(self) -> bool:
        """Whether the distances' offsets are known, measuring them once their groups are in.

        They are measured (``measure_shifts``) on the first ``SHIFT_ANGLES`` groups, as
        offline, once all of these are complete and the reference is there; at the end of a
        scan on those of them that are complete (none, or a failed measurement: zero
        offsets). The measurement runs in a thread of this process (``measuring``): the
        ingest loop goes on receiving frames and reporting, and :meth:`poll` dispatches
        what waited once it is done. Its frames stay in their slots meanwhile.
        """
        if self.shifts_px is not None:
            return True
        zeros = np.zeros((self.n_distances, 2))
        if self.measuring is not None:
            if not self.measuring.done():
                return False
            try:
                self.set_shifts(self.measuring.result())
            except Exception as exc:  # noqa: BLE001 - a failed measurement must not lose the scan
                log.error("scan %s: measuring the offsets failed (%s: %s); using zero offsets",
                          self.info.scan_id, type(exc).__name__, exc)
                self.set_shifts(zeros)
            return True
        first = range(min(SHIFT_ANGLES, len(self.groups)))
        complete = [g for g in first if g in self.ready]
        if len(complete) < len(first) and not self.ending:
            return False
        if not complete or self.measure_shifts is None:
            self.set_shifts(zeros)
            return True
        n = self.info.n_projections
        slots = [[[self.slot_of[i + d * n] for i in self.groups[g]] for d in range(self.n_distances)]
                 for g in complete]
        self.measuring = _OFFSETS.submit(self.measure_shifts, self, slots)
        return False

    def set_shifts(self, shifts_px) -> None:
        """Use ``shifts_px`` (n_distances, 2) for every task from now on; also in ``shifts``."""
        self.shifts_px = np.asarray(shifts_px, dtype=np.float64).reshape(self.n_distances, 2)
        self.buffers.arrays["shifts"][...] = self.shifts_px
        log.info("scan %s: offsets of its distances (own px) %s", self.info.scan_id,
                 np.round(self.shifts_px, 3).tolist())

    def left_out_summary(self) -> dict[str, int]:
        """``{"<distance index>": angles that lacked it}`` of the angles left out."""
        lacked = [d for missing in self.left_out.values() for d in missing]
        return {str(d): lacked.count(d) for d in sorted(set(lacked))}
