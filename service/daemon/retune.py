"""Re-tuned volumes made off the daemon's main loop, the newest request winning.

A re-centred or re-filtered volume is one back-projection of every arrived projection
(~0.1-2 s at demo size on a CPU); made on the main loop it held up control replies and
events (BENCHMARKS.md, issue 11). :class:`Retuner` runs such jobs in one background thread:
the numba kernel and numpy's FFTs release the GIL, so the loop keeps answering meanwhile.

Jobs carry a key (the scan's ``scan_seq``, or ``"kept"`` for the last completed scan). A
job submitted while another of the same key waits replaces it (coalescing: the operator's
newest value wins, earlier ones are never computed); a job of a key being computed waits
for it. The loop collects finished jobs with :meth:`Retuner.finished` and publishes them.
Before a scan's shared memory goes away the loop calls :meth:`Retuner.forget`, which drops
its waiting job and waits for the one running, so no job ever reads unmapped memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import numpy as np

from holostream.workers.backend import Backend

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One volume to make: ``compute()`` returns it; ``info`` travels back with it.

    Attributes
    ----------
    key : hashable
        ``scan_seq`` of a live scan, ``"kept"`` for the last completed one.
    compute : callable
        ``compute() -> ndarray float32 (nz, ny, nx)``, run in the background thread.
    info : dict
        What the loop needs to publish the result (header fields, the values asked for).
    submitted : float
        ``time.monotonic()`` at submission.
    """

    key: Hashable
    compute: Callable[[], np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)
    submitted: float = field(default_factory=time.monotonic)


@dataclass
class Result:
    """A finished job: its volume, or the error that stopped it, and how long it took."""

    job: Job
    volume: np.ndarray | None
    error: str | None
    compute_s: float


class Retuner:
    """One background thread computing re-tuned volumes, at most one waiting job per key.

    Parameters
    ----------
    backend : Backend
        The CPU backend the jobs use (given to them by the daemon; kept for warming).
    warm : callable or None
        Run first in the thread (e.g. a tiny back-projection, so that loading the compiled
        kernel does not delay the first re-tune).
    """

    def __init__(self, backend: Backend, warm: Callable[[], None] | None = None):
        self.backend = backend
        self._cond = threading.Condition()
        self._waiting: OrderedDict[Hashable, Job] = OrderedDict()
        self._running: Job | None = None
        self._done: list[Result] = []
        self._closed = False
        self.coalesced = 0  # jobs replaced by a newer one before they started
        self.warm_s: float | None = None
        self._thread = threading.Thread(target=self._run, args=(warm,), name="retune", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> bool:
        """Queue ``job``; True when it replaced a waiting job of its key (coalesced)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the retuner is closed")
            replaced = self._waiting.pop(job.key, None) is not None
            self.coalesced += replaced
            self._waiting[job.key] = job
            self._cond.notify_all()
        return replaced

    def busy(self, key: Hashable) -> bool:
        """True while a job of ``key`` waits or runs."""
        with self._cond:
            return key in self._waiting or (self._running is not None and self._running.key == key)

    def finished(self) -> list[Result]:
        """The jobs finished since the last call, in the order they finished."""
        with self._cond:
            done, self._done = self._done, []
        return done

    def forget(self, key: Hashable, timeout_s: float = 60.0) -> None:
        """Drop the waiting job of ``key`` and wait (≤ ``timeout_s``) for its running one."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._waiting.pop(key, None)
            while self._running is not None and self._running.key == key:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"a re-tune job of {key!r} still runs after {timeout_s} s")
                self._cond.wait(left)
            self._done = [r for r in self._done if r.job.key != key]

    def close(self, timeout_s: float = 60.0) -> None:
        """Drop waiting jobs, let the running one end, stop the thread."""
        with self._cond:
            self._closed = True
            self._waiting.clear()
            self._cond.notify_all()
        self._thread.join(timeout_s)

    def status(self) -> dict[str, Any]:
        """For the daemon's status: what runs, what waits, how many were coalesced."""
        with self._cond:
            return {"running": None if self._running is None else str(self._running.key),
                    "waiting": [str(k) for k in self._waiting], "coalesced": self.coalesced,
                    "warm_s": self.warm_s}

    def _run(self, warm: Callable[[], None] | None) -> None:
        if warm is not None:
            start = time.perf_counter()
            try:
                warm()
            except Exception:  # a failed warm-up only costs the first re-tune its time; say why
                log.exception("warming the re-tune kernel failed")
            self.warm_s = round(time.perf_counter() - start, 3)
            log.debug("re-tune kernel warm in %.2f s", self.warm_s)
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                _, job = self._waiting.popitem(last=False)
                self._running = job
            start = time.perf_counter()
            volume, error = None, None
            try:
                volume = job.compute()
            except Exception as exc:  # reported by the loop (last_error), the thread lives on
                log.exception("re-tune job %r failed", job.key)
                error = f"{type(exc).__name__}: {exc}"
            with self._cond:
                self._running = None
                self._done.append(Result(job, volume, error, time.perf_counter() - start))
                self._cond.notify_all()
