"""A daemon killed with SIGKILL: its children die with it, the next one sweeps and takes over."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.shared_memory import SharedMemory

import pytest

from holostream.service.clients.detector import stream_scan

pytestmark = pytest.mark.integration



def _stream_quietly(address, scan_data, scan_id):
    try:
        stream_scan(address, scan_data, scan_id, fps=20.0, timeout_s=60.0)
    except TimeoutError:
        pass  # the daemon was killed under it: that is the point


def test_sigkilled_daemon_takes_its_children_along_and_its_successor_sweeps(tmp_path, serve, small_scan_data):
    first = serve.Daemon(tmp_path / "first")
    # a segment whose owner (this test) is alive: the successor must leave it alone
    bystander = SharedMemory(name=f"holostream_{os.getpid()}_99_ring", create=True, size=4096)
    second = None
    try:
        status = first.wait_ready(60)
        children = [w["pid"] for w in status["workers"]] + [status["ingest_pid"]]
        sender = threading.Thread(target=_stream_quietly, args=(first.ingest, small_scan_data, "killed"),
                                  daemon=True)
        sender.start()
        serve.wait_for(lambda: (first.status()["n_projections_used"] or 0) >= 5, 60, "the scan to be under way")
        leftovers = serve.shm(first.proc.pid)
        assert leftovers, "an open scan has shared memory"

        killed_at = time.monotonic()
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        serve.wait_for(lambda: not any(serve.pid_alive(p) for p in children), 10, "every child to die with the daemon")
        children_gone_s = time.monotonic() - killed_at
        assert serve.shm(first.proc.pid) == leftovers  # nobody was left to clean up

        second = serve.Daemon(tmp_path / "second", same_addresses_as=first)
        second.wait_ready(60)
        serve.wait_for(lambda: second.status()["ingest_reports"] > 0, 30, "the new ingest to bind the same port")
        recovered_s = time.monotonic() - killed_at
        assert serve.shm(first.proc.pid) == []  # the dead daemon's segments are swept
        assert os.path.exists(f"/dev/shm/{bystander.name}")  # a live owner's are not
        log = second.log.read_text()
        # swept by the successor ("removed N shared-memory segment(s) of dead holostream
        # daemons" in its log), or by any other daemon that started on this machine meanwhile
        # (a parallel test run): every daemon sweeps dead daemons' leftovers at start, so the
        # log line is not asserted; tests/unit/test_scanbuffers.py covers sweep_orphans itself
        assert "Address already in use" not in log

        sub = serve.Subscriber(second.publish)
        try:
            sub.wait_connected()
            stream_scan(second.ingest, small_scan_data, "after_crash", timeout_s=60.0)
            header, _ = sub.volumes_until_final("after_crash", timeout_s=120)[-1]
        finally:
            sub.close()
        assert header["n_projections_used"] == 90
        print(f"children gone {children_gone_s:.2f} s after SIGKILL; successor serving after {recovered_s:.2f} s")
        sender.join(1)
    finally:
        bystander.close()
        bystander.unlink()
        if second is not None:
            second.close()
        first.close()


def test_taken_address_is_one_line_and_exit_status_3(tmp_path, serve):
    cli = [sys.executable, "-m", "holostream.service.cli", "serve", "--workers", "1"]
    for taken_socket in ("control", "ingest"):
        ports = {name: serve.free_port() for name in ("ingest", "publish", "control")}
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            ports[taken_socket] = taken.getsockname()[1]
            start = time.monotonic()
            result = subprocess.run([*cli, *(a for name, port in ports.items()
                                             for a in (f"--{name}", f"tcp://127.0.0.1:{port}"))],
                                    capture_output=True, text=True, timeout=60)
        assert result.returncode == 3, result.stderr
        assert result.stderr.count("Address already in use") == 1, result.stderr  # once, not per retry
        assert "Traceback" not in result.stderr and "serving" not in result.stderr
        assert time.monotonic() - start < 30
