"""The ingest process: PULL socket → validation → one copy into the shared-memory ring → tasks.

One scan is open at a time. Projections are copied once from the ZeroMQ buffer into a free
ring slot; darks and flats are summed into their means (``reference``) and need no slot.
When every projection of an angle group is in the ring and the reference is complete, the
group goes to the workers as a ``tasks`` message; the workers' ``done`` frees its slots.
In split mode a group has two stages: the worker's ``binned`` frees its slots once the
transmission is in the ``binned`` part; the group counts as done at the reconstructor's
``done``, or as lost when the reconstructor died holding it (its ``handoff`` row says so).

Back-pressure: with no free slot the loop stops reading the socket and waits on ``done``,
so ZeroMQ's high-water marks hold the sender back. If nothing is in flight and the ring is
full of projections that cannot be dispatched yet (darks/flats missing, groups incomplete),
reading goes on, so that the missing frames can arrive, and projections that find no slot
are dropped and counted; with ``drop_policy = "drop"`` projections are dropped whenever the
ring is full instead of blocking the sender. Malformed messages are rejected, logged and
counted, never raised. Channel messages are documented in docs/architecture.md.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from holostream.service.daemon.channels import Channels
from holostream.shared.messages import (
    Frame,
    Limits,
    ProtocolError,
    ScanAbort,
    ScanEnd,
    ScanInfo,
    ScanStart,
    parse_message,
)
from holostream.shared.scanbuffers import (
    HANDOFF_COMMITTED,
    HANDOFF_TAKEN,
    ScanBuffers,
    layout,
)
from holostream.shared.settings import ReconstructionSettings, SettingsError
from holostream.workers.memory import DeviceBudget
from holostream.workers.pipeline import plan_groups

log = logging.getLogger(__name__)

POLL_MS = 50  # longest wait for the socket before looking at done/commands/stop again
BATCH = 64  # messages read in one go before looking at the queues
STATS_INTERVAL_S = 0.25
LOST_AFTER_S = 60.0  # least time a group in a worker's hands may take before it counts as lost
OVERTAKEN_S = 1.0  # split mode: a group queued this much later was taken first, so this one was too
LOGGED_REJECTIONS_PER_S = 10  # all are counted; this many per second are logged


@dataclass
class InFlight:
    """A group sent to the workers: its slots stay taken until its ``done`` (or ``binned``)."""

    slots: list[int]
    indices: list[int]
    order: int  # dispatch order; tasks leave the queue in this order
    picked_at: float | None = None  # when it was surely in a worker's (reconstructor's) hands
    stage: str = "raw"  # raw (in a worker) or binned (queued for or held by the reconstructor)
    binned_at: float = 0.0  # when the worker handed it to the reconstructor (split mode)


class OpenScan:
    """Book-keeping of the scan being received: ring slots, dark/flat sums, angle groups.

    ``groups`` are the projection indices of each angle group; ``group_angles_deg`` and
    ``weights`` their planned mean angles (degrees) and FBP weights (rad).
    """

    def __init__(self, seq: int, info: ScanInfo, settings: ReconstructionSettings,
                 buffers: ScanBuffers, groups: list[range], group_angles_deg, weights):
        self.seq, self.info, self.settings, self.buffers = seq, info, settings, buffers
        self.groups = groups
        self.group_angles_deg = [float(a) for a in group_angles_deg]
        self.weights = [float(w) for w in weights]
        self.group_of = np.empty(info.n_projections, dtype=np.int64)
        for g, members in enumerate(groups):
            self.group_of[list(members)] = g
        self.missing = [len(members) for members in groups]
        n_slots = buffers.ring.shape[0]
        self.free_slots = list(range(n_slots - 1, -1, -1))
        self.slot_of: dict[int, int] = {}  # projection index -> slot, until dispatched
        self.angle_of: dict[int, float] = {}
        self.sums = {"dark": np.zeros(info.shape, np.float64), "flat": np.zeros(info.shape, np.float64)}
        self.seen: dict[str, set[int]] = {"dark": set(), "flat": set(), "projection": set()}
        self.reference_ready = False
        self.ready: list[int] = []  # complete groups waiting for the reference
        self.in_flight: dict[int, InFlight] = {}
        self.dispatched = 0
        self.groups_done: list[int] = []
        self.reconstructed_upto = 0.0  # split mode: latest binned_at of a group the reconstructor took
        self.n_projections_used = 0
        self.ending = False
        self.aborted = False
        self.error: str | None = None
        # What every task repeats, built once. Workers need the scan's geometry, not a list
        # of 100 000 angles in every task.
        self.task_base = {"type": "group", "scan_seq": seq,
                          "scan": {k: v for k, v in info.to_dict().items() if k != "angles_deg"},
                          "settings": settings.to_dict(), "buffers": buffers.description()}

    @property
    def n_slots(self) -> int:
        """Slots of the ring."""
        return self.buffers.ring.shape[0]

    def complete_reference(self, partial: bool = False) -> bool:
        """Write dark and flat means into ``reference`` once all (or, ``partial``, any) arrived."""
        counts = {kind: len(self.seen[kind]) for kind in ("dark", "flat")}
        if not partial and (counts["dark"] < self.info.n_darks or counts["flat"] < self.info.n_flats):
            return False
        if self.info.n_flats > 0 and counts["flat"] == 0:
            return False
        dark = self.sums["dark"] / counts["dark"] if counts["dark"] else 0.0
        flat = self.sums["flat"] / counts["flat"] if counts["flat"] else 1.0
        self.buffers.reference[0] = dark
        self.buffers.reference[1] = flat
        self.reference_ready = True
        return True


class Ingest:
    """The state of the ingest loop; :func:`run_ingest` drives it."""

    def __init__(self, config, settings: ReconstructionSettings, n_workers: int, prefix: str,
                 channels: Channels, first_seq: int = 1, split: bool = False,
                 device_budget: DeviceBudget = DeviceBudget()):
        self.config = config
        self.device_budget = device_budget
        self.settings = settings
        self.split = split
        self.n_partials = 1 if split else n_workers  # the reconstructor owns the one volume
        self.prefix = prefix
        self.channels = channels
        self.limits = Limits(max_frame_bytes=config.max_frame_bytes)
        self.next_seq = first_seq
        self.scan: OpenScan | None = None
        self.pending_start: ScanInfo | None = None  # a new scan_start that ends the open scan
        self._pending_settings = settings
        self.closed: dict[int, ScanBuffers] = {}  # completed scans until the daemon releases them
        self.counts = Counter()
        self.rejected = Counter()
        self._rate_mark = (time.monotonic(), 0, 0)
        self._log_window = [time.monotonic(), 0]  # start, rejections in this second
        self.group_seconds = 0.0  # running mean of a group's time in a worker

    # ------------------------------------------------------------------ flow control
    def accepting(self) -> bool:
        """Whether the loop may read the socket now (False applies back-pressure)."""
        scan = self.scan
        if scan is None:
            return True
        if scan.ending or scan.aborted:
            return not scan.in_flight and self.pending_start is None
        if scan.free_slots or self.config.drop_policy == "drop":
            return True
        # stalled (no group in flight will free a slot): read on so missing darks/flats/members can come
        return not any(task.slots for task in scan.in_flight.values())

    def state(self) -> str:
        """``idle``, ``receiving``, ``blocked`` (back-pressure) or ``finishing``."""
        if self.scan is None:
            return "idle"
        if self.scan.ending or self.scan.aborted:
            return "finishing"
        return "receiving" if self.accepting() else "blocked"

    # ------------------------------------------------------------------ messages
    def handle(self, parts: list[Any]) -> None:
        """Validate and apply one multipart message; rejections are counted, not raised."""
        self.counts["received"] += 1
        self.counts["bytes"] += sum(len(p) for p in parts)
        try:
            message = parse_message(parts, self.limits)
            if isinstance(message, Frame):
                self._frame(message)
            elif isinstance(message, ScanStart):
                self._scan_start(message.scan)
            elif isinstance(message, ScanEnd):
                self._open_scan(message.scan_id)
                self.end_scan()
            elif isinstance(message, ScanAbort):
                self._open_scan(message.scan_id)
                self.abort_scan("scan_abort received")
        except ProtocolError as exc:
            self.reject(exc)
        except Exception as exc:  # noqa: BLE001 - a bug here must not end the ingest (and the scan)
            log.exception("message could not be handled")
            self.reject(ProtocolError(f"internal error: {type(exc).__name__}: {exc}", "internal_error"))

    def reject(self, exc: ProtocolError) -> None:
        """Log, count and report one rejected message."""
        self.rejected[exc.code] += 1
        now = time.monotonic()
        if now - self._log_window[0] >= 1.0:
            if self._log_window[1] > LOGGED_REJECTIONS_PER_S:
                log.warning("... %d more rejections not logged", self._log_window[1] - LOGGED_REJECTIONS_PER_S)
            self._log_window = [now, 0]
        self._log_window[1] += 1
        if self._log_window[1] <= LOGGED_REJECTIONS_PER_S:  # a storm must not flood the journal
            log.warning("rejected message: %s", exc.reason)
        self.channels.events.put({"type": "rejected", "reason": exc.reason, "code": exc.code})

    def _open_scan(self, scan_id: str) -> OpenScan:
        scan = self.scan
        if scan is None or scan.info.scan_id != scan_id:
            raise ProtocolError(f"unknown scan {scan_id!r}", "unknown_scan")
        if scan.ending or scan.aborted:
            raise ProtocolError(f"scan {scan_id!r} has already ended", "scan_ended")
        return scan

    def _scan_start(self, info: ScanInfo) -> None:
        # a `set` answered before this scan_start was sent must apply to it
        _drain(self.channels.commands, self.on_command)
        try:
            settings = self.settings.merged(info.reconstruction)
        except SettingsError as exc:
            raise ProtocolError(f"scan_start reconstruction: {exc}", "settings") from exc
        if settings.binning > min(info.shape):
            raise ProtocolError(f"binning {settings.binning} exceeds the {info.shape[0]}x{info.shape[1]} frame",
                                "settings")
        try:  # refused before any frame, not half-way through the scan
            self.device_budget.check(info.shape, info.frame_nbytes // (info.shape[0] * info.shape[1]),
                                     settings.binning, settings.angle_binning)
        except MemoryError as exc:
            raise ProtocolError(f"scan_start {info.scan_id}: does not fit the device: {exc}",
                                "no_memory") from exc
        if self.scan is not None and not (self.scan.ending or self.scan.aborted):
            if self.scan.info.scan_id == info.scan_id:
                raise ProtocolError(f"scan {info.scan_id!r} is already open", "duplicate")
            log.info("scan_start %s ends the open scan %s", info.scan_id, self.scan.info.scan_id)
            self.end_scan()
        if self.scan is not None:
            self.pending_start = info  # opened once the previous scan is complete
            self._pending_settings = settings
            return
        self._open(info, settings)

    def _open(self, info: ScanInfo, settings: ReconstructionSettings) -> None:
        angles = info.all_angles_deg()
        if angles is None:  # angles come with the frames; plan with uniform placeholders
            angles = np.linspace(0.0, 180.0, info.n_projections, endpoint=False)
        rows, cols = info.shape
        b = settings.binning
        try:
            groups, group_angles, weights = plan_groups(info.n_projections, settings.angle_binning, angles)
        except ValueError as exc:
            raise ProtocolError(f"scan_start {info.scan_id}: {exc}", "bad_field") from exc
        n_slots = max(min(self.config.ring_slots, info.n_projections), max(len(g) for g in groups))
        specs = layout(info.shape, info.dtype, n_slots, len(groups), (rows // b, cols // b),
                       self.n_partials, binned=self.split)
        seq = self.next_seq
        try:
            buffers = ScanBuffers.create(f"{self.prefix}_{seq}", specs)
        except (MemoryError, FileExistsError) as exc:
            raise ProtocolError(f"scan_start {info.scan_id}: {exc}", "no_memory") from exc
        self.next_seq += 1
        # Touch every ring page now: a first write into fresh shared memory costs ~20x a
        # warm copy (page allocation), which would otherwise halve the ingest rate.
        t0 = time.monotonic()
        buffers.ring.fill(0)
        log.debug("ring of %.2f GB populated in %.2f s", buffers.ring.nbytes / 1e9, time.monotonic() - t0)
        self.scan = OpenScan(seq, info, settings, buffers, groups, group_angles, weights)
        log.info("scan %s open (seq %d): %d projections in %d groups, ring of %d slots, %.2f GB shared",
                 info.scan_id, seq, info.n_projections, len(groups), n_slots, buffers.nbytes / 1e9)
        self.channels.events.put({"type": "scan_open", "scan_seq": seq, "scan": info.to_dict(),
                                  "settings": settings.to_dict(), "buffers": buffers.description(),
                                  "weights": self.scan.weights, "group_angles_deg": self.scan.group_angles_deg})
        if info.n_darks == 0 and info.n_flats == 0:
            self.scan.complete_reference()

    def _frame(self, frame: Frame) -> None:
        scan = self._open_scan(frame.scan_id)
        scan.info.check_frame(frame)
        if frame.index in scan.seen[frame.kind]:
            raise ProtocolError(f"duplicate {frame.kind} index {frame.index}", "duplicate")
        if frame.kind != "projection":
            scan.seen[frame.kind].add(frame.index)
            scan.sums[frame.kind] += frame.array()
            if not scan.reference_ready and scan.complete_reference():
                self._dispatch_ready()
            return
        if not scan.free_slots:
            self.counts["dropped"] += 1
            why = "drop policy" if scan.in_flight else "ring full of projections waiting for darks/flats or group members"
            if self.counts["dropped"] % 100 == 1:
                log.warning("dropped projection %d of %s (%s); %d dropped so far",
                            frame.index, frame.scan_id, why, self.counts["dropped"])
            return
        slot = scan.free_slots.pop()
        np.copyto(scan.buffers.ring[slot], frame.array())  # the one copy, ZeroMQ buffer -> ring
        scan.seen["projection"].add(frame.index)
        scan.slot_of[frame.index] = slot
        scan.angle_of[frame.index] = scan.info.angle_of(frame.index, frame.angle_deg)
        g = int(scan.group_of[frame.index])
        scan.missing[g] -= 1
        if scan.missing[g] == 0:
            scan.ready.append(g)
            self._dispatch_ready()

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self, g: int) -> None:
        scan = self.scan
        indices = [i for i in scan.groups[g] if i in scan.slot_of]
        slots = [scan.slot_of.pop(i) for i in indices]
        if scan.info.angles_known and len(indices) == len(scan.groups[g]):
            angle = scan.group_angles_deg[g]
        else:  # angles from the frames, or a partial group
            angle = float(np.mean([scan.angle_of[i] for i in indices]))
        scan.in_flight[g] = InFlight(slots, indices, scan.dispatched)
        scan.dispatched += 1
        self.channels.tasks.put({**scan.task_base, "group": g, "slots": slots, "indices": indices,
                                 "angle_deg": angle, "weight": scan.weights[g]})

    def _dispatch_ready(self) -> None:
        scan = self.scan
        if not scan.reference_ready:
            return
        while scan.ready:
            self._dispatch(scan.ready.pop(0))

    def end_scan(self) -> None:
        """No more frames: dispatch what is complete and the partial groups, then finish."""
        scan = self.scan
        scan.ending = True
        if not scan.reference_ready:
            log.warning("scan %s ended with %d of %d darks and %d of %d flats", scan.info.scan_id,
                        len(scan.seen["dark"]), scan.info.n_darks, len(scan.seen["flat"]), scan.info.n_flats)
        if not scan.reference_ready and not scan.complete_reference(partial=True):
            scan.error = "no flat arrived: the scan cannot be reconstructed"
            log.error("scan %s: %s", scan.info.scan_id, scan.error)
            self.abort_scan(scan.error)
            return
        self._dispatch_ready()
        partial = sorted({int(scan.group_of[i]) for i in scan.slot_of})
        for g in partial:
            self._dispatch(g)
        self.finish_if_idle()

    def abort_scan(self, why: str) -> None:
        """Drop the scan: held frames are discarded, groups in flight are waited for."""
        scan = self.scan
        if scan is None:
            return
        log.info("scan %s aborted: %s", scan.info.scan_id, why)
        scan.aborted = True
        scan.free_slots.extend(scan.slot_of.values())
        scan.slot_of.clear()
        scan.ready.clear()
        self.finish_if_idle()

    def finish_if_idle(self) -> None:
        """Emit ``scan_complete`` once an ended or aborted scan has nothing in flight."""
        scan = self.scan
        if scan is None or scan.in_flight or not (scan.ending or scan.aborted):
            return
        self.channels.events.put({"type": "scan_complete", "scan_seq": scan.seq,
                                  "scan_id": scan.info.scan_id, "groups_arrived": sorted(scan.groups_done),
                                  "n_projections_used": scan.n_projections_used, "aborted": scan.aborted,
                                  "error": scan.error, "group_angles_deg": scan.group_angles_deg})
        log.info("scan %s complete: %d of %d groups, %d projections used%s", scan.info.scan_id,
                 len(scan.groups_done), len(scan.groups), scan.n_projections_used,
                 " (aborted)" if scan.aborted else "")
        self.closed[scan.seq] = scan.buffers
        self.scan = None
        if self.pending_start is not None:
            info, self.pending_start = self.pending_start, None
            try:
                self._open(info, self._pending_settings)
            except ProtocolError as exc:
                self.reject(exc)

    # ------------------------------------------------------------------ channels
    def on_done(self, msg: dict[str, Any]) -> None:
        """A worker finished (or failed) a group: free its slots.

        Split mode adds ``binned``: a worker's part is done, free the slots; the group waits
        for the reconstructor's ``done``.
        """
        scan = self.scan
        if scan is None or msg.get("scan_seq") != scan.seq or msg.get("group") not in scan.in_flight:
            log.debug("ignoring done for scan %s group %s", msg.get("scan_seq"), msg.get("group"))
            return
        now = time.monotonic()
        task = scan.in_flight[msg["group"]]
        scan.free_slots.extend(task.slots)
        task.slots = []
        if task.stage == "raw":
            for other in scan.in_flight.values():  # sent earlier, so already taken by a worker
                if other.stage == "raw" and other.order < task.order and other.picked_at is None:
                    other.picked_at = now
        if msg.get("type") == "binned":
            task.stage, task.picked_at, task.binned_at = "binned", None, now
            return
        del scan.in_flight[msg["group"]]
        if task.stage == "binned":
            scan.reconstructed_upto = max(scan.reconstructed_upto, task.binned_at)
        if msg.get("type") == "done":
            scan.groups_done.append(msg["group"])
            scan.n_projections_used += len(task.indices)
            self.group_seconds = 0.9 * self.group_seconds + 0.1 * float(msg.get("seconds") or 0.0)
            self.channels.events.put({"type": "progress", "scan_seq": scan.seq,
                                      "groups_done": len(scan.groups_done)})
        else:
            self.counts["failed_groups"] += 1
            log.error("scan %s group %s failed in worker %s: %s", scan.info.scan_id, msg["group"],
                      msg.get("worker"), msg.get("error"))
        self.finish_if_idle()

    def reconstructor_lost(self) -> None:
        """The reconstructor died (split mode): settle the groups it held.

        Its ``handoff`` rows tell: taken and not committed, the group is lost; committed, it
        is in the volume (its ``done`` died in the queue feeder) and counts as done; neither,
        it is still queued for the next reconstructor.
        """
        scan = self.scan
        if scan is None or "handoff" not in scan.buffers.arrays:
            return
        state = scan.buffers.handoff[:, 0]
        # any stage: the worker's "binned" may still be on its way, but the worker is done
        lost = [g for g in scan.in_flight if state[g] == HANDOFF_TAKEN]
        for g in lost:
            scan.free_slots.extend(scan.in_flight.pop(g).slots)
        if lost:
            self.counts["lost_groups"] += len(lost)
            log.error("scan %s: groups %s died with the reconstructor", scan.info.scan_id, lost)
        for g in list(scan.in_flight):
            if state[g] == HANDOFF_COMMITTED:
                self.on_done({"type": "done", "scan_seq": scan.seq, "group": g, "slots": [],
                              "worker": "reconstructor", "seconds": 0.0})
        self.finish_if_idle()

    def reclaim_lost(self, now: float) -> None:
        """Free the slots of groups whose worker died, so that a scan never waits forever.

        A group counts as lost once it has been in a worker's hands (the task queue was seen
        empty, or a group sent after it came back) for far longer than groups take. In split
        mode, once in the reconstructor's: marked taken in ``handoff``, or overtaken by a
        group queued ``OVERTAKEN_S`` after it (taken but never marked: the reconstructor was
        killed in between). A backlog in the reconstruct queue is never lost by waiting.
        """
        scan = self.scan
        if scan is None or not scan.in_flight:
            return
        queue_empty = self.channels.tasks.empty()
        limit = max(LOST_AFTER_S, 20 * self.group_seconds)
        handoff = scan.buffers.arrays.get("handoff")
        for g, task in list(scan.in_flight.items()):
            if task.picked_at is None and task.stage == "raw" and queue_empty:
                task.picked_at = now
            elif task.picked_at is None and task.stage == "binned" and handoff[g, 0] == HANDOFF_TAKEN:
                task.picked_at = now  # in the reconstructor's hands
                scan.reconstructed_upto = max(scan.reconstructed_upto, task.binned_at)
            elif (task.picked_at is None and task.stage == "binned"
                  and task.binned_at + OVERTAKEN_S < scan.reconstructed_upto):
                task.picked_at = now
            if task.picked_at is not None and now - task.picked_at > limit:
                log.error("scan %s group %d not done %.0f s after a worker took it: taken as lost",
                          scan.info.scan_id, g, limit)
                del scan.in_flight[g]
                scan.free_slots.extend(task.slots)
                self.counts["lost_groups"] += 1
        self.finish_if_idle()

    def on_command(self, msg: dict[str, Any]) -> None:
        """``settings`` (next scan), ``abort`` (open scan), ``release`` (buffers), ``reconstructor_lost``."""
        kind = msg.get("type")
        if kind == "settings":
            try:
                self.settings = self.settings.merged(msg.get("settings", {}))
            except SettingsError as exc:
                log.error("ignoring settings command: %s", exc)
        elif kind == "abort":
            if self.scan is not None and not self.scan.aborted:
                self.abort_scan("abort command")
        elif kind == "release":
            buffers = self.closed.pop(msg.get("scan_seq"), None)
            if buffers is not None:
                buffers.close()
        elif kind == "reconstructor_lost":
            self.reconstructor_lost()
        else:
            log.error("ignoring unknown command %r", msg)

    def stats(self, now: float) -> dict[str, Any]:
        """Counters and rates since the last call, as a ``stats`` event."""
        t0, frames0, bytes0 = self._rate_mark
        dt = max(now - t0, 1e-9)
        frames, nbytes = self.counts["received"], self.counts["bytes"]
        self._rate_mark = (now, frames, nbytes)
        scan = self.scan
        used = (scan.n_slots - len(scan.free_slots)) if scan else 0
        return {"type": "stats", "state": self.state(), "scan_id": scan.info.scan_id if scan else None,
                "scan_seq": scan.seq if scan else None, "received": frames, "bytes": nbytes,
                "rejected": sum(self.rejected.values()), "rejected_by_reason": dict(self.rejected),
                "dropped": self.counts["dropped"], "failed_groups": self.counts["failed_groups"],
                "lost_groups": self.counts["lost_groups"], "frames_per_s": (frames - frames0) / dt,
                "bytes_per_s": (nbytes - bytes0) / dt, "ring_slots": scan.n_slots if scan else 0,
                "ring_fill": used / scan.n_slots if scan else 0.0,
                "in_flight": len(scan.in_flight) if scan else 0}

    def close(self) -> None:
        """Close this process's mappings (the daemon unlinks and sweeps)."""
        if self.scan is not None:
            self.closed[self.scan.seq] = self.scan.buffers
            self.scan = None
        for buffers in self.closed.values():
            buffers.close()
        self.closed.clear()


def _keep_freed_buffers() -> None:
    """Let glibc keep freed receive buffers instead of returning them to the kernel.

    ZeroMQ allocates every received frame; when the allocator gives large blocks back to
    the kernel, the next frame lands in fresh pages whose first touch costs several times
    the copy into the ring. Tuning is skipped where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        log.debug("no mallopt: receive buffers use the allocator's defaults")
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 256 << 20)  # frames up to 256 MB come from the heap, reused
    mallopt(m_trim_threshold, 1 << 30)  # and the heap is not trimmed below 1 GB free


def _get(q, timeout_s: float) -> dict[str, Any] | None:
    """The next message of ``q``, or None after ``timeout_s`` seconds."""
    try:
        return q.get(timeout=timeout_s)
    except queue.Empty:
        return None


def _drain(q, handler) -> None:
    while True:
        try:
            msg = q.get_nowait()
        except queue.Empty:
            return
        handler(msg)


def run_ingest(config, settings: ReconstructionSettings, n_workers: int, prefix: str,
               channels: Channels, first_seq: int = 1, split: bool = False,
               device_budget: DeviceBudget = DeviceBudget()) -> None:
    """Entry point of the ingest process; returns when ``channels.stop`` is set.

    Parameters
    ----------
    config : IngestConfig
        ``address``, ``mode`` ("bind"/"connect"), ``ring_slots``, ``rcvhwm``,
        ``drop_policy`` ("block"/"drop"), ``max_frame_bytes``.
    settings : ReconstructionSettings
        Server settings; a scan's ``reconstruction`` overrides apply on top.
    n_workers : int
        Partial volumes to allocate per scan in pool mode (one per worker).
    prefix : str
        Shared-memory name prefix, ``holostream_<daemon pid>``; scans get ``<prefix>_<seq>``.
    channels : Channels
    first_seq : int
        Number of the first scan (a restarted ingest continues above the previous one's).
    split : bool
        Split mode: one partial volume and a ``binned`` part per scan, two-stage groups.
    device_budget : DeviceBudget
        Device memory a scan may use; a ``scan_start`` that cannot fit is refused.
    """
    _keep_freed_buffers()
    ingest = Ingest(config, settings, n_workers, prefix, channels, first_seq, split, device_budget)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, config.rcvhwm)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, config.max_frame_bytes + ingest.limits.max_header_bytes)
    if config.mode == "connect":
        sock.connect(config.address)
    else:
        sock.bind(config.address)
    log.info("ingest %s on %s (ring %d slots, hwm %d, %s)", config.mode, config.address,
             config.ring_slots, config.rcvhwm, config.drop_policy)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    next_stats = time.monotonic()
    try:
        while not channels.stop.is_set():
            now = time.monotonic()
            if now >= next_stats:
                channels.events.put(ingest.stats(now))
                ingest.reclaim_lost(now)
                next_stats = now + STATS_INTERVAL_S
            wait_s = max(0.0, min(next_stats - now, POLL_MS / 1000))
            _drain(channels.commands, ingest.on_command)
            _drain(channels.done, ingest.on_done)
            if not ingest.accepting():
                # back-pressure: leave the socket alone until a worker frees slots
                msg = _get(channels.done, wait_s)
                if msg is not None:
                    ingest.on_done(msg)
                continue
            if not poller.poll(wait_s * 1000):
                continue
            for _ in range(BATCH):
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                ingest.handle(parts)
                if not ingest.accepting():
                    break
    finally:
        sock.close(linger=0)
        ctx.term()
        ingest.close()
        channels.events.put(ingest.stats(time.monotonic()))
        log.info("ingest stopped")
