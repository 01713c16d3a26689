"""Measure how long holostream takes to recover from SIGKILL of a worker, of the split-mode
reconstructor and of the daemon itself (issue 9). Real daemons on free loopback ports.

    .venv/bin/python scripts/recovery_times.py

Prints one line per case: seconds from the kill until the replacement process runs (worker,
reconstructor), or until a successor daemon serves (daemon).
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from conftest import Daemon, holostream_shm, pid_alive, wait_for  # noqa: E402 - the test suite's daemon helper



def worker_case(tmp: Path) -> float:
    daemon = Daemon(tmp / "worker")
    try:
        victim = daemon.wait_ready(60)["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        start = time.monotonic()
        wait_for(lambda: (w := daemon.status()["workers"][0])["alive"] and w["pid"] != victim, 60, "a new worker 0")
        return time.monotonic() - start
    finally:
        daemon.close()


def reconstructor_case(tmp: Path) -> float:
    daemon = Daemon(tmp / "reconstructor", workers_keys={"mode": "split", "batch": 4})
    try:
        wait_for(lambda: (daemon.wait_ready(60)["reconstructor"] or {}).get("alive"), 60, "the reconstructor")
        victim = daemon.status()["reconstructor"]["pid"]
        os.kill(victim, signal.SIGKILL)
        start = time.monotonic()
        wait_for(lambda: (r := daemon.status()["reconstructor"])["alive"] and r["pid"] != victim, 60,
                 "a new reconstructor")
        return time.monotonic() - start
    finally:
        daemon.close()


def daemon_case(tmp: Path) -> tuple[float, float]:
    first = Daemon(tmp / "first")
    second = None
    try:
        status = first.wait_ready(60)
        children = [w["pid"] for w in status["workers"]] + [status["ingest_pid"]]
        first.proc.send_signal(signal.SIGKILL)
        start = time.monotonic()
        first.proc.wait(10)
        wait_for(lambda: not any(pid_alive(p) for p in children), 30, "the children to die")
        children_s = time.monotonic() - start
        # what systemd does (Restart=on-failure): start the next one on the same addresses
        second = Daemon(tmp / "second", same_addresses_as=first)
        second.wait_ready(60)
        wait_for(lambda: second.status()["ingest_reports"] > 0, 30, "ingest bound")
        assert holostream_shm(first.proc.pid) == []
        return children_s, time.monotonic() - start
    finally:
        if second is not None:
            second.close()
        first.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        print(f"worker: replacement alive {worker_case(tmp):.2f} s after SIGKILL")
        print(f"reconstructor (split mode): replacement alive {reconstructor_case(tmp):.2f} s after SIGKILL")
        children_s, serving_s = daemon_case(tmp)
        print(f"daemon: children gone {children_s:.2f} s after SIGKILL; a new daemon on the same addresses "
              f"answers with all workers alive and ingest bound {serving_s:.2f} s after SIGKILL "
              "(systemd adds RestartSec=2s)")


if __name__ == "__main__":
    main()
