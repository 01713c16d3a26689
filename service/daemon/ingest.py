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
import os
import sys
import time
from collections import Counter
from typing import Any

import zmq

from holostream.service.daemon.channels import Channels, drain, get_within
from holostream.service.daemon.curve import Curve
from holostream.service.daemon.rejects import Rejects
from holostream.service.daemon.scan import LOST_AFTER_S, OpenScan, ScanPlan, open_scan, plan_scan
from holostream.shared.messages import (
    Frame, Limits, ProtocolError, ScanAbort, ScanEnd, ScanInfo, ScanStart, parse_message,
)
from holostream.shared.scanbuffers import ScanBuffers, shm_free_bytes
from holostream.shared.settings import ReconstructionSettings, SettingsError
from holostream.workers.memory import DeviceBudget

#: Exit status of ``holostream serve`` (and of the ingest process) when an address is taken.
EXIT_ADDRESS_IN_USE = 3

log = logging.getLogger(__name__)

POLL_MS = 50  # longest wait for the socket before looking at done/commands/stop again
BATCH = 64  # messages read in one go before looking at the queues
STATS_INTERVAL_S = 0.25
LOGGED_REJECTIONS_PER_S = 10  # all are counted; this many per second are logged


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
        if info.distances:  # refused before it could end the open scan
            raise ProtocolError(
                f"scan_start {info.scan_id}: {len(info.distances)} distances are not reconstructed live "
                "yet; write one NXtomo per distance and run `holostream reconstruct` on them",
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
        try:  # refused before any frame, not half-way through the scan
            self.device_budget.check(info.shape, info.frame_nbytes // (info.shape[0] * info.shape[1]),
                                     settings.binning, settings.angle_binning)
        except MemoryError as exc:
            raise ProtocolError(f"scan_start {info.scan_id}: does not fit the device: {exc}",
                                "no_memory") from exc
        if self.scan is not None and not self.scan.closing and self.scan.info.scan_id == info.scan_id:
            raise ProtocolError(f"scan {info.scan_id!r} is already open", "duplicate")
        # every refusal comes before the open scan is touched: a refused start changes nothing
        plan = plan_scan(info, settings, self.config.ring_slots, self.n_partials, self.split)
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
                              self.n_partials, self.split, plan)
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
            return
        elif kind != "done":
            self.counts["failed_groups"] += 1
            log.error("scan %s group %s failed in worker %s: %s", scan.info.scan_id, msg["group"],
                      msg.get("worker"), msg.get("error"))
        self.finish_if_idle()

    def reconstructor_lost(self) -> None:
        """The reconstructor died (split mode): settle the groups it held (see ``OpenScan``)."""
        scan = self.scan
        if scan is None:
            return
        lost, committed = scan.settle_reconstructor()
        if lost:
            self.counts["lost_groups"] += len(lost)
            log.error("scan %s: groups %s died with the reconstructor", scan.info.scan_id, lost)
        for g in committed:
            self.on_done({"type": "done", "scan_seq": scan.seq, "group": g, "slots": [],
                          "worker": "reconstructor", "seconds": 0.0})
        self.finish_if_idle()

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


def run_ingest(config, settings: ReconstructionSettings, n_workers: int, prefix: str,
               channels: Channels, first_seq: int = 1, split: bool = False,
               device_budget: DeviceBudget = DeviceBudget(), security: Any = None) -> None:
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
    security : SecurityConfig, optional
        With ``server_key``: the socket is a CURVE server for the listed client keys.
    """
    _keep_freed_buffers()
    ingest = Ingest(config, settings, n_workers, prefix, channels, first_seq, split, device_budget)
    ctx = zmq.Context()
    curve = (Curve.from_files(security.server_key, security.client_keys, security.admin_keys)
             if security is not None and security.server_key else None)
    auth = curve.start_authenticator(ctx) if curve is not None else None  # ZAP is per context
    sock = ctx.socket(zmq.PULL)
    if curve is not None:
        curve.serve(sock)
    sock.setsockopt(zmq.RCVHWM, config.rcvhwm)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, config.max_frame_bytes + ingest.limits.max_header_bytes)
    try:
        if config.mode == "connect":
            sock.connect(config.address)
        else:
            sock.bind(config.address)
    except zmq.ZMQError as exc:  # one line, one distinct exit status: the daemon gives up at once
        log.error("ingest cannot %s %s: %s", config.mode, config.address, exc)
        sock.close(linger=0)
        if auth is not None:
            auth.stop()
        ctx.term()
        sys.exit(EXIT_ADDRESS_IN_USE if exc.errno == zmq.EADDRINUSE else 1)
    log.info("ingest %s on %s (ring %d slots, hwm %d, %s)", config.mode, config.address,
             config.ring_slots, config.rcvhwm, config.drop_policy)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    next_stats = time.monotonic()
    parent = os.getppid()
    try:
        while not channels.stop.is_set():
            now = time.monotonic()
            if now >= next_stats:
                if os.getppid() != parent:  # the daemon was killed: nobody will say stop
                    log.error("ingest: daemon (pid %d) is gone; exiting", parent)
                    break
                channels.events.put(ingest.stats(now))
                ingest.reclaim_lost(now)
                ingest.end_if_stalled(now)
                next_stats = now + STATS_INTERVAL_S
            wait_s = max(0.0, min(next_stats - now, POLL_MS / 1000))
            drain(channels.commands, ingest.on_command)
            drain(channels.done, ingest.on_done)
            if not ingest.accepting():
                # back-pressure: leave the socket alone until a worker frees slots
                msg = get_within(channels.done, wait_s)
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
        if auth is not None:
            auth.stop()
        ctx.term()
        ingest.close()
        channels.events.put(ingest.stats(time.monotonic()))
        log.info("ingest stopped")
