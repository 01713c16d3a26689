"""Starting, stopping and replacing the daemon's child processes.

Every child is spawned (never forked after a ZeroMQ context exists) through
:func:`child_main`; :class:`WorkerPool` and :class:`ReconstructorProcess` keep their
processes and restart counts; :func:`resolve_device` asks a spawned probe whether a GPU is
usable (and why not), so the daemon itself never imports cupy.
"""

from __future__ import annotations

import logging
import os
import time
from multiprocessing.process import BaseProcess
from typing import Any, Callable

from holostream.service.daemon.channels import Channels, drain, spawn_context
from holostream.service.daemon.lifeline import child_main
from holostream.shared.scanbuffers import sweep
from holostream.workers.backend import DeviceUnavailable, gpu_probe

log = logging.getLogger(__name__)

# what each child runs, imported by the child only after it is bound to the daemon's life
_WORKER = "holostream.service.daemon.worker:run_worker"
_RECONSTRUCTOR = "holostream.service.daemon.reconstructor:run_reconstructor"
_INGEST = "holostream.service.daemon.ingest:run_ingest"
_DISPATCHER = "holostream.service.daemon.dispatcher:run_dispatcher"  # [cluster] actors > 0


def stop_processes(processes: list[BaseProcess], timeout_s: float,
                   drain: Callable[[], None] | None = None) -> None:
    """Join ``processes`` within ``timeout_s``; terminate, then kill, the stragglers.

    ``drain`` is called while waiting: a child exits only once its queue feeder threads
    have written everything, so whoever reads those queues must keep reading.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in processes if p.is_alive()]
        if not alive:
            break
        if drain is not None:
            drain()  # the last child may exit meanwhile: joining it then returns at once
        alive[0].join(0.05)
    for proc in processes:
        if proc.is_alive():
            log.warning("%s did not stop in %.1f s: terminating", proc.name, timeout_s)
            proc.terminate()
            proc.join(1.0)
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)


def free_orphaned_lock(lock: Any, grace_s: float) -> bool:
    """Release a multiprocessing lock that a killed process left held; True if it was.

    Queue locks are held only for the instant of one small send or receive (workers never
    block inside ``Queue.get``), so a lock still taken after ``grace_s`` (seconds, far
    longer than any such instant) belongs to a process that died holding it, and every
    other user of that queue would wait for ever. Only for the queues' own
    ``_rlock``/``_wlock``, right after a child died; a free lock costs no wait.
    """
    if lock is None:
        return False
    if lock.acquire(timeout=grace_s):
        lock.release()
        return False
    lock.release()  # a plain (non-recursive) semaphore: any process may release it
    log.error("released a queue lock left held by a dead process")
    return True


class WorkerPool:
    """The N worker processes of the daemon; a dead one is replaced with the same id.

    Parameters
    ----------
    count : int
        Number of workers.
    device : {"cpu", "gpu", "auto"}
    channels : Channels
    log_level : int
        Logging level of the children.
    reconstruct : multiprocessing.Queue, optional
        Split mode: the queue to the reconstructor (None: pool mode).
    """

    def __init__(self, count: int, device: str, channels: Channels, log_level: int,
                 reconstruct: Any = None):
        self.count = count
        self.device = device
        self.channels = channels
        self.log_level = log_level
        self.reconstruct = reconstruct
        self.threads = max(1, len(os.sched_getaffinity(0)) // count)
        self.processes: dict[int, BaseProcess] = {}
        self.restarts = {w: 0 for w in range(count)}
        self.groups_done = {w: 0 for w in range(count)}  # counted by the daemon from events

    def _spawn(self, worker_id: int) -> None:
        proc = spawn_context().Process(
            target=child_main, name=f"holostream-worker-{worker_id}",
            args=(self.log_level, _WORKER, worker_id, self.device, self.channels, self.threads,
                  self.reconstruct))
        proc.start()
        self.processes[worker_id] = proc

    def start(self) -> None:
        """Start every worker."""
        for w in range(self.count):
            self._spawn(w)

    def dead(self) -> list[int]:
        """Ids of the workers that have exited."""
        return [w for w, p in self.processes.items() if not p.is_alive()]

    def replace(self, dead: list[int]) -> None:
        """Restart the workers ``dead`` (logged, counted) with the same ids."""
        if dead:  # a worker killed mid-send or mid-receive may have left a queue locked
            locks = [self.channels.tasks._rlock, self.channels.done._wlock, self.channels.events._wlock]
            if self.reconstruct is not None:
                locks.append(self.reconstruct._wlock)
            for lock in locks:
                free_orphaned_lock(lock, grace_s=2.0)
        if dead:  # ingest sends their groups again (it knows who took what)
            self.channels.commands.put({"type": "workers_lost", "pids": [self.processes[w].pid for w in dead]})
        for w in dead:
            log.error("worker %d (pid %s) died with exit code %s: replacing it",
                      w, self.processes[w].pid, self.processes[w].exitcode)
            self.processes[w].join(0)
            self.restarts[w] += 1
            self._spawn(w)

    def status(self) -> list[dict[str, Any]]:
        """One ``{"id", "pid", "alive", "restarts", "groups_done"}`` per worker."""
        return [{"id": w, "pid": p.pid, "alive": p.is_alive(), "restarts": self.restarts[w],
                 "groups_done": self.groups_done[w]}
                for w, p in sorted(self.processes.items())]

    def stop(self, timeout_s: float, drain: Callable[[], None] | None = None) -> None:
        """Ask every worker to stop (``stop`` event and a stop task each) and join them."""
        self.channels.stop.set()
        for _ in self.processes:
            self.channels.tasks.put({"type": "stop"})
        stop_processes(list(self.processes.values()), timeout_s, drain)


def _probe_gpu(answer: Any) -> None:
    """Send :func:`gpu_probe`'s answer (None: usable, else the reason) back (in a spawned child)."""
    answer.send(gpu_probe())
    answer.close()


def probe_gpu(timeout_s: float = 60.0) -> str | None:
    """Whether a GPU is usable here: None when it is, else the reason (one line).

    Asked in a spawned child, so the daemon never imports cupy (or touches a GPU) itself.
    """
    receiving, sending = spawn_context().Pipe(duplex=False)
    probe = spawn_context().Process(target=_probe_gpu, args=(sending,), name="holostream-gpu-probe")
    probe.start()
    sending.close()
    try:
        if receiving.poll(timeout_s):
            return receiving.recv()
        return f"the GPU probe did not answer within {timeout_s:.0f} s"
    except EOFError:  # died before answering: a crash in the CUDA driver, say
        probe.join(5.0)
        return f"the GPU probe died (exit code {probe.exitcode})"
    finally:
        receiving.close()
        if probe.is_alive():
            probe.join(5.0)
        if probe.is_alive():
            probe.kill()
            probe.join()


def resolve_device(device: str) -> str:
    """``"cpu"`` or ``"gpu"`` for ``[workers] device``, probed once for the whole daemon.

    ``"auto"``: the GPU when the probe finds it usable, else the CPU with the reason logged.
    ``"gpu"``: the GPU, or :class:`DeviceUnavailable` with the reason (the daemon does not
    start workers that could only fail).
    """
    if device == "cpu":
        return "cpu"
    reason = probe_gpu()
    if reason is None:
        return "gpu"
    if device == "gpu":
        raise DeviceUnavailable(f"[workers] device = \"gpu\" but no GPU is usable: {reason}")
    log.warning("[workers] device = \"auto\": no usable GPU (%s); computing on the CPU", reason)
    return "cpu"


def resolve_mode(mode: str, device: str) -> str:
    """``"pool"`` or ``"split"`` for ``[workers] mode`` and a resolved ``device``.

    ``auto`` is split on a GPU (CPU workers bin, one process phases and back-projects),
    pool on the CPU.
    """
    if mode != "auto":
        return mode
    return "split" if device == "gpu" else "pool"


class ReconstructorProcess:
    """The daemon's one reconstructor process (split mode); a dead one is replaced.

    Parameters
    ----------
    device : {"cpu", "gpu", "auto"}
    batch : int
    channels : Channels
    reconstruct : multiprocessing.Queue
        Workers → reconstructor.
    log_level : int
        Logging level of the child.
    threads : int
        CPU threads of the child.
    cluster : ClusterConfig, optional
        ``[cluster]`` with ``actors > 0``: the child is the dispatcher to actors on a Dask
        cluster (``service/daemon/dispatcher.py``) instead of reconstructing itself.
    """

    def __init__(self, device: str, batch: int, channels: Channels, reconstruct: Any,
                 log_level: int, threads: int, cluster: Any = None):
        self.device, self.batch, self.threads = device, batch, threads
        self.cluster = cluster
        self.actors: dict[str, Any] | None = None  # the dispatcher's last "actors" event
        self.channels = channels
        self.reconstruct = reconstruct
        self.log_level = log_level
        self.process: BaseProcess | None = None
        self.restarts = 0
        self.groups_done = 0  # counted by the daemon from events
        self.redone = 0  # of those, groups a dead predecessor held or had queued (daemon/handoff.py)

    def start(self) -> None:
        """Start the process."""
        if self.cluster is not None:
            args = (self.log_level, _DISPATCHER, self.cluster, self.device, self.channels, self.reconstruct,
                    self.batch)
        else:
            args = (self.log_level, _RECONSTRUCTOR, self.device, self.channels, self.reconstruct,
                    self.batch, self.threads)
        self.process = spawn_context().Process(target=child_main, name="holostream-reconstructor", args=args)
        self.process.start()

    def dead(self) -> bool:
        """Whether the process has exited."""
        return self.process is not None and not self.process.is_alive()

    def replace(self) -> None:
        """Restart a dead reconstructor (logged, counted); ingest must have been told first."""
        # a process killed mid-receive or mid-send may have left a queue locked
        for lock in (self.reconstruct._rlock, self.channels.done._wlock, self.channels.events._wlock):
            free_orphaned_lock(lock, grace_s=2.0)
        log.error("reconstructor (pid %s) died with exit code %s: replacing it (ingest sends the groups it "
                  "held again)", self.process.pid, self.process.exitcode)
        self.process.join(0)
        self.restarts += 1
        self.start()

    def status(self) -> dict[str, Any]:
        """``{"pid", "alive", "restarts", "groups_done", "redone", "batch", "cluster"}`` (cluster: the actors, or None)."""
        return {"pid": self.process.pid if self.process else None,
                "alive": bool(self.process and self.process.is_alive()),
                "restarts": self.restarts, "groups_done": self.groups_done, "redone": self.redone,
                "batch": self.batch,
                "cluster": self.actors}

    def stop(self, timeout_s: float, drain: Callable[[], None] | None = None) -> None:
        """Ask it to stop (``stop`` event and a stop message) and join it."""
        self.channels.stop.set()
        self.reconstruct.put({"type": "stop"})
        if self.process is not None:
            stop_processes([self.process], timeout_s, drain)


class IngestProcess:
    """The daemon's one ingest process; a dead or hung one is restarted.

    Ingest reports ``stats`` four times a second; silent for ``silent_s`` seconds it is
    taken as hung and killed (then restarted like a dead one).

    Parameters
    ----------
    config : IngestConfig
    channels : Channels
    log_level : int
        Logging level of the child.
    n_workers : int
        Partial volumes per scan in pool mode.
    prefix : str
        Shared-memory name prefix of the daemon, ``holostream_<pid>``.
    split : bool
        Split mode (one partial volume, ``binned`` and ``handoff`` parts).
    device_budget : DeviceBudget
        What each ``scan_start`` is checked against.
    silent_s : float
        Seconds without a report after which ingest counts as hung.
    reconstruct : multiprocessing.Queue, optional
        Split mode: ingest sends a dead reconstructor's groups again on it.
    """

    def __init__(self, config: Any, channels: Channels, log_level: int, n_workers: int, prefix: str,
                 split: bool, device_budget: Any, security: Any = None, silent_s: float = 10.0,
                 reconstruct: Any = None):
        self.security = security
        self.reconstruct = reconstruct
        self.config, self.channels, self.log_level = config, channels, log_level
        self.n_workers, self.prefix, self.split, self.device_budget = n_workers, prefix, split, device_budget
        self.silent_s = silent_s
        self.process: BaseProcess | None = None
        self.restarts = 0
        self.last_heard = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, settings: Any, first_seq: int) -> None:
        """Spawn ingest; its scans are numbered from ``first_seq`` (no shared-memory name reused)."""
        sweep(f"{self.prefix}_{first_seq}_")  # buffers a dead one made but never announced
        self.process = spawn_context().Process(
            target=child_main, name="holostream-ingest",
            args=(self.log_level, _INGEST, self.config, settings, self.n_workers, self.prefix,
                  self.channels, first_seq, self.split, self.device_budget, self.security, self.reconstruct))
        self.process.start()
        self.last_heard = time.monotonic() + 10.0  # allow for its start (imports, bind)

    def heard(self) -> None:
        """Ingest reported: it is alive and not stuck."""
        self.last_heard = time.monotonic()

    def alive(self) -> bool:
        """Whether ingest runs; a hung one (silent for ``silent_s``) is killed first."""
        if self.process.is_alive() and time.monotonic() - self.last_heard > self.silent_s:
            log.error("ingest (pid %d) silent for %.0f s: killing it", self.process.pid, self.silent_s)
            self.process.kill()
            self.process.join(2.0)
        return self.process.is_alive()

    def restart(self, settings: Any, first_seq: int) -> None:
        """Replace a dead ingest; what it left in the queues is void."""
        # ingest is the only reader of done and commands: a lock held now is orphaned
        written = [self.channels.tasks, self.channels.events]
        if self.reconstruct is not None:  # split mode: it sends a dead reconstructor's groups again
            written.append(self.reconstruct)
        for lock in [self.channels.done._rlock, self.channels.commands._rlock, *(q._wlock for q in written)]:
            free_orphaned_lock(lock, grace_s=2.0)
        drain(self.channels.tasks)  # group tasks of the dead ingest's scans are void
        drain(self.channels.commands)
        self.restarts += 1
        self.start(settings, first_seq)

    def stop(self, timeout_s: float, drain: Callable[[], None] | None = None) -> None:
        """Join it (the ``stop`` event is already set), terminating it if need be."""
        if self.process is not None:
            stop_processes([self.process], timeout_s, drain)
