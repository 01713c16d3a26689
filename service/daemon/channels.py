"""The queues and events that connect the daemon's processes (small dicts only, no arrays).

Big data moves through shared memory (``holostream.shared.scanbuffers``); these carry the
slot indices, scan numbers and counters described in docs/architecture.md.
"""

from __future__ import annotations

import multiprocessing
import queue
from dataclasses import dataclass
from multiprocessing.context import SpawnContext
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any, Callable


@dataclass
class Channels:
    """Everything the processes of one daemon share.

    tasks : ingest → workers, ``{"type": "group", ...}`` or ``{"type": "stop"}``
    done : workers → ingest, ``{"type": "done"|"failed", "scan_seq", "group", "slots", ...}``
    events : ingest/workers → daemon, ``{"type": "scan_open"|"progress"|"scan_complete"|"stats"|...}``
    commands : daemon → ingest, ``{"type": "settings"|"abort"|"release", ...}``
    stop : set by the daemon when the service shuts down
    """

    tasks: Queue
    done: Queue
    events: Queue
    commands: Queue
    stop: Event

    def depths(self) -> dict[str, int]:
        """Messages waiting in each queue now (approximate, as multiprocessing counts them)."""
        out = {}
        for name in ("tasks", "done", "events", "commands"):
            try:
                out[name] = getattr(self, name).qsize()
            except NotImplementedError:  # macOS has no sem_getvalue; the depth is unknown there
                pass
        return out


def spawn_context() -> SpawnContext:
    """The start method of every holostream child process (never fork a ZeroMQ process)."""
    return multiprocessing.get_context("spawn")


def make_channels(ctx: SpawnContext | None = None) -> Channels:
    """Create a fresh set of channels in the given (default: spawn) context."""
    ctx = ctx or spawn_context()
    return Channels(ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Event())


def get_within(q: Queue, timeout_s: float) -> dict[str, Any] | None:
    """The next message of ``q``, or None after ``timeout_s`` seconds."""
    try:
        return q.get(timeout=timeout_s)
    except queue.Empty:
        return None


def drain(q: Queue, handler: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Hand every message ``q`` holds now to ``handler`` (None: discard them)."""
    while True:
        try:
            msg = q.get_nowait()
        except queue.Empty:
            return
        if handler is not None:
            handler(msg)
