"""The dispatcher process of cluster mode (``[cluster] actors > 0``): the reconstructor's place.

It reads split mode's ``reconstruct`` queue and drives an :class:`~holostream.service.daemon.actors.ActorPool`
of ``LiveActor`` s on a Dask cluster: the scheduler at ``[cluster] address`` (mutual TLS), or
a local cluster of ``actors`` worker processes started here, which dies with this process.
docs/architecture.md ("Live on several GPUs") has the design.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

from holostream.service.daemon.actors import ActorPool
from holostream.service.daemon.channels import Channels
from holostream.service.daemon.reconstructor import gather

log = logging.getLogger(__name__)

_MIN_WAIT_S, _MAX_WAIT_S = 0.001, 0.02  # idle polling, as in the reconstructor
_BUSY_WAIT_S = 0.002     # longest poll while actors hold work: their answers are not waited on


def _finish(pool: ActorPool, timeout_s: float) -> None:
    """At shutdown: what the actors hold goes into the volumes, within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while pool.busy() and time.monotonic() < deadline:
        pool.check_lost()
        pool.dispatch()
        pool.poll()
        pool.collect_due(force=True)
        time.sleep(_MIN_WAIT_S)


def run_dispatcher(cluster: Any, device: str, channels: Channels, reconstruct: Any, batch: int) -> None:
    """Entry point of the dispatcher process (cluster mode); returns when told to stop.

    Parameters
    ----------
    cluster : ClusterConfig
        ``[cluster]``: scheduler address ("" starts a local cluster of ``actors`` worker
        processes here, which dies with this process), TLS folder, actors, threads.
    device : {"cpu", "gpu", "auto"}
        The actors' device (resolved on each worker).
    channels : Channels
    reconstruct : multiprocessing.Queue
        Binned groups from the workers, or ``{"type": "stop"}``.
    batch : int
        Most groups per call of an actor.
    """
    from holostream.service.cluster.engine import TLSFiles, close, connect

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when we stop
    import dask
    import distributed  # noqa: F401 - its import sets its loggers' levels: ours must come after

    # Dask logs every connection at INFO; what matters here (an actor lost, redone) we log
    logging.getLogger("distributed").setLevel(max(logging.WARNING, log.getEffectiveLevel()))

    # A local cluster's workers inherit these. Dask's statistical profiler samples each
    # worker's stacks every 10 ms, with the GIL, beside the actor's computation; and its
    # MALLOC_TRIM_THRESHOLD_ (put into every worker's environment; None unsets it) turns off
    # glibc's dynamic mmap threshold, so that each of the FFT's large temporaries is mapped
    # and faulted in afresh (measured: a third more CPU time for the same FFTs, BENCHMARKS.md)
    dask.config.set({"distributed.worker.profile.enabled": False,
                     "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
    tls = TLSFiles.from_dir(cluster.tls) if cluster.tls else None
    client = connect(cluster.address or None, workers=cluster.actors, tls=tls, timeout_s=60.0,
                     direct_to_workers=True)
    pool = ActorPool(client, channels, cluster.actors, batch, device, cluster.threads, cluster.collect_interval_s,
                     cluster.actor_timeout_s)
    log.info("dispatcher ready: %d actor(s) on %s, batches of %d", cluster.actors,
             cluster.address or "a local cluster", batch)
    parent = os.getppid()
    wait = _MIN_WAIT_S
    try:
        while not channels.stop.is_set():
            messages = gather(reconstruct, batch, pool.take)
            pool.maintain()
            pool.check_lost()
            pool.dispatch()
            pool.poll()
            pool.collect_due()
            pool.report()
            if any(m.get("type") == "stop" for m in messages):
                break
            if messages:
                wait = _MIN_WAIT_S
                continue
            pool.release_idle()
            time.sleep(wait)  # polling: never block inside Queue.get (see run_worker)
            wait = min(2 * wait, _BUSY_WAIT_S if pool.busy() else _MAX_WAIT_S)
            if os.getppid() != parent:
                log.error("dispatcher: daemon (pid %d) is gone; exiting", parent)
                break
    finally:
        _finish(pool, timeout_s=2.0)
        pool.report(force=True)
        pool.close()
        close(client)
        log.info("dispatcher stopped")
