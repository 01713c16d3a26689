"""What the ingest process does with each message and each report: the state behind its socket loop.

:class:`Ingest` validates every ingest message (``shared/messages``), hands frames to the
open scan's book-keeping (:mod:`.scan`), sends the group tasks to the workers and the events
to the daemon, and settles the workers' and the reconstructor's reports. It owns no socket:
:func:`holostream.service.daemon.ingest.run_ingest` reads the PULL socket and calls it, and
the tests drive it in their own process.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from typing import Any

from holostream.service.daemon.channels import Channels, drain
from holostream.service.daemon.handoff import again_when_binned, settle, spans
from holostream.service.daemon.rejects import Rejects
from holostream.service.daemon.scan import LOST_AFTER_S, OpenScan, half_acquisition
from holostream.service.daemon.scanplan import ScanPlan, check_device, open_scan, plan_scan
from holostream.shared.messages import (
    Frame, Limits, ProtocolError, ScanAbort, ScanEnd, ScanInfo, ScanStart, parse_message,
)
from holostream.shared.scanbuffers import ScanBuffers, shm_free_bytes
from holostream.shared.settings import ReconstructionSettings, SettingsError
from holostream.workers.memory import DeviceBudget

log = logging.getLogger("holostream.service.daemon.ingest")  # one logger for the ingest process

LOGGED_REJECTIONS_PER_S = 10  # all are counted; this many per second are logged


class Ingest:
    """The state of the ingest loop; :func:`run_ingest` drives it."""

    def __init__(self, config, settings: ReconstructionSettings, n_workers: int, prefix: str,
                 channels: Channels, first_seq: int = 1, split: bool = False,
                 device_budget: DeviceBudget = DeviceBudget(), reconstruct: Any = None):
        self.config = config
        self.reconstruct = reconstruct  # split mode: a dead reconstructor's groups go back on it
        self.device_budget = device_budget
        self.settings = settings
        self.split = split
        self.n_partials = 1 if split else n_workers  # the reconstructor owns the one volume
        self.keep_transmissions = config.keep_transmissions  # pool mode: for δ/β re-tuning
        self.prefix = prefix
        self.channels = channels
        self.limits = Limits(max_frame_bytes=config.max_frame_bytes)
        self.next_seq = first_seq
        self.scan: OpenScan | None = None
        self.pending_start: ScanInfo | None = None  # a new scan_start that ends the open scan
        self._pending_settings = settings
        self.closed: dict[int, ScanBuffers] = {}  # completed scans until the daemon releases them
        self.counts = Counter()
        self.rejects = Rejects(log, LOGGED_REJECTIONS_PER_S)
        self._rate_mark = (time.monotonic(), 0, 0)
        self.group_seconds = 0.0  # running mean of a group's time in a worker
        self.memory_budget = memory_budget_bytes(config.memory_budget_gb)
        self.dead_workers: set[int] = set()  # pids of workers the daemon found dead
        self.scan_heard = time.monotonic()  # last message for the open scan

    # ------------------------------------------------------------------ flow control
    def accepting(self) -> bool:
        """Whether the loop may read the socket now (False applies back-pressure)."""
        scan = self.scan
        if scan is None:
            return True
        if scan.closing:
            return not scan.in_flight and self.pending_start is None
        if scan.free_slots or self.config.drop_policy == "drop":
            return True
        if scan.measuring is not None and not scan.measuring.done():
            return False  # the offsets being measured will release the held groups
        # stalled (no group in flight will free a slot): read on so missing darks/flats/members can come
        return not scan.holds_slots()

    def state(self) -> str:
        """``idle``, ``receiving``, ``blocked`` (back-pressure) or ``finishing``."""
        if self.scan is None:
            return "idle"
        if self.scan.closing:
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
        self.rejects.add(exc.code, exc.reason)
        self.channels.events.put({"type": "rejected", "reason": exc.reason, "code": exc.code})

    def _open_scan(self, scan_id: str) -> OpenScan:
        scan = self.scan
        if scan is None or scan.info.scan_id != scan_id:
            raise ProtocolError(f"unknown scan {scan_id!r}", "unknown_scan")
        if scan.closing:
            raise ProtocolError(f"scan {scan_id!r} has already ended", "scan_ended")
        return scan

    def _scan_start(self, info: ScanInfo) -> None:
        if info.distances and self.split:  # refused before it could end the open scan
            raise ProtocolError(
                f"scan_start {info.scan_id}: {len(info.distances)} distances are reconstructed live in pool "
                "mode only ([workers] mode = \"pool\"): split mode's reconstructor phases one distance",
                "not_supported")
        # a `set` answered before this scan_start was sent must apply to it
        drain(self.channels.commands, self.on_command)
        try:
            settings = self.settings.merged(info.reconstruction)
        except SettingsError as exc:
            raise ProtocolError(f"scan_start reconstruction: {exc}", "settings") from exc
        if settings.binning > min(info.shape):
            raise ProtocolError(f"binning {settings.binning} exceeds the {info.shape[0]}x{info.shape[1]} frame",
                                "settings")
        half = half_acquisition(info, settings.binning)  # its wider volume (workers/halfacq.py)
        if info.distances and half is not None:
            raise ProtocolError(f"scan_start {info.scan_id}: a 360° offset-axis scan at several distances is not "
                                "reconstructed live yet (no half-acquisition weights in DistanceWork)", "not_supported")
        check_device(info, settings, None if half is None else half[0], self.device_budget)
        if self.scan is not None and not self.scan.closing and self.scan.info.scan_id == info.scan_id:
            raise ProtocolError(f"scan {info.scan_id!r} is already open", "duplicate")
        # every refusal comes before the open scan is touched: a refused start changes nothing
        plan = plan_scan(info, settings, self.config.ring_slots, self.n_partials, self.split,
                         self.keep_transmissions)
        self._check_memory(info, plan)
        if self.scan is not None and not self.scan.closing:
            log.info("scan_start %s ends the open scan %s", info.scan_id, self.scan.info.scan_id)
            self.end_scan()
        if self.scan is not None:
            self.pending_start = info  # opened once the previous scan is complete
            self._pending_settings = settings
            return
        self._open(info, settings, plan)

    def _check_memory(self, info: ScanInfo, plan: ScanPlan) -> None:
        """Refuse (``no_memory``) a scan over the budget or over what /dev/shm has free."""
        need = plan.nbytes
        if need > self.memory_budget:
            raise ProtocolError(f"scan_start {info.scan_id}: needs {need / 1e9:.3g} GB of shared memory "
                                f"({plan.describe()}), over the budget of {self.memory_budget / 1e9:.3g} GB "
                                "([ingest] memory_budget_gb)", "no_memory")
        free = shm_free_bytes()
        if need > free:
            raise ProtocolError(f"scan_start {info.scan_id}: needs {need / 1e9:.3g} GB of shared memory, "
                                f"/dev/shm has {free / 1e9:.3g} GB free", "no_memory")

    def _open(self, info: ScanInfo, settings: ReconstructionSettings, plan: ScanPlan | None = None) -> None:
        self.scan = open_scan(self.next_seq, info, settings, self.prefix, self.config.ring_slots,
                              self.n_partials, self.split, plan, self.keep_transmissions)
        self.scan_heard = time.monotonic()
        self.next_seq += 1
        self.channels.events.put({"type": "scan_open", "scan_seq": self.scan.seq, "scan": info.to_dict(),
                                  "settings": settings.to_dict(), "buffers": self.scan.buffers.description(),
                                  "weights": self.scan.weights, "group_angles_deg": self.scan.group_angles_deg})

    def _frame(self, frame: Frame) -> None:
        scan = self._open_scan(frame.scan_id)
        self.scan_heard = time.monotonic()
        scan.check_new(frame)
        scan.last_frame_time = time.time()
        if frame.kind != "projection":
            self._send_tasks(scan.add_reference(frame))
            return
        tasks = scan.add_projection(frame)
        if tasks is None:
            self.counts["dropped"] += 1
            why = "drop policy" if scan.in_flight else "ring full of projections waiting for darks/flats or group members"
            if self.counts["dropped"] % 100 == 1:
                log.warning("dropped projection %d of %s (%s); %d dropped so far",
                            frame.index, frame.scan_id, why, self.counts["dropped"])
            return
        self._send_tasks(tasks)

    def _send_tasks(self, tasks: list[dict[str, Any]]) -> None:
        for task in tasks:
            self.channels.tasks.put(task)

    def end_scan(self) -> None:
        """No more frames: dispatch what is complete and the partial groups, then finish."""
        self._send_tasks(self.scan.end())
        self.finish_if_idle()

    def poll(self) -> None:
        """Dispatch what waited for the open scan's offsets once they are measured (several distances)."""
        scan = self.scan
        if scan is None or scan.shifts_px is not None:
            return
        self._send_tasks(scan.poll())
        self.finish_if_idle()

    def abort_scan(self, why: str) -> None:
        """Drop the scan: held frames are discarded, groups in flight are waited for."""
        if self.scan is None:
            return
        self.scan.abort(why)
        self.finish_if_idle()

    def finish_if_idle(self) -> None:
        """Emit ``scan_complete`` once an ended or aborted scan has nothing in flight."""
        scan = self.scan
        if scan is None or not scan.finished:
            return
        self.counts["angles_left_out"] += len(scan.left_out)  # several distances: one was missing
        self.channels.events.put(scan.completion())
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
        kind = msg.get("type")
        if kind == "taken":  # who holds it: redone at once should that worker die
            scan.in_flight[msg["group"]].worker_pid = msg.get("pid")
            if msg.get("pid") in self.dead_workers:  # it died before its report got here
                self._redo()
            return
        if scan.group_result(msg, time.monotonic()):
            self.group_seconds = 0.9 * self.group_seconds + 0.1 * float(msg.get("seconds") or 0.0)
            self.channels.events.put({"type": "progress", "scan_seq": scan.seq,
                                      "groups_done": len(scan.groups_done)})
        elif kind == "binned":
            self._send_again([again_when_binned(scan, msg["group"], time.monotonic())])
            return
        elif kind != "done":
            self.counts["failed_groups"] += 1
            log.error("scan %s group %s failed in worker %s: %s", scan.info.scan_id, msg["group"],
                      msg.get("worker"), msg.get("error"))
        self.finish_if_idle()

    def reconstructor_lost(self) -> None:
        """The reconstructor died (split mode): settle the groups it held (``daemon/handoff.py``).

        Committed ones count as done; the others go back on the ``reconstruct`` queue for
        its replacement (from ``binned``), or are lost with the reason.
        """
        scan = self.scan
        if scan is None:
            return
        settled = settle(scan, time.monotonic())
        self.counts["lost_groups"] += len(settled.lost)
        for why in sorted(set(settled.lost.values())):
            log.error("scan %s: groups %s died with the reconstructor (%s)", scan.info.scan_id,
                      sorted(g for g, reason in settled.lost.items() if reason == why), why)
        if settled.again or settled.later:
            queued = sorted(set(m["group"] for m in settled.again) - set(settled.held))
            log.warning("scan %s: groups %s the dead reconstructor held, and %d it may have had queued (%s), "
                        "sent again to its replacement; %d more (%s) once their worker has binned them",
                        scan.info.scan_id, settled.held, len(queued), spans(queued), len(settled.later),
                        spans(settled.later))
        self._send_again(settled.again)
        for g in settled.committed:
            self.on_done({"type": "done", "scan_seq": scan.seq, "group": g, "slots": [],
                          "worker": "reconstructor", "seconds": 0.0})
        self.finish_if_idle()

    def _send_again(self, messages: list[dict[str, Any] | None]) -> None:
        """Put binned groups back on the ``reconstruct`` queue (the reconstructor drops duplicates)."""
        for message in messages:
            if message is None:
                continue
            if self.reconstruct is None:  # an Ingest without the queue (driven by a test)
                log.error("group %s cannot be sent again: no reconstruct queue", message["group"])
                continue
            self.reconstruct.put(message)
            self.counts["requeued_groups"] += 1

    def reclaim_lost(self, now: float) -> None:
        """Give up the groups whose worker died, so that a scan never waits forever."""
        scan = self.scan
        if scan is None or not scan.in_flight:
            return
        limit = max(LOST_AFTER_S, 20 * self.group_seconds)
        lost = scan.reclaim_lost(now, self.channels.tasks.empty(), limit)
        self.counts["lost_groups"] += len(lost)
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
        elif kind == "workers_lost":
            self.dead_workers.update(msg.get("pids", []))
            self._redo()
        else:
            log.error("ignoring unknown command %r", msg)

    def end_if_stalled(self, now: float) -> None:
        """End the open scan as incomplete when nothing came for ``stall_timeout_s``."""
        scan, timeout_s = self.scan, self.config.stall_timeout_s
        if scan is None or scan.closing or not timeout_s or now - self.scan_heard < timeout_s:
            return
        scan.incomplete = (f"stalled: nothing received for {timeout_s:g} s, "
                           f"{len(scan.seen['projection'])} of {scan.info.n_projections} projections arrived")
        log.warning("scan %s %s; ending it", scan.info.scan_id, scan.incomplete)
        self.counts["stalled_scans"] += 1
        self.end_scan()

    def _redo(self) -> None:
        """Send again the groups that dead workers had taken (see ``OpenScan.redo``)."""
        if self.scan is None:
            return
        tasks = self.scan.redo(self.dead_workers)
        if tasks:
            self.counts["redone_groups"] += len(tasks)
            log.warning("scan %s: groups %s of a dead worker sent again", self.scan.info.scan_id,
                        [t["group"] for t in tasks])
            self._send_tasks(tasks)

    def stats(self, now: float) -> dict[str, Any]:
        """Counters and rates since the last call, as a ``stats`` event."""
        t0, frames0, bytes0 = self._rate_mark
        dt = max(now - t0, 1e-9)
        frames, nbytes = self.counts["received"], self.counts["bytes"]
        self._rate_mark = (now, frames, nbytes)
        scan = self.scan
        return {"type": "stats", "state": self.state(), "scan_id": scan.info.scan_id if scan else None,
                "scan_seq": scan.seq if scan else None, "received": frames, "bytes": nbytes,
                "rejected": self.rejects.total, "rejected_by_reason": dict(self.rejects.counts),
                "dropped": self.counts["dropped"], "failed_groups": self.counts["failed_groups"],
                "lost_groups": self.counts["lost_groups"], "redone_groups": self.counts["redone_groups"],
                "requeued_groups": self.counts["requeued_groups"],
                "angles_left_out": self.counts["angles_left_out"],
                "frames_per_s": (frames - frames0) / dt,
                "bytes_per_s": (nbytes - bytes0) / dt, "ring_slots": scan.n_slots if scan else 0,
                "ring_fill": scan.ring_fill() if scan else 0.0,
                "in_flight": len(scan.in_flight) if scan else 0,
                "in_workers": sum(f.worker_pid is not None for f in scan.in_flight.values()) if scan else 0,
                "memory_budget_bytes": self.memory_budget,
                "scan_memory_bytes": scan.buffers.nbytes if scan else 0}

    def close(self) -> None:
        """Close this process's mappings (the daemon unlinks and sweeps)."""
        if self.scan is not None:
            self.closed[self.scan.seq] = self.scan.buffers
            self.scan = None
        for buffers in self.closed.values():
            buffers.close()
        self.closed.clear()


def memory_budget_bytes(budget_gb: float) -> int:
    """Shared memory one scan may hold: ``budget_gb`` (GB), or a quarter of the physical memory.

    A quarter: a finishing scan and the next one may hold theirs at once, and the workers'
    own arrays and the page cache need the rest.
    """
    if budget_gb > 0:
        return int(budget_gb * 1e9)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
