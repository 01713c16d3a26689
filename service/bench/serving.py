"""A daemon of its own for the live benchmarks: ``holostream serve`` in a child process.

The live benchmarks (re-tuning, several distances, actors) time a real daemon from outside,
as an operator's client would: :func:`serving` starts it with its output in a log file, waits
until its control socket answers, and stops it with SIGTERM (SIGKILL after 30 s) however the
benchmark ends.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), for the report's machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


def free_address() -> str:
    """A loopback TCP address that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@contextmanager
def serving(options: list[str], log_path: str | Path, control: str,
            start_timeout_s: float = 60.0) -> Iterator[subprocess.Popen]:
    """``holostream serve OPTIONS`` running until the block ends; its control answers on entry.

    Parameters
    ----------
    options : list of str
        Options of ``holostream serve`` (``--config``, ``--ingest``, ...).
    log_path : str or Path
        Where its stdout and stderr go.
    control : str
        Its control address, asked for ``status`` until it answers.
    start_timeout_s : float
        Seconds it may take to answer.

    Raises
    ------
    RuntimeError
        It exited or did not answer in time (the message names the log).
    """
    from holostream.service.clients.control import NoAnswer, request

    with open(log_path, "w") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "holostream.service.cli", "serve", *options],
                                  stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                request(control, {"cmd": "status"}, 0.5)
                break
            except NoAnswer:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon did not start; see {log_path}") from None
        yield daemon
    finally:
        stop_process(daemon, 30.0)


def stop_process(proc: subprocess.Popen, timeout_s: float) -> int:
    """SIGTERM ``proc`` (if still running), SIGKILL it after ``timeout_s``; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def subscribed(publish: str, timeout_s: float = 20.0):
    """A SUB socket on ``volume`` and ``status``, once it has received a status (it has joined).

    Raises
    ------
    RuntimeError
        No status within ``timeout_s`` (the daemon publishes one every second).
    """
    import zmq

    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for topic in (b"volume", b"status"):
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(publish)
    if not sub.poll(int(timeout_s * 1000)):
        sub.close()
        raise RuntimeError(f"no status from the daemon within {timeout_s:g} s")
    return sub
