"""Split mode: what a dead reconstructor (or cluster dispatcher) held is reconstructed again.

A group's binned transmission stays in ``binned[group]`` for the whole scan (never reused
within it), so a reconstructor's death loses no data: only the work it had not committed.
Its ``handoff`` rows in shared memory outlive it and say, per group, how far it got:

- committed: in ``volume[0]``; its ``done`` may have died in the queue feeder, so ingest
  counts it done;
- taken, or never marked (still on the ``reconstruct`` queue, or killed between the queue
  and the mark: nothing tells these apart): sent again on the queue for the replacement;
- being added to ``volume[0]`` when it died: part of it may be there, so it cannot be added
  again: lost, with that reason (as is a group held by ``REDO_LIMIT`` reconstructors that
  all died: a group that kills the process must not kill every successor).

Sending a still-queued group again makes a duplicate. The process that reconstructs is the
arbiter (:class:`Claims`): it takes a group only if no earlier message of it came its way
and its row is neither being added nor committed; a dead predecessor's "taken" does not
count. One reconstructor lives at a time (the daemon starts the replacement after the
death), so the claim needs no lock. Ingest settles (:func:`settle`) as soon as it reads the
daemon's ``reconstructor_lost``; the replacement, a spawned process, is still importing
then, so the rows it reads are the dead one's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from holostream.shared.scanbuffers import (
    HANDOFF_ADDING, HANDOFF_COMMITTED, HANDOFF_TAKEN, HANDOFF_WAITING,
)

log = logging.getLogger(__name__)

REDO_LIMIT = 3  # a group held by this many dead reconstructors is lost, not sent again
_KEEP_SCANS = 4  # scans whose claims a reconstructor remembers (duplicates come soon after a death)


@dataclass
class Settlement:
    """What became of the groups in flight when the reconstructor died.

    Attributes
    ----------
    committed : list of int
        In ``volume[0]``: the caller counts them done.
    again : list of dict
        ``reconstruct`` messages to send now (binned groups it held or that may still be queued).
    held : list of int
        Of ``again``, the groups the dead one had marked taken (the rest were never marked).
    later : list of int
        Groups whose worker has not said ``binned`` yet: sent again when it does
        (:func:`again_when_binned`), should the dead one have taken them from the queue.
    lost : dict of int to str
        Groups given up (dropped from the scan here), with the reason.
    """

    committed: list[int] = field(default_factory=list)
    again: list[dict[str, Any]] = field(default_factory=list)
    held: list[int] = field(default_factory=list)
    later: list[int] = field(default_factory=list)
    lost: dict[int, str] = field(default_factory=dict)


def reconstruct_message(flight: Any, group: int) -> dict[str, Any]:
    """The ``reconstruct`` queue message of a binned group, as its worker sent it, marked ``redone``.

    Parameters
    ----------
    flight : holostream.service.daemon.scan.InFlight
        The group in flight (its task, and the worker that binned it).
    group : int
    """
    task = flight.task
    return {**{k: v for k, v in task.items() if k not in ("slots", "indices")}, "type": "group",
            "group": group, "prefix": task["buffers"]["prefix"], "n_projections": len(flight.indices),
            "worker": flight.binned_by, "redone": True}


def _send_again(flight: Any, group: int, now: float) -> dict[str, Any]:
    # queued afresh: the lost-group clock (OpenScan.reclaim_lost) starts again from now, and
    # the dead one's "taken" in the row no longer says that a live process holds it
    flight.requeued, flight.requeue, flight.picked_at, flight.binned_at = True, False, None, now
    return reconstruct_message(flight, group)


def settle(scan: Any, now: float) -> Settlement:
    """Settle the open scan's groups in flight after the reconstructor died.

    Lost groups are dropped from ``scan.in_flight``; the others stay in flight.

    Parameters
    ----------
    scan : holostream.service.daemon.scan.OpenScan
    now : float
        ``time.monotonic()``.
    """
    result = Settlement()
    if "handoff" not in scan.buffers.arrays:  # pool mode: nothing is handed over
        return result
    state = np.array(scan.buffers.handoff[:, 0])  # a snapshot: the dead one writes no more
    for g, flight in list(scan.in_flight.items()):
        row = state[g]
        if row == HANDOFF_COMMITTED:
            result.committed.append(g)
            continue
        if row == HANDOFF_ADDING:
            result.lost[g] = "the reconstructor died while adding it to the volume (part of it may be there)"
            continue
        if row == HANDOFF_TAKEN:
            # (a group sent again and not yet taken by the successor still shows the
            # earlier death's mark: counted again, hence a limit of a few deaths, not one)
            flight.reconstructor_losses += 1
            if flight.reconstructor_losses >= REDO_LIMIT:
                result.lost[g] = f"held by {flight.reconstructor_losses} reconstructors that died"
                continue
        elif row != HANDOFF_WAITING:
            result.lost[g] = f"its handoff row has an unknown state {row!r}"
            continue
        if flight.stage == "binned":
            result.again.append(_send_again(flight, g, now))
            if row == HANDOFF_TAKEN:
                result.held.append(g)
        else:  # still in a worker, or its "binned" is on the way: the queue may hold it
            flight.requeue = True
            result.later.append(g)
    for g in result.lost:
        scan.drop(g)
    return result


def again_when_binned(scan: Any, group: int, now: float) -> dict[str, Any] | None:
    """The message to send again for ``group``, just binned, if a reconstructor died meanwhile."""
    flight = scan.in_flight.get(group)
    if flight is None or not flight.requeue or flight.stage != "binned":
        return None
    return _send_again(flight, group, now)


def spans(groups: list[int]) -> str:
    """``[3, 4, 5, 9]`` as ``"3-5, 9"``: a backlog of thousands of groups in one short log line."""
    runs: list[list[int]] = []
    for g in sorted(groups):
        if runs and g == runs[-1][1] + 1:
            runs[-1][1] = g
        else:
            runs.append([g, g])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs) or "none"


class Claims:
    """The groups one reconstructing process has taken: the arbiter of duplicate messages.

    Both the reconstructor and the cluster dispatcher claim each group as it leaves the
    ``reconstruct`` queue; a group is back-projected only by its first claim.
    """

    def __init__(self) -> None:
        self.taken: dict[str, set[int]] = {}  # buffer prefix -> groups, oldest scan first

    def has(self, key: str, group: int) -> bool:
        """Whether this process took ``group`` of the scan ``key`` already."""
        return group in self.taken.get(key, ())

    def claim(self, key: str, handoff: np.ndarray, group: int) -> bool:
        """Mark ``group`` taken in ``handoff`` and return True, or False for a duplicate.

        A duplicate: this process took the group already, or its row says it is being added
        to the volume or is there (by a predecessor).

        Parameters
        ----------
        key : str
            The scan's buffer prefix.
        handoff : ndarray of shape (n_groups, 5), float64
            The scan's ``handoff`` part.
        group : int
        """
        if key not in self.taken:
            self.taken[key] = set()
            if len(self.taken) > _KEEP_SCANS:
                del self.taken[next(iter(self.taken))]
        taken = self.taken[key]
        if group in taken or handoff[group, 0] in (HANDOFF_ADDING, HANDOFF_COMMITTED):
            log.debug("group %d of %s is a duplicate: dropped", group, key)
            return False
        handoff[group, 0] = HANDOFF_TAKEN
        taken.add(group)
        return True
