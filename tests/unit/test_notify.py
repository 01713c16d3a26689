"""The systemd notify protocol reaches a real datagram socket bound as NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket

import pytest

from holostream.service.daemon.notify import Notifier


def receive(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


@pytest.fixture
def systemd_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def test_ready_status_watchdog_stopping_arrive(systemd_socket):
    path, sock = systemd_socket
    n = Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"})
    assert n.enabled
    assert n.ready("listening on tcp://127.0.0.1:5550")
    assert receive(sock) == {"READY": "1", "STATUS": "listening on tcp://127.0.0.1:5550"}
    assert n.status("scan s1: 120 frames/s\nsecond line")
    assert receive(sock) == {"STATUS": "scan s1: 120 frames/s second line"}
    assert n.watchdog()
    assert receive(sock) == {"WATCHDOG": "1"}
    assert n.stopping()
    assert receive(sock) == {"STOPPING": "1"}
    assert n.watchdog_interval_s() == pytest.approx(1.5)
    n.close()
    assert not n.ready()


def test_abstract_namespace_socket():
    name = f"holostream-test-notify-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        n = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert receive(sock) == {"READY": "1"}
    finally:
        sock.close()


def test_without_systemd_everything_is_a_noop():
    n = Notifier.from_environ({})
    assert not n.enabled
    assert not n.ready() and not n.status("x") and not n.watchdog() and not n.stopping()
    assert n.watchdog_interval_s() is None


def test_watchdog_of_another_process_is_ignored(systemd_socket):
    path, _ = systemd_socket
    assert Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000",
                                  "WATCHDOG_PID": "1"}).watchdog_interval_s() is None
    assert Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000",
                                  "WATCHDOG_PID": str(os.getpid())}).watchdog_interval_s() == 0.5


def test_vanished_socket_does_not_raise(tmp_path):
    n = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert n.enabled and not n.ready()
