"""Cluster mode's actor pool: one live scan's binned groups reconstructed by actors on Dask.

With ``[cluster] actors > 0`` the daemon runs split mode, and the dispatcher process
(``dispatcher.py``) takes the place of the reconstructor: it reads the same ``reconstruct``
queue; this pool marks each group taken in the scan's ``handoff`` part, and sends batches of binned groups to :class:`LiveActor` s, one per
Dask worker (one per GPU; on a local cluster, one per worker process, started here). Each
actor keeps a partial volume of its angles (angle split); :class:`ActorPool` collects the
partials, adds them to ``volume[0]`` and only then reports the groups ``group_done`` exactly
as the reconstructor does, so the daemon's live and final volumes work unchanged. A group
stays in ``binned`` on this node until its actor's partial is collected: an actor whose
worker is lost (killed, its node gone) has every group it held sent again to the others.
docs/architecture.md ("Live on several GPUs") has the design and its measured bytes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from holostream.service.daemon.channels import Channels
from holostream.service.daemon.handoff import Claims
from holostream.service.daemon.reconstructor import _result, by_scan
from holostream.service.daemon.rings import AbsorptionSum
from holostream.shared.scanbuffers import HANDOFF_ADDING, HANDOFF_COMMITTED, ScanBuffers
from holostream.workers.backend import get_backend

log = logging.getLogger(__name__)

_INFLIGHT = 2            # batches sent to one actor before its first returns (hides the round trip)
_IDLE_COLLECT_S = 0.1    # an actor with nothing to do is collected after this long without new groups
_REPORT_EVERY_S = 1.0    # the actors' status goes to the daemon at least this often when it changed
_MAX_LOSSES = 3          # a group whose actor was lost this often is failed, not sent again
_IDLE_RELEASE_S = 10.0   # cached scans are let go after this long without a group


@dataclass
class _Batch:
    """Groups of one scan sent to one actor in one call."""

    key: str
    messages: list[dict[str, Any]]
    future: Any
    sent: float           # perf_counter at submission
    alone: bool           # the actor had nothing else in flight (its round trip is pure overhead)


@dataclass
class _Actor:
    """One actor: where it lives, what it holds (in flight, back-projected but not collected)."""

    address: str
    future: Any                      # the Dask future of the actor itself
    handle: Any = None               # the Actor proxy once created
    info: dict[str, Any] = field(default_factory=dict)
    info_future: Any = None
    scans: set[str] = field(default_factory=set)         # set up on the actor
    inflight: list[_Batch] = field(default_factory=list)
    held: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)  # key → group → message
    collecting: tuple[str, Any] | None = None            # (key, future)
    last_collect: float = field(default_factory=time.monotonic)
    collect_started: float = 0.0
    collect_seconds: float = 0.0
    early: set[tuple[str, int]] = field(default_factory=set)  # collected before their batch returned
    groups_done: int = 0
    batches: int = 0
    compute_s: float = 0.0           # the actor's own seconds on the batches it returned

    def ready(self) -> bool:
        return self.handle is not None and bool(self.info)

    def holds(self) -> bool:
        return any(self.held.values())


class _Scan:
    """A scan seen by the dispatcher: its shared memory and what every actor needs to set it up."""

    def __init__(self, message: dict[str, Any]):
        from holostream.service.cluster.live import ScanSetup

        self.key = str(message["buffers"]["prefix"])
        self.buffers = ScanBuffers.attach(message["buffers"])
        self.setup = ScanSetup(scan=message["scan"], settings=message["settings"],
                               half_acquisition=bool(message.get("half_acquisition")),
                               reference=np.array(self.buffers.reference),
                               volume_shape=tuple(self.buffers.volume.shape[1:]),
                               centre_deferred=bool(message.get("centre_deferred")))
        # the streaming ring filter's sums come from the binned groups held here (daemon/rings.py)
        self.stripes = AbsorptionSum(str(message["settings"].get("ring_filter", "none")),
                                     tuple(self.buffers.binned.shape[1:]), get_backend("cpu"))
        self.last_used = time.monotonic()

    def commit(self, volume: np.ndarray, messages: list[dict[str, Any]], weight: float,
               center_px: float) -> None:
        """Add a collected partial to ``volume[0]``, then mark its groups committed in ``handoff``."""
        groups = [int(m["group"]) for m in messages]
        self.buffers.handoff[groups, 0] = HANDOFF_ADDING  # killed from here on: not added again
        self.buffers.volume[0] += volume
        self.stripes.add(self.buffers.binned[groups], [float(m["weight"]) for m in messages],
                         [float(m["angle_deg"]) for m in messages])
        self.stripes.commit(self.buffers.absorption_sum[0], self.buffers.absorption_weights[0])
        self.buffers.weights[0] += weight
        for m in messages:
            self.buffers.handoff[int(m["group"])] = (HANDOFF_COMMITTED, float(m["angle_deg"]), float(m["weight"]),
                                                     float(m["n_projections"]), center_px)

    def close(self) -> None:
        self.buffers.close()


class ActorPool:
    """The actors on the cluster and the groups each holds; driven by ``dispatcher.run_dispatcher``.

    Parameters
    ----------
    client : distributed.Client
    channels : Channels
        ``events`` (group results, the actors' status) and ``done`` (to ingest) out.
    actors : int
        Actors wanted, at most one per Dask worker.
    batch : int
        Most groups per call.
    device : str
        The actors' device (``[workers] device``).
    threads : int
        CPU threads per actor.
    collect_interval_s : float
        Longest time between two collects of a busy actor (``[cluster] collect_interval_s``).
    timeout_s : float
        An actor whose oldest call has not answered in this long is lost (``actor_timeout_s``).
    """

    def __init__(self, client: Any, channels: Channels, actors: int, batch: int, device: str,
                 threads: int, collect_interval_s: float, timeout_s: float = 60.0):
        self.client, self.channels = client, channels
        self.wanted, self.batch, self.device, self.threads = actors, batch, device, threads
        self.collect_interval_s = collect_interval_s
        self.timeout_s = timeout_s
        self.actors: list[_Actor] = []
        self.scans: dict[str, _Scan] = {}
        self.backlog: list[dict[str, Any]] = []  # groups taken from the queue (or redone), not sent yet
        self.claims = Claims()  # the arbiter of groups a dead dispatcher's successor gets twice
        self.losses: dict[tuple[str, int], int] = {}
        self.lost_actors = 0
        self.redone = 0
        self.groups_done = 0  # committed to volume[0], by every actor there ever was
        self.bytes = {"binned": 0, "filtered": 0, "partials": 0, "setup": 0}
        self.overheads_s: list[float] = []  # round trip minus compute of batches sent to an idle actor
        self.last_message = time.monotonic()
        self.changed = True
        self.last_report = 0.0
        self.next_look = 0.0  # when maintain() may next ask the scheduler for its workers

    # ---- actors ------------------------------------------------------------------------
    def _workers(self) -> list[str]:
        return sorted(self.client.scheduler_info(n_workers=-1).get("workers", {}))

    def maintain(self) -> None:
        """Start actors on workers that have none; finish the start of those under way."""
        for actor in list(self.actors):
            if actor.handle is None and actor.future.status == "finished":
                actor.handle = actor.future.result()
                actor.info_future = self._call(actor, "info")
            if actor.info_future is not None and actor.info_future.done():
                try:
                    actor.info = actor.info_future.result()
                except Exception as exc:  # noqa: BLE001 - only its worker's loss can fail info()
                    self._drop(actor, f"{type(exc).__name__}: {exc}")
                    continue
                actor.info_future = None
                self.changed = True
                log.info("actor ready on %s (pid %s, %s)", actor.address, actor.info["pid"], actor.info["backend"])
        if len(self.actors) >= self.wanted or time.monotonic() < self.next_look:
            return
        self.next_look = time.monotonic() + 0.5  # a round trip to the scheduler
        from holostream.service.cluster.live import LiveActor

        taken = {a.address for a in self.actors}
        for address in [w for w in self._workers() if w not in taken][: self.wanted - len(self.actors)]:
            future = self.client.submit(LiveActor, self.device, self.threads, actor=True, workers=[address],
                                        allow_other_workers=False, pure=False)
            self.actors.append(_Actor(address, future))

    def _call(self, actor: _Actor, method: str, *args: Any) -> Any:
        """``actor.method(*args)`` (an ActorFuture), or None when the actor is found lost now.

        Dask raises at the call itself once the scheduler has dropped the actor's worker,
        which can happen between :meth:`check_lost` and this call (the client runs its own
        thread); the actor is then dropped here, its groups go back to the backlog.
        """
        try:
            return getattr(actor.handle, method)(*args)
        except RuntimeError as exc:
            if actor in self.actors:
                self._drop(actor, str(exc))
            return None

    def _lost(self, actor: _Actor) -> bool:
        return actor.future.status not in ("pending", "finished")

    def _silent_s(self, actor: _Actor) -> float:
        """Seconds the actor's oldest unanswered call (batch or collect) has waited; 0 with none."""
        oldest = [time.perf_counter() - b.sent for b in actor.inflight if not b.future.done()]
        if actor.collecting is not None and not actor.collecting[1].done():
            oldest.append(time.monotonic() - actor.collect_started)
        return max(oldest, default=0.0)

    def check_lost(self) -> None:
        """Actors whose worker is gone, or silent past ``timeout_s``: their groups go back to the backlog.

        A silent actor (a hung device, a stopped process) keeps its worker in the cluster, so
        only the wait tells; whatever it answers later is ignored (it is no longer an actor here).
        """
        for actor in [a for a in self.actors if self._lost(a)]:
            self._drop(actor, f"its worker is gone ({actor.future.status})")
        for actor in [a for a in self.actors if self._silent_s(a) > self.timeout_s]:
            self._drop(actor, f"no answer for {self._silent_s(actor):.0f} s ([cluster] actor_timeout_s)")

    def _drop(self, actor: _Actor, why: str) -> None:
        self.actors.remove(actor)
        self.lost_actors += 1
        self.changed = True
        messages = [m for b in actor.inflight for m in b.messages
                    if (b.key, int(m["group"])) not in actor.early]  # those are in volume[0] already
        messages += [m for held in actor.held.values() for m in held.values()]
        again, failed = [], []
        for m in messages:
            key = (str(m["buffers"]["prefix"]), int(m["group"]))
            self.losses[key] = self.losses.get(key, 0) + 1
            (failed if self.losses[key] >= _MAX_LOSSES else again).append(m)
        log.error("actor on %s (pid %s) lost: %s; groups %s sent again to the other actors",
                  actor.address, actor.info.get("pid"), why, sorted(int(m["group"]) for m in again))
        self.redone += len(again)
        self.backlog[:0] = sorted(again, key=lambda m: (m["scan_seq"], m["group"]))
        self._fail(failed, f"lost with {_MAX_LOSSES} actors")
        try:
            self.client.cancel(actor.future)
        except (OSError, RuntimeError) as exc:  # the scheduler forgets it with its worker anyway
            log.debug("cancel of a lost actor: %s", exc)

    # ---- groups --------------------------------------------------------------------------
    def take(self, message: dict[str, Any]) -> bool:
        """A group from the queue: marked taken in ``handoff`` at once, then kept in the backlog.

        False for a duplicate (sent again after a dispatcher died; ``daemon/handoff.py``).
        """
        if message.get("type") != "group":
            return True
        self.last_message = time.monotonic()
        try:
            scan = self._scan(message)
            if not self.claims.claim(scan.key, scan.buffers.handoff, int(message["group"])):
                return False
        except (OSError, ValueError, KeyError) as exc:  # the scan's memory is gone (ingest died)
            self._fail([message], f"{type(exc).__name__}: {exc}")
            return True
        self.backlog.append(message)
        return True

    def _scan(self, message: dict[str, Any]) -> _Scan:
        key = str(message["buffers"]["prefix"])
        if key not in self.scans:
            self.scans[key] = _Scan(message)
        self.scans[key].last_used = time.monotonic()
        return self.scans[key]

    def _fail(self, messages: list[dict[str, Any]], error: str) -> None:
        for message in messages:
            event, done = _result(message, error, 0.0, None)
            self.channels.events.put(event)
            self.channels.done.put(done)

    def dispatch(self) -> None:
        """Send batches from the backlog to the ready actors with the fewest batches in flight."""
        while self.backlog:
            ready = [a for a in self.actors if a.ready() and len(a.inflight) < _INFLIGHT]
            if not ready:
                return
            actor = min(ready, key=lambda a: (len(a.inflight), a.batches))
            run = by_scan(self.backlog[: self.batch])[0]
            del self.backlog[: len(run)]
            scan = self.scans[str(run[0]["buffers"]["prefix"])]
            groups = [int(m["group"]) for m in run]
            stack = np.ascontiguousarray(scan.buffers.binned[groups])
            setup = None if scan.key in actor.scans else scan.setup
            future = self._call(actor, "run", scan.key, groups, stack,
                                np.radians([float(m["angle_deg"]) for m in run]),
                                np.array([float(m["weight"]) for m in run]), setup)
            if future is None:  # lost just now: the batch waits for another actor
                self.backlog[:0] = run
                continue
            self.bytes["binned"] += stack.nbytes
            if setup is not None:
                actor.scans.add(scan.key)
                self.bytes["setup"] += setup.reference.nbytes
            actor.inflight.append(_Batch(scan.key, run, future, time.perf_counter(), not actor.inflight))
            actor.batches += 1
            self.changed = True  # reported at most every _REPORT_EVERY_S

    def poll(self) -> None:
        """Take in finished batches and collects; fail or redo what went wrong."""
        for actor in list(self.actors):
            for batch in [b for b in actor.inflight if b.future.done()]:
                try:
                    result = batch.future.result()
                except Exception as exc:  # noqa: BLE001 - sorted below: a lost actor, or the computation
                    if self._connection_error(exc):
                        self._drop(actor, f"{type(exc).__name__}: {exc}")
                        break
                    actor.inflight.remove(batch)
                    log.error("actor on %s: groups %s failed: %s", actor.address,
                              [m["group"] for m in batch.messages], exc)
                    self._fail(batch.messages, f"{type(exc).__name__}: {exc}")
                    continue
                actor.inflight.remove(batch)
                self._finished(actor, batch, result)
            else:
                self._poll_collect(actor)

    @staticmethod
    def _connection_error(exc: BaseException) -> bool:
        # Dask's CommClosedError is an OSError; a call on an actor whose worker the scheduler
        # already took as lost raises RuntimeError("Worker holding Actor was lost ...")
        return isinstance(exc, OSError) or "Actor was lost" in str(exc)

    def _finished(self, actor: _Actor, batch: _Batch, result: dict[str, Any]) -> None:
        scan = self.scans.get(batch.key)
        filtered = result["filtered"]
        self.bytes["filtered"] += filtered.nbytes
        actor.compute_s += float(result["seconds"])
        if batch.alone:
            self.overheads_s.append(time.perf_counter() - batch.sent - float(result["seconds"]))
        held = actor.held.setdefault(batch.key, {})
        for m in batch.messages:
            if (batch.key, int(m["group"])) in actor.early:  # a collect overtook this answer
                actor.early.discard((batch.key, int(m["group"])))
            else:  # the batch's compute time goes with its groups' reports (stage-time metrics)
                held[int(m["group"])] = dict(m, batch_seconds=float(result["seconds"]))
        if scan is not None:
            scan.buffers.sinogram[[int(m["group"]) for m in batch.messages]] = filtered

    # ---- collecting partial volumes ------------------------------------------------------------
    def collect_due(self, force: bool = False) -> None:
        """Ask actors for their partials: every ``collect_interval_s`` while busy, soon when idle."""
        now = time.monotonic()
        idle = not self.backlog and now - self.last_message >= _IDLE_COLLECT_S
        for actor in list(self.actors):
            if actor.collecting is not None or not actor.holds() or not actor.ready():
                continue
            spacing = now - actor.last_collect
            quiet = idle and not actor.inflight and spacing >= 4 * actor.collect_seconds
            if force or quiet or spacing >= self.collect_interval_s:
                key = next(k for k, held in actor.held.items() if held)
                future = self._call(actor, "collect", key)
                if future is not None:
                    actor.collecting = (key, future)
                    actor.collect_started = time.monotonic()

    def _poll_collect(self, actor: _Actor) -> None:
        if actor.collecting is None or not actor.collecting[1].done():
            return
        key, future = actor.collecting
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - a collect fails only when the actor is gone
            self._drop(actor, f"collect failed: {type(exc).__name__}: {exc}")
            return
        actor.collecting = None
        actor.last_collect = time.monotonic()
        actor.collect_seconds = actor.last_collect - actor.collect_started
        # Dask does not order calls on separate connections: the collect may hold groups of
        # a batch whose own answer has not arrived yet; they are committed now, and their
        # answer then only fills the sinogram
        held = actor.held.get(key, {})
        sent = {int(m["group"]): m for b in actor.inflight if b.key == key for m in b.messages}
        messages = []
        for g in result["groups"]:
            if g in held:
                messages.append(held.pop(g))
            elif g in sent:
                messages.append(sent[g])
                actor.early.add((key, g))
        if result["volume"] is None:
            return
        self.bytes["partials"] += result["volume"].nbytes
        scan = self.scans[key]
        center_px = float(result["center_px"])
        scan.commit(result["volume"], messages, float(result["weight"]), center_px)
        actor.groups_done += len(messages)
        self.groups_done += len(messages)
        self.changed = True
        for message in messages:
            event, done = _result(message, None, float(message.get("batch_seconds", 0.0)), center_px)
            self.channels.events.put(event)
            self.channels.done.put(done)

    # ---- scans and status ---------------------------------------------------------------------
    def busy(self) -> bool:
        """Groups in the backlog, in flight, back-projected but not collected, or being collected."""
        return bool(self.backlog) or any(a.inflight or a.holds() or a.collecting for a in self.actors)

    def release_idle(self) -> None:
        """Forget scans no actor holds and no group of which came for ``_IDLE_RELEASE_S``."""
        now = time.monotonic()
        newest = max((s.last_used for s in self.scans.values()), default=now)
        for key, scan in list(self.scans.items()):
            held = any(key in a.held and a.held[key] for a in self.actors)
            pending = any(b.key == key for a in self.actors for b in a.inflight)
            pending = pending or any(str(m["buffers"]["prefix"]) == key for m in self.backlog)
            if held or pending or (scan.last_used >= newest and now - scan.last_used < _IDLE_RELEASE_S):
                continue
            for actor in list(self.actors):
                if key in actor.scans and actor.ready():
                    self._call(actor, "forget", key)
                    actor.scans.discard(key)
                    actor.held.pop(key, None)
            self.scans.pop(key).close()
            log.debug("dispatcher released buffers %s", key)

    def status(self) -> dict[str, Any]:
        """The ``actors`` event: each actor, losses, redone groups, bytes moved, engine overhead."""
        overhead = float(np.median(self.overheads_s)) * 1e3 if self.overheads_s else None
        return {"type": "actors", "wanted": self.wanted, "lost": self.lost_actors, "redone": self.redone,
                "groups_done": self.groups_done,
                "bytes": dict(self.bytes), "overhead_ms": overhead, "overhead_batches": len(self.overheads_s),
                "actors": [{"worker": a.address, "pid": a.info.get("pid"), "host": a.info.get("host"),
                            "ready": a.ready(), "groups_done": a.groups_done, "batches": a.batches,
                            "compute_s": round(a.compute_s, 3)}
                           for a in self.actors]}

    def report(self, force: bool = False) -> None:
        """Send the status to the daemon when it changed (at most every ``_REPORT_EVERY_S``)."""
        now = time.monotonic()
        if force or (self.changed and now - self.last_report >= _REPORT_EVERY_S):
            self.channels.events.put(self.status())
            self.changed, self.last_report = False, now

    def close(self) -> None:
        for scan in self.scans.values():
            scan.close()
        self.scans.clear()
