"""A reconstruction worker process: angle groups in, back-projected partial volume out.

Each worker takes group tasks from the one ``tasks`` queue all workers share, runs the
:class:`~holostream.workers.pipeline.ProjectionPipeline` on the group's raw frames (read
from the shared-memory ring), writes the filtered projection into the scan's
``sinogram[group]`` (and its binned transmission into ``binned[group]`` when the scan keeps
them, ``[ingest] keep_transmissions``), adds its back-projection into its own partial
``volume[w]`` and its angle weight into ``weights[w]``. It then tells ingest (``done``: free the slots) and the
daemon (``group_done`` on ``events``, once the group is in ``volume[w]``: its angle and
weight, so the daemon can build the final volume of exactly the groups that arrived). A
failing task is reported with its reason and the worker goes on.

In split mode (``[workers] mode``) a worker only flat-fields, bins and averages the group
(:meth:`ProjectionPipeline.transmission`), writes it to ``binned[group]``, hands the group
to the reconstructor process (``reconstruct`` queue) and tells ingest ``binned`` (free the
slots); the reconstructor does the rest (:mod:`holostream.service.daemon.reconstructor`).
"""

from __future__ import annotations

import logging
import math
import os
import queue
import signal
import time
from typing import Any

import numpy as np

from holostream.service.daemon.channels import Channels
from holostream.service.daemon.rings import AbsorptionSum, live_ring_filter
from holostream.shared.messages import ScanInfo
from holostream.shared.scanbuffers import ScanBuffers
from holostream.shared.settings import ReconstructionSettings
from holostream.workers import fbp
from holostream.workers.backend import Backend, get_backend, gpu_available
from holostream.workers.binning import binned_center_px
from holostream.workers.halfacq import detector_weights
from holostream.workers.phasing import default_chain
from holostream.workers.pipeline import ProjectionPipeline

log = logging.getLogger(__name__)

# Polling the task queue without blocking inside Queue.get: a worker killed while blocked
# in get() would hold the queue's read lock for ever and starve its siblings.
_MIN_WAIT_S = 0.001
_MAX_WAIT_S = 0.02
# Cached scans are let go after this long without a task (frees their shared memory).
_IDLE_RELEASE_S = 10.0
# A device-side accumulator is copied to shared memory at most this often while busy.
_COMMIT_EVERY_S = 0.5


def choose_backend(device: str, threads: int = 1) -> Backend:
    """The array backend for ``device`` ("cpu", "gpu" or "auto": gpu when cupy sees one)."""
    if device == "auto":
        device = "gpu" if gpu_available() else "cpu"
    return get_backend(device, threads=threads)


def build_pipeline(scan: ScanInfo, settings: ReconstructionSettings, buffers: ScanBuffers,
                   backend: Backend, half: bool = False) -> ProjectionPipeline:
    """The :class:`ProjectionPipeline` of a scan, from its shared dark/flat ``reference``.

    ``half``: a 360° offset-axis scan (the task's ``half_acquisition``, decided by ingest from
    the angles, which tasks do not carry): the detector columns are weighted before the ramp.
    """
    column_weights = None
    if half:
        cols = int(scan.shape[1])
        column_weights = detector_weights(cols // settings.binning,
                                          binned_center_px(cols, settings.binning, scan.cor_px or 0.0))
    return ProjectionPipeline(
        tuple(scan.shape), backend.asarray(buffers.reference[0]), backend.asarray(buffers.reference[1]),
        binning=settings.binning, chain=default_chain(settings.phase, settings.iterations, scan.delta_beta),
        filter=settings.filter, energy_kev=scan.energy_kev, distance_m=scan.distance_m,
        pixel_size_m=scan.pixel_size_m, delta_beta=scan.delta_beta, backend=backend,
        pad_mode=settings.pad_mode, column_weights=column_weights)


class ScanWork:
    """What one worker keeps per scan: the attached buffers and the pipeline built for it.

    Groups are back-projected into ``accumulator``; :meth:`commit` makes them visible to
    the daemon: ``volume[w]`` and ``weights[w]`` updated together, then one
    ``group_done`` event per group. On the CPU the accumulator *is* ``volume[w]`` and
    every group is committed at once; on a GPU the accumulator lives on the device and is
    copied back when the worker is idle or every ``_COMMIT_EVERY_S``, not after every
    group (a whole-volume copy each time would cost more than the back-projection).

    Parameters
    ----------
    worker_id : int
        Index ``w`` of this worker's partial accumulator ``volume[w]``.
    task : dict
        The first group task of the scan (``scan``, ``settings``, ``buffers``).
    backend : Backend
    split : bool
        Split mode: :meth:`run` stops at the binned transmission (no volume of its own).
    """

    def __init__(self, worker_id: int, task: dict[str, Any], backend: Backend, split: bool = False):
        self.worker_id = worker_id
        self.backend = backend
        self.split = split
        self.scan = ScanInfo.from_dict(task["scan"])
        settings = ReconstructionSettings.from_dict(task["settings"])
        self.buffers = ScanBuffers.attach(task["buffers"])
        self.distances = None  # several distances: their pipeline and β (service/daemon/distances.py)
        try:
            if self.scan.distances:
                from holostream.service.daemon.distances import DistanceWork
                self.distances = self.pipeline = DistanceWork(self.scan, settings, self.buffers, backend,
                                                              worker_id, task["shifts_px"])
            else:
                self.pipeline = build_pipeline(self.scan, settings, self.buffers, backend,
                                               bool(task.get("half_acquisition")))
        except BaseException:
            self.buffers.close()  # a task that cannot run must not pin the scan's memory
            raise
        # A scan without cor_px is not estimated live yet: its axis is taken at the middle
        # (the volume header says "cor_source": "estimated", "cor_confidence": 0).
        self.center_px = self.pipeline.center_px(self.scan.cor_px or 0.0)
        # split mode: the one partial volume is the reconstructor's
        self.shared_volume = None if split else self.buffers.volume[worker_id]
        self.accumulator = None if split else backend.asarray(self.shared_volume)
        self.in_place = self.accumulator is self.shared_volume
        self.uncommitted: list[dict[str, Any]] = []  # group_done events not yet visible
        self.stripes = AbsorptionSum(live_ring_filter(settings.ring_filter, bool(self.distances)),
                                     tuple(self.buffers.sinogram.shape[1:]), backend)
        self.deferred = bool(task.get("centre_deferred"))  # a 360° scan without cor_px
        self.stage_seconds: dict[str, float] = {}  # of the last group (pool mode), for the metrics
        self.uncommitted_weight = 0.0
        self.last_used = self.last_commit = time.monotonic()

    def run(self, task: dict[str, Any]) -> None:
        """Reconstruct one group task into ``sinogram[group]`` and the accumulator.

        In split mode: only its transmission, into ``binned[group]``.
        """
        self.last_used = time.monotonic()
        slots = list(task["slots"])
        raw = self.backend.asarray(self.buffers.ring[slots])
        if self.split:
            transmission = self.pipeline.transmission(raw, list(task["indices"]))
            self.buffers.binned[task["group"]] = self.backend.to_host(transmission)
            return
        if self.distances is not None:
            self.stage_seconds = self.distances.run(task, self.accumulator, self.center_px)
            self.uncommitted_weight += float(task["weight"])
            return
        # the pipeline's two halves timed apart for the metrics (on a GPU the copy to the
        # host waits for the phase retrieval, so its time is not charged to back-projection)
        t0 = time.perf_counter()
        transmission = self.pipeline.transmission(raw, list(task["indices"]))
        if "binned" in self.buffers.arrays:  # kept for a δ/β or phase-chain re-tune (aims.py)
            self.buffers.binned[task["group"]] = self.backend.to_host(transmission)
        t1 = time.perf_counter()
        self.stripes.add(transmission[None], [float(task["weight"])], [float(task["angle_deg"])])
        if self.deferred:  # axis unknown: δ for the daemon, which filters it (daemon/halfscan.py)
            delta = self.pipeline.delta_from_transmission(transmission[None])[0]
            self.buffers.sinogram[task["group"]] = self.backend.to_host(delta)
            self.uncommitted_weight += float(task["weight"])
            self.stage_seconds = {"flatfield_binning": t1 - t0, "phase_filter": time.perf_counter() - t1}
            return
        filtered = self.pipeline.filtered_from_transmission(transmission[None])[0]
        self.buffers.sinogram[task["group"]] = self.backend.to_host(filtered)
        t2 = time.perf_counter()
        angle_rad = np.array([math.radians(float(task["angle_deg"]))])
        weight = float(task["weight"])
        fbp.backproject(self.accumulator, filtered[None], angle_rad, np.array([weight]),
                        self.center_px, self.backend)
        self.uncommitted_weight += weight
        self.stage_seconds = {"flatfield_binning": t1 - t0, "phase_filter": t2 - t1,
                              "backprojection": time.perf_counter() - t2}

    def due(self, idle: bool) -> bool:
        """Whether :meth:`commit` should run now (always on the CPU, where it costs nothing)."""
        return bool(self.uncommitted) and (
            self.in_place or idle or time.monotonic() - self.last_commit >= _COMMIT_EVERY_S)

    def commit(self) -> list[dict[str, Any]]:
        """Publish the accumulated groups to shared memory; returns their ``group_done`` events."""
        if not self.in_place:
            self.shared_volume[...] = self.backend.to_host(self.accumulator)
        self.stripes.commit(self.buffers.absorption_sum[self.worker_id],
                            self.buffers.absorption_weights[self.worker_id])
        if self.distances is not None:
            self.distances.commit()
        self.buffers.weights[self.worker_id] += self.uncommitted_weight
        events, self.uncommitted, self.uncommitted_weight = self.uncommitted, [], 0.0
        self.last_commit = time.monotonic()
        return events

    def close(self) -> None:
        """Detach from the scan's shared memory (the daemon unlinks it)."""
        # drop every view first (the pipeline may hold dark/flat views), or the unmap fails
        if self.distances is not None:
            self.distances.close()
        self.pipeline = self.accumulator = self.shared_volume = self.distances = None
        self.buffers.close()


def _commit(cache: dict[str, ScanWork], channels: Channels, idle: bool) -> None:
    """Commit what is due and tell the daemon which groups are now in ``volume[w]``."""
    for work in cache.values():
        if work.due(idle):
            for event in work.commit():
                channels.events.put(event)


def _release(cache: dict[str, ScanWork], channels: Channels) -> None:
    """Commit and close every cached scan."""
    _commit(cache, channels, idle=True)
    for key in list(cache):
        cache.pop(key).close()
        log.debug("released buffers %s", key)


def _handle(worker_id: int, task: dict[str, Any], cache: dict[str, ScanWork], backend: Backend,
            channels: Channels, failed_scans: set[str], reconstruct: Any = None) -> None:
    """Run one group task; tell ingest (``done``: free the slots) and, on failure, the daemon.

    With a ``reconstruct`` queue (split mode) a binned group goes on to the reconstructor
    and ingest hears ``binned`` instead of ``done``.
    """
    start = time.perf_counter()
    seq = int(task["scan_seq"])
    # keyed by the buffers' prefix, unique per scan even across an ingest restart
    key = str(task["buffers"]["prefix"])
    error = None
    try:
        if key not in cache:
            _release(cache, channels)  # tasks come in order: earlier scans are over for us
            cache[key] = ScanWork(worker_id, task, backend, split=reconstruct is not None)
        cache[key].run(task)
    except Exception as exc:  # noqa: BLE001 - any failure is reported with its reason; the worker goes on
        error = f"{type(exc).__name__}: {exc}"
        # the traceback once per scan; the same failure on every group is one line each
        log.error("worker %d: group %s of scan %d failed: %s", worker_id, task.get("group"), seq, error,
                  exc_info=key not in failed_scans)
        failed_scans.add(key)
    seconds = time.perf_counter() - start
    event = {"type": "group_done" if error is None else "group_failed", "scan_seq": seq,
             "prefix": key, "group": task["group"], "angle_deg": task["angle_deg"],
             "weight": task["weight"], "n_projections": len(task["indices"]),
             "center_px": cache[key].center_px if key in cache else None,
             "worker": worker_id, "error": error, "seconds": seconds,
             "stage_seconds": cache[key].stage_seconds if key in cache and error is None else {}}
    done = "done"
    if error is not None:
        channels.events.put(event)
        done = "failed"
    elif reconstruct is not None:  # before "binned": ingest must not free what is not handed on
        reconstruct.put({**{k: v for k, v in task.items() if k not in ("slots", "indices")}, **event,
                         "type": "group"})
        done = "binned"
    else:
        cache[key].uncommitted.append(event)  # sent once the group is visible in volume[w]
    channels.done.put({"type": done, "scan_seq": seq,
                       "group": task["group"], "slots": task["slots"], "worker": worker_id,
                       "error": error, "seconds": seconds})


def run_worker(worker_id: int, settings_device: str, channels: Channels, threads: int = 1,
               reconstruct: Any = None) -> None:
    """Entry point of worker process ``worker_id``; returns when told to stop.

    Parameters
    ----------
    worker_id : int
        This worker's index ``w`` (its partial volume is ``volume[w]``); a replacement
        after a crash gets the same id.
    settings_device : {"cpu", "gpu", "auto"}
        Where to compute (``[workers] device``); "auto" is resolved here, in the child.
    channels : Channels
        ``tasks`` in; ``done`` (to ingest) and ``events`` (to the daemon) out; ``stop``.
    threads : int
        CPU FFT threads of this worker.
    reconstruct : multiprocessing.Queue, optional
        Split mode: where binned groups go to the reconstructor (None: pool mode).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when we stop
    backend = choose_backend(settings_device, threads)
    log.info("worker %d ready on %s", worker_id, backend.name)
    cache: dict[str, ScanWork] = {}
    failed_scans: set[str] = set()  # scans (buffer prefixes) that had a failed group here
    wait = _MIN_WAIT_S
    parent = os.getppid()
    try:
        while not channels.stop.is_set():
            try:
                task = channels.tasks.get_nowait()
            except queue.Empty:
                _commit(cache, channels, idle=True)
                # not stop.wait(): a process killed while waiting on a multiprocessing Event
                # leaves a sleeper behind, and the daemon's stop.set() would wait for it forever
                time.sleep(wait)
                wait = min(2 * wait, _MAX_WAIT_S)
                if cache and time.monotonic() - max(w.last_used for w in cache.values()) > _IDLE_RELEASE_S:
                    _release(cache, channels)
                if os.getppid() != parent:  # the daemon was killed: nobody will say stop
                    log.error("worker %d: daemon (pid %d) is gone; exiting", worker_id, parent)
                    break
                continue
            wait = _MIN_WAIT_S
            if task.get("type") == "stop":
                break
            if task.get("type") != "group":
                log.error("worker %d: ignoring task of unknown type %r", worker_id, task.get("type"))
                continue
            # before the work: should this process die, ingest sends the group again at once
            channels.done.put({"type": "taken", "scan_seq": task["scan_seq"], "group": task["group"],
                               "pid": os.getpid(), "worker": worker_id})
            _handle(worker_id, task, cache, backend, channels, failed_scans, reconstruct)
            _commit(cache, channels, idle=False)
    finally:
        _release(cache, channels)
        log.info("worker %d stopped", worker_id)


