"""The live reconstruction daemon (`holostream serve`), wired in one place.

The main process spawns one ingest process and N workers (docs/architecture.md, "Live
service") and, in split mode, one reconstructor process that owns the device; then it
runs one loop on a ``zmq.Poller`` with deadlines: it answers control requests, drains the
``events`` queue, publishes live volumes every ``publish_interval_s`` of a scan while new
groups arrive, the final volume when a scan is complete, status every
``status_interval_s``, replaces dead children, and keeps systemd informed. SIGTERM/SIGINT
stop it cleanly: children joined (or terminated), every shared-memory segment of this
daemon unlinked, exit status 0.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import time
from typing import Any

import numpy as np
import zmq

from holostream.service.config import Config
from holostream.service.daemon.channels import Channels, drain, make_channels, spawn_context
from holostream.service.daemon.children import (
    IngestProcess,
    ReconstructorProcess,
    WorkerPool,
    resolve_device,
    resolve_mode,
)
from holostream.service.daemon.control import Control
from holostream.service.daemon.kept import KeptScan
from holostream.service.daemon.metrics import Metrics
from holostream.service.daemon.curve import Curve
from holostream.service.daemon.ingest import EXIT_ADDRESS_IN_USE
from holostream.service.daemon.notify import Notifier, status_line
from holostream.service.daemon.publisher import Publisher
from holostream.service.daemon.requests import ControlRequests
from holostream.service.daemon.retuning import Retuning, start_retuner
from holostream.service.daemon.reconstructor import record_unreported
from holostream.service.daemon.volumes import LiveScan
from holostream.shared.scanbuffers import sweep, sweep_orphans
from holostream.workers.backend import get_backend
from holostream.workers.memory import DeviceBudget

log = logging.getLogger(__name__)

_POLL_CAP_S = 0.05        # the events queue is not pollable: drain it at least this often
_SUPERVISE_EVERY_S = 0.5
_FINAL_STALL_S = 15.0     # give up waiting for group results this long after the last one
_CRASH_WINDOW_S = 30.0    # this many child deaths within this window: the daemon gives up
_CRASH_LIMIT = 5


class Daemon(ControlRequests, Retuning):
    """The main process: owns the sockets, the scan states and the children."""

    def __init__(self, config: Config):
        self.config = config
        security = config.security  # KeyFileError (a bad key file) stops the start, with the path
        self.curve = (Curve.from_files(security.server_key, security.client_keys, security.admin_keys)
                      if security.server_key else None)
        self.settings = config.reconstruction  # changed by "set", from the next scan on
        self.prefix = f"holostream_{os.getpid()}"
        self.channels: Channels = make_channels(spawn_context())
        self.log_level = logging.getLogger().getEffectiveLevel()
        workers = config.workers
        cluster = config.cluster if config.cluster.actors > 0 else None
        # probed once here (DeviceError: "gpu" asked, none usable); actors resolve their own
        device = workers.device if cluster is not None else resolve_device(workers.device)
        # actors on a cluster take the reconstructor's place: split mode, the workers bin
        self.mode = "split" if cluster is not None else resolve_mode(workers.mode, device)
        self.reconstructor: ReconstructorProcess | None = None
        if self.mode == "split":  # CPU workers bin, one process phases and back-projects
            reconstruct = spawn_context().Queue()
            self.pool = WorkerPool(workers.count, "cpu", self.channels, self.log_level, reconstruct)
            threads = max(1, len(os.sched_getaffinity(0)) // 2)
            self.reconstructor = ReconstructorProcess(device, workers.batch, self.channels,
                                                      reconstruct, self.log_level, threads, cluster)
        else:
            self.pool = WorkerPool(workers.count, device, self.channels, self.log_level)
        self.ingest = IngestProcess(config.ingest, self.channels, self.log_level, workers.count,
                                    self.prefix, self.mode == "split", self._device_budget(), config.security,
                                    reconstruct=self.reconstructor.reconstruct if self.reconstructor else None)
        self.last_seq = 0  # highest scan_seq announced so far
        self.notifier = Notifier.from_environ()
        self.backend = get_backend("cpu", threads=1)
        self.scans: dict[int, LiveScan] = {}
        self.early: dict[int, list[dict]] = {}  # group results that overtook their scan_open
        self.stats: dict[str, Any] = {}
        self.counters = {"scans_completed": 0, "scans_failed": 0, "volumes_published": 0,
                         "groups_failed": 0, "rejected": 0, "ingest_reports": 0,
                         "scans_incomplete": 0}
        self.last_error: str | None = None
        # the newest final volume as published: header, δ, and β of a multi-distance scan
        self.last_final: tuple[dict, np.ndarray, np.ndarray | None] | None = None
        self.kept: KeptScan | None = None  # the last completed scan, to re-tune after its end
        self.last_volume_file: str | None = None  # the newest volume written to output_dir
        self.started = time.time()
        self.stop_requested = False
        self.stop_signal: int | None = None
        self.exit_code = 0
        self.deaths: list[float] = []  # when children died (crash-loop detection)
        self.metrics = Metrics()

    # ---- lifetime --------------------------------------------------------------------
    def run(self) -> int:
        """Bind, spawn, serve until SIGTERM/SIGINT; returns the exit status."""
        swept = sweep_orphans()  # a daemon killed before us cannot have removed its own
        if swept:
            log.warning("removed %d shared-memory segment(s) of dead holostream daemons", len(swept))
        context = zmq.Context()
        auth = self.curve.start_authenticator(context) if self.curve is not None else None
        if self.config.plaintext_remote():
            log.warning("NO AUTHENTICATION on network address(es) %s: anyone who reaches them may push frames, "
                        "read volumes and change settings ([security] allow_plaintext_remote = true)",
                        ", ".join(self.config.plaintext_remote()))
        try:
            self.publisher = Publisher(context, self.config.publish, self.curve)
            self.control = Control(context, self.config.control.address, self._handlers(), self.curve)
        except zmq.ZMQError as exc:
            log.error("cannot bind: %s", exc)
            if auth is not None:
                auth.stop()
            context.destroy(linger=0)
            return EXIT_ADDRESS_IN_USE if exc.errno == zmq.EADDRINUSE else 1
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            self.retuner = start_retuner()  # re-tuned volumes off this loop, kernel warmed now
            self.pool.start()
            if self.reconstructor is not None:
                self.reconstructor.start()
            self.ingest.start(self.settings, self.last_seq + 1)
            # monitoring that cannot listen must not stop the service: said, and served without
            self.last_error = self.metrics.start(self.config.metrics.address) or self.last_error
            self._loop()
        finally:
            log.info("stopping (%s)", signal.Signals(self.stop_signal).name if self.stop_signal
                     else self.last_error)
            self.notifier.stopping()
            self._shutdown()
            if auth is not None:
                auth.stop()
            context.destroy(linger=0)
        log.info("stopped")
        return self.exit_code

    def _on_signal(self, signum: int, frame: Any) -> None:
        # only a flag: the loop notices it within one poll (<= 50 ms)
        self.stop_requested = True
        self.stop_signal = signum

    def _shutdown(self) -> None:
        self.channels.stop.set()
        if hasattr(self, "retuner"):  # before any shared memory goes: its running job reads it
            self.retuner.close()
        queues = [self.channels.events]
        if self.reconstructor is not None:  # workers flush their binned groups to it on exit
            queues.append(self.reconstructor.reconstruct)

        def flush() -> None:  # children exit only once their queue feeders have flushed
            for q in queues:
                drain(q)

        self.pool.stop(timeout_s=3.0, drain=flush)
        if self.reconstructor is not None:
            self.reconstructor.stop(timeout_s=3.0, drain=lambda: drain(self.channels.events))
        self.ingest.stop(timeout_s=2.0, drain=flush)
        for q in (self.channels.tasks, self.channels.commands, *queues[1:]):
            q.cancel_join_thread()  # nobody reads them any more; never hang on exit
        for state in list(self.scans.values()):
            self._drop(state)
        removed = sweep(f"{self.prefix}_")
        if removed:
            log.info("removed %d leftover shared-memory segment(s)", len(removed))
        self.publisher.close()
        self.control.close()
        self.metrics.close()

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.control.socket, zmq.POLLIN)
        now = time.monotonic()
        next_status, next_supervise, next_watchdog = now, now + _SUPERVISE_EVERY_S, now
        watchdog_s = self.notifier.watchdog_interval_s() if self.config.service.watchdog else None
        ready = False
        while not self.stop_requested:
            deadlines = [next_status, next_supervise, now + _POLL_CAP_S]
            deadlines += [s.next_publish for s in self.scans.values() if s.complete is None]
            timeout_ms = max(0.0, min(deadlines) - time.monotonic()) * 1000
            if dict(poller.poll(timeout_ms)).get(self.control.socket):
                self.control.handle()
            self._drain_events()
            if not ready and self.counters["ingest_reports"]:  # ingest has bound its socket
                ready = True
                self.notifier.ready()
                log.info("serving: ingest %s, publish %s, control %s, %d workers, %s mode",
                         self.config.ingest.address, self.config.publish.address,
                         self.config.control.address, self.config.workers.count, self.mode)
            now = time.monotonic()
            for state in list(self.scans.values()):
                self._advance(state, now)
            self._collect_retuned()  # volumes the re-tune thread finished
            if now >= next_supervise:
                next_supervise = now + _SUPERVISE_EVERY_S
                self._supervise()
            if now >= next_status:
                next_status = now + self.config.publish.status_interval_s
                status = self.status()
                self.metrics.update(status, self.channels.depths())
                self.publisher.publish_status(status)
                self.notifier.status(status_line(status))
            if watchdog_s and now >= next_watchdog:
                next_watchdog = now + watchdog_s
                self.notifier.watchdog()

    # ---- events from ingest and workers ---------------------------------------------
    def _drain_events(self) -> None:
        for _ in range(10_000):  # bounded: control requests must not wait for ever
            try:
                event = self.channels.events.get_nowait()
            except queue.Empty:
                return
            self._apply(event)

    def _apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        seq = event.get("scan_seq")
        state = self.scans.get(seq)
        if kind == "scan_open":
            self._open(event)
        elif kind in ("group_done", "group_failed"):
            if state is None:
                self.early.setdefault(seq, []).append(event)
            else:
                self._group_result(state, event)
        elif kind == "scan_complete" and state is not None:
            state.complete = event
        elif kind == "stats":
            self.stats = {k: v for k, v in event.items() if k != "type"}
            self.counters["ingest_reports"] += 1
            self.ingest.heard()
        elif kind == "actors" and self.reconstructor is not None:  # cluster mode's dispatcher
            self.reconstructor.actors = {k: v for k, v in event.items() if k != "type"}
        elif kind == "rejected":
            self.counters["rejected"] += 1
            self.last_error = f"rejected: {event.get('reason')}"
        elif kind != "progress":
            log.debug("event ignored: %s", kind)

    def _open(self, event: dict[str, Any]) -> None:
        seq = int(event["scan_seq"])
        self.last_seq = max(self.last_seq, seq)
        try:
            state = LiveScan.open(event, time.monotonic())
        except (OSError, ValueError) as exc:  # ingest gone meanwhile, or a broken description
            self.counters["scans_failed"] += 1
            self.last_error = f"scan {seq}: cannot attach its shared memory: {exc}"
            log.error(self.last_error)
            return
        self.scans[seq] = state
        log.info("scan %d open: %s, %d projections", seq, state.scan_id, state.scan["n_projections"])
        for early in self.early.pop(seq, []):
            self._group_result(state, early)
        self.early = {s: evs for s, evs in self.early.items() if s > seq}

    def _group_result(self, state: LiveScan, event: dict[str, Any]) -> None:
        if event.get("prefix") != state.buffers.prefix:
            return  # a stale result of a dead ingest's scan with the same number
        state.record(event, time.monotonic())
        if event["type"] == "group_failed":
            self.counters["groups_failed"] += 1
            self.last_error = f"group {event['group']} of {state.scan_id}: {event.get('error')}"
        else:
            self.metrics.observe_group(event)
            self.pool.groups_done[int(event["worker"])] += 1  # the worker that binned it, in split mode
            if event.get("reconstructor") and self.reconstructor is not None:
                self.reconstructor.groups_done += 1
                self.reconstructor.redone += bool(event.get("redone"))  # for a dead predecessor

    # ---- publishing ------------------------------------------------------------------
    def _advance(self, state: LiveScan, now: float) -> None:
        """Publish a live volume when due, or the final one once every result is in."""
        if state.complete is None:
            if state.live_due(now) and not self.retuner.busy(state.seq):
                state.centre.refine(state.buffers.sinogram, state.groups, state.scan_id)
                if state.groups and state.needs_fbp():  # a full back-projection: off the loop
                    self._submit_live(state)
                    return
                with self.metrics.stage_seconds.labels("live_volume").time():
                    volume = state.live_volume(self.backend)
                if volume is not None:
                    self._send(state, volume, final=False)
            return
        if state.final_job or self.retuner.busy(state.seq):  # a job reads its memory: let it end
            return
        aborted = bool(state.complete.get("aborted"))
        record_unreported(state, now)  # split mode: groups whose report died with the reconstructor
        missing = state.missing()
        if missing and not aborted and now - state.last_result < _FINAL_STALL_S:
            return  # results still on their way (events and done travel separately)
        if aborted or not state.groups:
            why = state.complete.get("error") or ("aborted" if aborted else
                                                  f"no projection was reconstructed ({state.first_error})")
            log.warning("scan %s: no final volume (%s)", state.scan_id, why)
            self.last_error = f"scan {state.scan_id}: {why}"
            self.counters["scans_failed"] += 1
            self._drop(state)
            return
        if missing:
            log.warning("scan %s: %d group(s) never came back; finishing without them",
                        state.scan_id, len(missing))
        state.centre.refine(state.buffers.sinogram, state.groups, state.scan_id, final=True)
        if state.needs_fbp():  # re-centred or re-tuned: made off this loop, then _finish
            self._submit_final(state)
            return
        with self.metrics.stage_seconds.labels("final_volume").time():
            volume = state.final_volume(self.backend)
        self._finish(state, volume)

    def _finish(self, state: LiveScan, volume: np.ndarray) -> None:
        """Publish (and write) a scan's final volume, keep the scan for re-tuning, drop it."""
        header, beta = self._send(state, volume, final=True)
        if state.complete.get("last_frame_time"):
            self.metrics.final_latency.observe(max(0.0, time.time() - state.complete["last_frame_time"]))
        if header.get("incomplete"):
            self.counters["scans_incomplete"] += 1
            self.last_error = f"scan {state.scan_id}: {header['incomplete_reason']}"
        self.last_final = (header, volume, beta)
        self.counters["scans_completed"] += 1
        self.kept = KeptScan.of(state, header, self.config.publish.keep_last_scan_mb)
        self._retune_after_final()  # asked between the scan's end and this volume
        log.info("scan %s final volume %s from %d/%d projections", state.scan_id,
                 header["shape"], header["n_projections_used"], header["n_projections_expected"])
        self._drop(state)

    def _send(self, state: LiveScan, volume: np.ndarray, final: bool) -> tuple[dict[str, Any], np.ndarray | None]:
        """Publish (and write, if asked) one volume of ``state``; its header and its β (or None)."""
        header = state.header(volume, final)
        # several distances: β beside δ, same header, topic "beta" (service/daemon/distances.py)
        beta = state.volume_of("beta", final, self.backend) if header.get("n_distances") else None
        with self.metrics.stage_seconds.labels("publish").time():
            self.publisher.publish_volume(header, volume)
            self.publisher.publish_preview(header, volume)
            if beta is not None:
                self.publisher.publish_beta({**header, "quantity": "beta"}, beta)
        self.counters["volumes_published"] += 1
        if self.config.publish.output_dir and (final or self.config.publish.save_intermediate):
            self._save(f"{header['scan_id']}_{state.seq}" + ("" if final else f"_{header['seq']}"),
                       header, volume, beta)
        return header, beta

    def _drop(self, state: LiveScan) -> None:
        """Forget a scan: tell ingest, unmap and unlink its shared memory."""
        if hasattr(self, "retuner"):
            self.retuner.forget(state.seq)  # no re-tune job may read the memory unmapped below
        self.scans.pop(state.seq, None)
        self.channels.commands.put({"type": "release", "scan_seq": state.seq})
        state.close()

    # ---- supervision -----------------------------------------------------------------
    def _device_budget(self) -> DeviceBudget:
        """What ingest checks each scan_start against ([workers] device_memory_gb, 0: nothing)."""
        workers = self.config.workers
        split = self.mode == "split"
        return DeviceBudget(int(workers.device_memory_gb * 1e9), workers.batch if split else 1,
                            1 if split else workers.count)

    def _supervise(self) -> None:
        """Replace dead children; give up (exit 1) when they keep dying."""
        if self.stop_requested:
            return
        dead_workers = self.pool.dead()
        reconstructor_dead = self.reconstructor is not None and self.reconstructor.dead()
        self._drain_events()  # a long final volume must not make ingest look silent
        ingest_dead = not self.ingest.alive()
        now = time.monotonic()
        self.deaths = [t for t in self.deaths if now - t < _CRASH_WINDOW_S]
        self.deaths += [now] * (len(dead_workers) + ingest_dead + reconstructor_dead)
        if len(self.deaths) >= _CRASH_LIMIT:  # e.g. no GPU, or the ingest address is taken
            self.last_error = (f"{len(self.deaths)} child processes died within "
                               f"{_CRASH_WINDOW_S:.0f} s: giving up (see the log above)")
            log.critical(self.last_error)
            self.stop_requested, self.exit_code = True, 1
            return
        if dead_workers:
            self.pool.replace(dead_workers)
            self.last_error = f"worker(s) {dead_workers} died and were replaced"
        if reconstructor_dead:
            # ingest first: it reads the dead one's handoff rows while the new one still imports,
            # and sends what it held again to the new one (daemon/handoff.py)
            self.channels.commands.put({"type": "reconstructor_lost"})
            self.reconstructor.replace()
            self.last_error = "the reconstructor died and was replaced; the groups it held are redone"
        if ingest_dead and self.ingest.process.exitcode == EXIT_ADDRESS_IN_USE:
            self.last_error = f"the ingest address {self.config.ingest.address} is in use: giving up"
            log.critical(self.last_error)  # restarting would only fail again, with a traceback each time
            self.stop_requested, self.exit_code = True, EXIT_ADDRESS_IN_USE
            return
        if ingest_dead:
            self._restart_ingest()

    def _restart_ingest(self) -> None:
        """A dead ingest: its open scans failed; a new ingest numbers its scans above them."""
        self.last_error = (f"ingest process died (exit code {self.ingest.process.exitcode}); "
                           "open scans failed, ingest restarted")
        log.error(self.last_error)
        for state in [s for s in self.scans.values() if s.complete is None]:
            self.counters["scans_failed"] += 1  # complete ones only wait for the workers
            self._drop(state)
        # a restarted ingest numbers its scans above every scan seen: no name is reused
        self.ingest.restart(self.settings, self.last_seq + 1)
