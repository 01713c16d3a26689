"""systemd notification: the daemon talks to the datagram socket named by NOTIFY_SOCKET."""

from __future__ import annotations

import signal
import socket
import time

import pytest

pytestmark = pytest.mark.integration


def receive_until(sock: socket.socket, wanted: str, timeout_s: float, seen: list[str]) -> None:
    """Collect datagrams into ``seen`` until one has the line ``wanted``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            message = sock.recv(4096).decode()
        except socket.timeout:
            break
        seen.append(message)
        if wanted in message.splitlines():
            return
    raise AssertionError(f"no {wanted} within {timeout_s} s; got {seen}")


def test_ready_watchdog_status_and_stopping(tmp_path, serve):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    daemon = serve.Daemon(tmp_path, env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"})
    try:
        seen: list[str] = []
        receive_until(sock, "READY=1", 30, seen)
        # READY=1 comes once every socket is bound (ingest's too, it has reported)
        status = daemon.status()
        assert status["state"] == "idle" and status["ingest_reports"] >= 1
        receive_until(sock, "WATCHDOG=1", 5, seen)
        assert any(line.startswith("STATUS=") for m in seen for line in m.splitlines())
        code, _ = daemon.terminate(timeout_s=10, signum=signal.SIGINT)  # Ctrl-C stops it too
        assert code == 0
        receive_until(sock, "STOPPING=1", 5, seen)
        ready_at = next(i for i, m in enumerate(seen) if "READY=1" in m.splitlines())
        assert ready_at == min(i for i, m in enumerate(seen) if "READY=1" in m or "STOPPING=1" in m)
    finally:
        daemon.close()
        sock.close()
