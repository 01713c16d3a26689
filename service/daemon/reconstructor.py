"""The reconstructor process of split mode: batches of binned groups in, one partial volume out.

In split mode (``[workers] mode``) the CPU workers flat-field, bin and average each angle
group into ``binned[group]`` and put the group on the ``reconstruct`` queue. This one
process owns the device: it gathers up to ``batch`` groups (waiting at most
``_FILL_WAIT_S`` for a batch to fill), runs phase retrieval, δ conversion and the ramp
filter on the stack in one call
(:meth:`~holostream.workers.pipeline.ProjectionPipeline.filtered_from_transmission`),
writes ``sinogram[groups]`` and back-projects the batch into a device accumulator.
:meth:`ScanReconstruction.commit` adds that accumulator to the scan's one partial
``volume[0]`` (and its weight to ``weights[0]``) and only then emits the groups'
``group_done`` events (daemon) and ``done`` (ingest), exactly as pool-mode workers do, so
the daemon's live and final volumes work unchanged. A reconstructor killed mid-batch
therefore leaves no half-added group in the volume. Each group's row of the ``handoff``
part says where it is (taken, being added, committed with its angle and weight): shared
memory outlives the process, its queue messages may not, so after a death ingest sends the
groups it held again to its replacement (:mod:`.handoff`; a duplicate is dropped at the
claim) and the daemon records the committed ones whose report never came.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import time
from typing import Any, Callable

import numpy as np

from holostream.service.daemon.channels import Channels
from holostream.service.daemon.handoff import Claims
from holostream.service.daemon.rings import AbsorptionSum
from holostream.service.daemon.worker import build_pipeline, choose_backend
from holostream.shared.messages import ScanInfo
from holostream.shared.scanbuffers import HANDOFF_ADDING, HANDOFF_COMMITTED, ScanBuffers
from holostream.shared.settings import ReconstructionSettings
from holostream.workers import fbp
from holostream.workers.backend import Backend

log = logging.getLogger(__name__)

_FILL_WAIT_S = 0.005     # longest wait for a batch to fill once its first group is in
_MIN_WAIT_S = 0.001      # idle polling, as in the workers (never block inside Queue.get)
_MAX_WAIT_S = 0.02
_COMMIT_EVERY_S = 0.5    # the accumulator goes to shared memory at least this often while busy
_IDLE_RELEASE_S = 10.0   # cached scans are let go after this long without a group


class ScanReconstruction:
    """What the reconstructor keeps per scan: buffers, pipeline, the uncommitted accumulator.

    Parameters
    ----------
    message : dict
        The first group of the scan from the ``reconstruct`` queue (``scan``, ``settings``,
        ``buffers``).
    backend : Backend
    """

    def __init__(self, message: dict[str, Any], backend: Backend):
        self.backend = backend
        self.scan_seq = int(message["scan_seq"])
        self.scan = ScanInfo.from_dict(message["scan"])
        settings = ReconstructionSettings.from_dict(message["settings"])
        self.buffers = ScanBuffers.attach(message["buffers"])
        try:
            self.pipeline = build_pipeline(self.scan, settings, self.buffers, backend,
                                           bool(message.get("half_acquisition")))
            self.shared_volume = self.buffers.volume[0]
            # groups back-projected since the last commit: float32 (nz, n, n) on the device
            self.accumulator = backend.xp.zeros(self.shared_volume.shape, dtype=np.float32)
        except BaseException:
            self.buffers.close()  # a scan that cannot run must not pin its memory
            raise
        # A scan without cor_px is not estimated live yet: its axis is taken at the middle
        # (the volume header says "cor_source": "estimated", "cor_confidence": 0).
        self.center_px = self.pipeline.center_px(self.scan.cor_px or 0.0)
        self.uncommitted: list[dict[str, Any]] = []  # the messages of the accumulated groups
        self.stripes = AbsorptionSum(settings.ring_filter, self.pipeline.binned_shape, backend)
        self.deferred = bool(message.get("centre_deferred"))  # a 360° scan without cor_px
        self.uncommitted_weight = 0.0
        self.last_used = self.last_commit = time.monotonic()
        self.commit_seconds = 0.0  # what the last commit took (a whole-volume copy on a GPU)

    def take(self, group: int, claims: Claims) -> bool:
        """Mark ``group`` as held by this process (sent again if it dies before the commit).

        False for a duplicate (:meth:`Claims.claim`): already taken here, or in the volume.
        """
        return claims.claim(self.buffers.prefix, self.buffers.handoff, group)

    def run(self, messages: list[dict[str, Any]]) -> None:
        """Phase, filter and back-project one batch of this scan's groups (not yet committed)."""
        self.last_used = time.monotonic()
        groups = [int(m["group"]) for m in messages]
        stack = self.backend.asarray(self.buffers.binned[groups])
        self.stripes.add(stack, [float(m["weight"]) for m in messages], [float(m["angle_deg"]) for m in messages])
        if self.deferred:  # axis unknown: δ for the daemon, which filters it (daemon/halfscan.py)
            self.buffers.sinogram[groups] = self.backend.to_host(self.pipeline.delta_from_transmission(stack))
            self.uncommitted += messages
            self.uncommitted_weight += sum(float(m["weight"]) for m in messages)
            return
        filtered = self.pipeline.filtered_from_transmission(stack)
        self.buffers.sinogram[groups] = self.backend.to_host(filtered)
        angles_rad = np.radians([float(m["angle_deg"]) for m in messages])
        weights = np.array([float(m["weight"]) for m in messages])
        fbp.backproject(self.accumulator, filtered, angles_rad, weights, self.center_px, self.backend)
        self.uncommitted += messages
        self.uncommitted_weight += float(weights.sum())

    def due(self, idle: bool) -> bool:
        """Whether :meth:`commit` should run now: when idle, or ``_COMMIT_EVERY_S`` after the last.

        Commits are spaced at least four times their own duration apart, so that copying a
        large device volume back never takes more than a fifth of the time (on the CPU
        that is microseconds: every idle moment commits).
        """
        if not self.uncommitted:
            return False
        spacing = 4 * self.commit_seconds if idle else max(_COMMIT_EVERY_S, 4 * self.commit_seconds)
        return time.monotonic() - self.last_commit >= spacing

    def commit(self) -> list[dict[str, Any]]:
        """Add the accumulator to ``volume[0]`` and its weight to ``weights[0]``; returns the messages.

        Their ``handoff`` rows follow at once: what is in the volume is known even if this
        process is killed before its reports leave (queue feeder threads).
        """
        start = time.monotonic()
        groups = [int(m["group"]) for m in self.uncommitted]
        self.buffers.handoff[groups, 0] = HANDOFF_ADDING  # killed from here on: not added again
        self.shared_volume += self.backend.to_host(self.accumulator)
        self.stripes.commit(self.buffers.absorption_sum[0], self.buffers.absorption_weights[0])
        self.buffers.weights[0] += self.uncommitted_weight
        for m in self.uncommitted:
            self.buffers.handoff[int(m["group"])] = (HANDOFF_COMMITTED, float(m["angle_deg"]),
                                                     float(m["weight"]), float(m["n_projections"]),
                                                     self.center_px)
        self.accumulator.fill(0)
        messages, self.uncommitted, self.uncommitted_weight = self.uncommitted, [], 0.0
        self.last_commit = time.monotonic()
        self.commit_seconds = self.last_commit - start
        return messages

    def close(self) -> None:
        """Detach from the scan's shared memory (the daemon unlinks it)."""
        self.pipeline = self.accumulator = self.shared_volume = None  # views first, then unmap
        self.buffers.close()


def _result(message: dict[str, Any], error: str | None, seconds: float,
            center_px: float | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``group_done``/``group_failed`` event (daemon) and ``done``/``failed`` (ingest) of a group."""
    event = {key: message.get(key) for key in ("scan_seq", "prefix", "group", "angle_deg", "weight",
                                               "n_projections", "worker")}
    event.update(type="group_done" if error is None else "group_failed", center_px=center_px,
                 error=error, seconds=seconds, reconstructor=True)
    if message.get("redone"):  # sent again after a reconstructor died holding it (handoff.py)
        event["redone"] = True
    done = {"type": "done" if error is None else "failed", "scan_seq": message["scan_seq"],
            "group": message["group"], "slots": [], "worker": "reconstructor", "error": error,
            "seconds": seconds}
    return event, done


class Reconstructor:
    """The state of the reconstructor loop; :func:`run_reconstructor` drives it."""

    def __init__(self, backend: Backend, channels: Channels, batch: int):
        self.backend = backend
        self.channels = channels
        self.batch = batch
        self.cache: dict[str, ScanReconstruction] = {}  # by buffer prefix, unique per scan
        self.claims = Claims()
        self.failed_scans: set[str] = set()
        self.batch_seconds: dict[str, float] = {}

    def work(self, message: dict[str, Any]) -> ScanReconstruction:
        """The cached state of the message's scan, set up at its first group."""
        key = str(message["buffers"]["prefix"])
        if key not in self.cache:
            self.cache[key] = ScanReconstruction(message, self.backend)
        return self.cache[key]

    def take(self, message: dict[str, Any]) -> bool:
        """Mark a group just taken from the queue as ours, before anything else can happen.

        False for a duplicate (a group sent again after a reconstructor died, that this
        process has or whose row says it is in the volume): it must not be processed.
        """
        if message.get("type") != "group":
            return True
        if self.claims.has(str(message["buffers"]["prefix"]), int(message["group"])):
            return False  # before work(): a second copy must not set up a released scan again
        try:
            return self.work(message).take(int(message["group"]), self.claims)
        except Exception as exc:  # noqa: BLE001 - process() reports the same failure for the group
            log.debug("reconstructor: cannot mark group %s taken: %s", message.get("group"), exc)
            return True

    def process(self, messages: list[dict[str, Any]]) -> None:
        """Run the groups of one scan as one batch; a failure fails them all, with the reason."""
        key = str(messages[0]["buffers"]["prefix"])
        start = time.perf_counter()
        try:
            for other in [k for k in self.cache if k != key]:  # groups come in scan order:
                self._close(other)                              # earlier scans are over for us
            self.work(messages[0]).run(messages)
        except Exception as exc:  # noqa: BLE001 - reported per group with its reason; the loop goes on
            error = f"{type(exc).__name__}: {exc}"
            log.error("reconstructor: groups %s of scan %s failed: %s", [m["group"] for m in messages],
                      messages[0]["scan_seq"], error, exc_info=key not in self.failed_scans)
            self.failed_scans.add(key)
            seconds = time.perf_counter() - start
            for message in messages:
                event, done = _result(message, error, seconds, None)
                self.channels.events.put(event)
                self.channels.done.put(done)
            return
        self.batch_seconds[key] = time.perf_counter() - start

    def commit(self, idle: bool, force: bool = False) -> None:
        """Commit what is due (``force``: everything); then report the groups now in ``volume[0]``."""
        for key, work in self.cache.items():
            if work.uncommitted and (force or work.due(idle)):
                seconds = self.batch_seconds.get(key, 0.0)
                for message in work.commit():
                    event, done = _result(message, None, seconds, work.center_px)
                    self.channels.events.put(event)
                    self.channels.done.put(done)

    def _close(self, key: str) -> None:
        """Commit and close one cached scan."""
        self.commit(idle=True, force=True)
        self.cache.pop(key).close()
        log.debug("reconstructor released buffers %s", key)

    def release(self) -> None:
        """Commit and close every cached scan."""
        for key in list(self.cache):
            self._close(key)

    def idle_for(self) -> float:
        """Seconds since the last batch of any cached scan (0 when none is cached)."""
        if not self.cache:
            return 0.0
        return time.monotonic() - max(w.last_used for w in self.cache.values())


def gather(source: Any, batch: int, on_take: Callable[[dict[str, Any]], bool | None],
           fill_wait_s: float = _FILL_WAIT_S) -> list[dict[str, Any]]:
    """Up to ``batch`` messages of ``source``; [] at once when it is empty.

    Once the first message is in, waits at most ``fill_wait_s`` seconds for more.
    ``on_take`` is called on each message as soon as it is out of the queue; a message for
    which it returns False (a duplicate) is left out.
    """
    messages: list[dict[str, Any]] = []
    deadline = None  # set by the first message out of the queue
    while len(messages) < batch and not (messages and messages[-1].get("type") == "stop"):
        try:
            message = source.get_nowait()
        except queue.Empty:
            if deadline is None or time.monotonic() >= deadline:
                break
            time.sleep(_MIN_WAIT_S)  # polling period, bounded by the deadline
            continue
        if deadline is None:
            deadline = time.monotonic() + fill_wait_s
        if on_take(message) is not False:
            messages.append(message)
    return messages


def by_scan(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive runs of group messages of the same scan (buffer prefix), in order."""
    runs: list[list[dict[str, Any]]] = []
    for message in messages:
        if runs and runs[-1][0]["buffers"]["prefix"] == message["buffers"]["prefix"]:
            runs[-1].append(message)
        else:
            runs.append([message])
    return runs


def run_reconstructor(device: str, channels: Channels, reconstruct: Any, batch: int,
                      threads: int = 1) -> None:
    """Entry point of the reconstructor process; returns when told to stop.

    Parameters
    ----------
    device : {"cpu", "gpu", "auto"}
        Where to compute (``[workers] device``); "auto" is resolved here, in the child.
    channels : Channels
        ``done`` (to ingest: ``done``/``failed``) and ``events`` (to the daemon:
        ``group_done``/``group_failed``) out; ``stop``.
    reconstruct : multiprocessing.Queue
        Binned groups from the workers (``{"type": "group", ...}``) or ``{"type": "stop"}``.
    batch : int
        Most groups phased and back-projected in one call.
    threads : int
        CPU threads of this process (FFT, back-projection).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when we stop
    state = Reconstructor(choose_backend(device, threads), channels, batch)
    log.info("reconstructor ready on %s, batches of %d", state.backend.name, batch)
    parent = os.getppid()
    wait = _MIN_WAIT_S
    try:
        while not channels.stop.is_set():
            messages = gather(reconstruct, batch, state.take)
            if not messages:
                state.commit(idle=True)
                time.sleep(wait)  # not stop.wait(): see run_worker
                wait = min(2 * wait, _MAX_WAIT_S)
                if state.idle_for() > _IDLE_RELEASE_S:
                    state.release()
                if os.getppid() != parent:
                    log.error("reconstructor: daemon (pid %d) is gone; exiting", parent)
                    break
                continue
            wait = _MIN_WAIT_S
            groups = [m for m in messages if m.get("type") == "group"]
            for run in by_scan(groups):
                state.process(run)
            state.commit(idle=False)
            if len(groups) < len(messages):  # a stop message
                break
    finally:
        state.release()
        log.info("reconstructor stopped")


def record_unreported(state: Any, now: float) -> list[int]:
    """Record in the daemon's ``LiveScan`` the groups in ``volume[0]`` whose report was lost.

    The reconstructor writes each group's ``handoff`` row right after adding it to the
    volume; killed before its queue feeders sent ``group_done``, it would otherwise leave
    groups in the volume that the final re-weighting does not know about. Does nothing
    for a pool-mode scan (no ``handoff`` part).

    Parameters
    ----------
    state : holostream.service.daemon.publisher.LiveScan
        The daemon's view of the scan.
    now : float
        ``time.monotonic()``.

    Returns
    -------
    list of int
        The groups recorded now.
    """
    handoff = state.buffers.arrays.get("handoff")
    if handoff is None:
        return []
    rows = np.array(handoff)  # a snapshot
    committed = np.flatnonzero(rows[:, 0] == HANDOFF_COMMITTED)
    unreported = [int(g) for g in committed if int(g) not in state.groups]
    for g in unreported:
        _, angle_deg, weight, n_projections, center_px = rows[g]
        state.record({"type": "group_done", "group": g, "angle_deg": angle_deg, "weight": weight,
                      "n_projections": int(n_projections), "center_px": center_px}, now)
        state.failed.discard(g)
    if unreported:
        log.warning("scan %s: groups %s are in the volume but their report was lost; recorded",
                    state.scan_id, unreported)
    return unreported




