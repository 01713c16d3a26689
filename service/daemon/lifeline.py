"""The first code every spawned child of the daemon runs: die with the daemon, then work.

Kept free of heavy imports on purpose: ``PR_SET_PDEATHSIG`` is set before the child imports
its real module (numpy, scipy, cupy...: seconds on a busy machine), so a daemon killed
during a child's start-up takes that child along at once as well.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import multiprocessing
import os
import signal
import sys
from typing import Any

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the daemon dies, even by SIGKILL.

    No child outlives a killed daemon (it would keep the ingest port, shared memory and
    the multiprocessing resource tracker alive). Linux only; elsewhere the loops' own
    ``getppid()`` checks remain.
    """
    parent = multiprocessing.parent_process()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    except (OSError, AttributeError):
        log.debug("no prctl here: children rely on their getppid() checks")
    if parent is not None and os.getppid() != parent.pid:  # it died before prctl took effect
        os._exit(1)


def child_main(log_level: int, target: str, *args: Any) -> None:
    """Entry of every spawned child: dies with the daemon, logs like it, ignores SIGINT.

    ``target`` is ``"module:function"``, imported only after :func:`die_with_parent`.
    A Ctrl-C in a terminal reaches the whole process group; only the daemon acts on it,
    and it stops its children through the ``stop`` event.
    """
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "  # as the daemon's (cli.py)
    logging.basicConfig(level=log_level, stream=sys.stderr,
                        format=stamp + "%(levelname)s %(processName)s %(name)s: %(message)s")
    module, function = target.split(":")
    getattr(importlib.import_module(module), function)(*args)
