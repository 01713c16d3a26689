"""The ingest process: PULL socket → validation → one copy into the shared-memory ring → tasks.

One scan is open at a time. Projections are copied once from the ZeroMQ buffer into a free
ring slot; darks and flats are summed into their means (``reference``) and need no slot.
When every projection of an angle group is in the ring and the reference is complete, the
group goes to the workers as a ``tasks`` message; the workers' ``done`` frees its slots.
In split mode a group has two stages: the worker's ``binned`` frees its slots once the
transmission is in the ``binned`` part; the group counts as done at the reconstructor's
``done``; when the reconstructor died holding it (its ``handoff`` row says so) ingest sends
it again to the replacement (``daemon/handoff.py``).

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
from typing import Any

import zmq

from holostream.service.daemon.channels import Channels, drain, get_within
from holostream.service.daemon.curve import Curve
from holostream.service.daemon.ingest_state import Ingest
from holostream.shared.settings import ReconstructionSettings
from holostream.workers.memory import DeviceBudget

#: Exit status of ``holostream serve`` (and of the ingest process) when an address is taken.
EXIT_ADDRESS_IN_USE = 3

log = logging.getLogger(__name__)

POLL_MS = 50  # longest wait for the socket before looking at done/commands/stop again
BATCH = 64  # messages read in one go before looking at the queues
STATS_INTERVAL_S = 0.25


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
               device_budget: DeviceBudget = DeviceBudget(), security: Any = None,
               reconstruct: Any = None) -> None:
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
    reconstruct : multiprocessing.Queue, optional
        Split mode: where the groups a dead reconstructor held go again (``daemon/handoff.py``).
    """
    _keep_freed_buffers()
    ingest = Ingest(config, settings, n_workers, prefix, channels, first_seq, split, device_budget,
                    reconstruct)
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
            ingest.poll()  # several distances: groups held until their offsets were measured
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
