"""Run `holostream serve` for real: a subprocess on free ports, reached through its sockets.

The integration tests' process helpers (their fixtures: conftest.py).

Everything synchronises by polling with deadlines: the daemon is ready when its control
socket answers, a subscriber is connected once it has received a ``status`` message.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from holostream.service.clients.control import NoAnswer, request
from holostream.service.clients.subscriber import decode

#: The small scan of these tests: 64×64 frames of 2 µm, 90 projections over 180°.
SCAN = dict(n_projections=90, rows=64, cols=64, pixel_size_m=2.0e-6, distance_m=0.05,
            energy_kev=17.5, binning=1, n_darks=5, n_flats=5)
DELTA_BETA = 200.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now, below the ephemeral range.

    Port 0 would give an ephemeral port, which the kernel may hand to an outgoing
    connection (every ZeroMQ connect makes one) before the daemon binds it.
    """
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port below the ephemeral range")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a dead child not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.05):
    """Poll ``condition()`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)  # polling period, bounded by the deadline above
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def holostream_shm(pid: int) -> list[str]:
    """Shared-memory segments of the daemon with this pid."""
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"holostream_{pid}_")]


#: Threads waiting for daemons sent SIGTERM by ``Daemon.close`` (joined by ``daemons_reaped``).
_STOPPING: list[threading.Thread] = []


class Daemon:
    """`holostream serve` in a subprocess with a TOML configuration written for it."""

    def __init__(self, tmp_path: Path, workers: int = 2, env: dict | None = None,
                 output_dir: Path | None = None, workers_keys: dict | None = None, metrics: str = "",
                 same_addresses_as: "Daemon | None" = None, ingest_keys: dict | None = None,
                 publish_keys: dict | None = None, extra_toml: str = "", **reconstruction):
        if same_addresses_as is not None:  # a successor of a (killed) daemon
            self.ingest, self.publish, self.control = (same_addresses_as.ingest, same_addresses_as.publish,
                                                       same_addresses_as.control)
        else:
            self.ingest = f"tcp://127.0.0.1:{free_port()}"
            self.publish = f"tcp://127.0.0.1:{free_port()}"
            self.control = f"tcp://127.0.0.1:{free_port()}"
        tmp_path.mkdir(parents=True, exist_ok=True)
        settings = {"publish_interval_s": 0.5, **reconstruction}
        lines = ["[ingest]", f'address = "{self.ingest}"', "ring_slots = 32",
                 *(f"{k} = {json.dumps(v)}" for k, v in (ingest_keys or {}).items()),
                 "[publish]", f'address = "{self.publish}"',
                 *(f"{k} = {json.dumps(v)}" for k, v in
                   {"sndhwm": 100, "status_interval_s": 0.25, **(publish_keys or {})}.items()),
                 f'output_dir = "{output_dir or ""}"',
                 "[control]", f'address = "{self.control}"',
                 # off unless a test asks: daemons of parallel tests must not compete for one port
                 "[metrics]", f'address = "{metrics}"',
                 "[workers]", f"count = {workers}", 'device = "cpu"',
                 *(f"{k} = {json.dumps(v)}" for k, v in (workers_keys or {}).items()),
                 "[reconstruction]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
        lines.append(extra_toml)
        self.output_dir = output_dir
        self.config = tmp_path / "holostream.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = tmp_path / "serve.log"
        self._log = open(self.log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "holostream.service.cli", "serve", "--config", str(self.config)],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def ask(self, message: dict, timeout_s: float = 2.0) -> dict:
        """One control request; its reply."""
        return request(self.control, message, timeout_s)

    def status(self) -> dict:
        reply = self.ask({"cmd": "status"})
        assert reply["ok"], reply
        return reply["status"]

    def wait_ready(self, timeout_s: float = 30.0) -> dict:
        """Poll the control socket until the daemon answers with all workers alive and ingest bound."""
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                status = self.status()
            except NoAnswer:
                return None
            # ingest reporting = its socket is bound (what the daemon's READY=1 waits for too):
            # the control socket answers seconds before that on a busy machine
            return status if (status["workers"] and all(w["alive"] for w in status["workers"])
                              and status["ingest_reports"] > 0) else None
        return wait_for(ready, timeout_s, "the daemon to answer on its control socket")

    def terminate(self, timeout_s: float = 10.0, signum: int = signal.SIGTERM) -> tuple[int, float]:
        """Send ``signum`` (SIGTERM); returns (exit code, seconds it took to exit)."""
        start = time.monotonic()
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon did not exit within {timeout_s} s:\n{self.log.read_text()}")
        return code, time.monotonic() - start

    def close(self) -> None:
        """Stop the daemon if a test left it running: SIGTERM first, so it cleans up after
        itself (a SIGKILLed daemon leaves its multiprocessing semaphores in /dev/shm).

        Its ~1 s of shutdown (children joined, shared memory swept) overlaps the next test: a
        thread waits for it (10 s, then SIGKILL), and the session waits for every such thread
        (``daemons_reaped``). Tests that check how a daemon stops call :meth:`terminate`.
        """
        if self.proc.poll() is None:
            self.proc.terminate()
            reaper = threading.Thread(target=self._reap, name=f"reap-{self.proc.pid}", daemon=True)
            reaper.start()
            _STOPPING.append(reaper)
        else:
            self._log.close()

    def _reap(self) -> None:
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def client_context() -> zmq.Context:
    """The one ZeroMQ context of every client socket the tests open in this process.

    Never terminated by a test: ``zmq_ctx_term`` blocks for as long as any socket of its context
    is open (one a failed test left behind, one a thread still holds, one closed with the
    default infinite linger while its peer is gone): the kind of wait a full-suite run once hung
    in. Tests close their own sockets with linger 0 (or a bounded linger for a sender that must
    deliver; the I/O thread delivers in the background), which never blocks. The control client
    (``clients.control.request``) uses this same context.
    """
    return zmq.Context.instance()


class Subscriber:
    """A SUB client of the daemon's publish socket."""

    def __init__(self, address: str, topics=(b"volume", b"status"), rcvhwm: int = 1000):
        self.sock = client_context().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        for topic in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.sock.connect(address)
        self.status: dict | None = None

    def next(self, timeout_s: float):
        """The next message as ``(topic, header, arrays)``, or None after ``timeout_s``."""
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        topic, header, arrays = decode(self.sock.recv_multipart())
        if topic == "status":
            self.status = header
        return topic, header, arrays

    def wait_connected(self, timeout_s: float = 10.0) -> None:
        """Block until a status message arrives: from then on nothing published is missed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = self.next(0.2)
            if message and message[0] == "status":
                return
        raise AssertionError("no status message from the daemon")

    def volumes_until_final(self, scan_id: str, timeout_s: float) -> list[tuple[dict, np.ndarray]]:
        """Every volume of ``scan_id`` up to and including its final one."""
        volumes = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = self.next(0.2)
            if message is None or message[0] != "volume" or message[1]["scan_id"] != scan_id:
                continue
            volumes.append((message[1], message[2][0]))
            if message[1]["final"]:
                return volumes
        raise AssertionError(f"no final volume of {scan_id} within {timeout_s} s "
                             f"({len(volumes)} intermediate ones)")

    def close(self) -> None:
        """Close the socket (linger 0: returns at once; the shared context stays)."""
        self.sock.close(linger=0)


def cluster_daemon(folder, metrics: str = "", **cluster):
    """A daemon whose groups go to ``actors`` (2) actors on a local Dask cluster (batches of 4)."""
    import json

    keys = {"actors": 2, "collect_interval_s": 0.5, **cluster}
    toml = "[cluster]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in keys.items())
    return Daemon(folder, workers=2, workers_keys={"batch": 4}, extra_toml=toml, metrics=metrics)


def wait_actors(daemon, count: int = 2) -> dict:
    """The daemon ready and ``count`` actors set up on the cluster; their ``cluster`` status."""
    daemon.wait_ready(timeout_s=60)

    def ready():
        cluster = daemon.status()["reconstructor"]["cluster"]
        return cluster if cluster and sum(a["ready"] for a in cluster["actors"]) >= count else None
    return wait_for(ready, 120, f"{count} actors on the local Dask cluster")


def daemon_in_mode(folder, mode: str):
    """A ready daemon of 2 workers (batches of 4): ``pool``, ``split`` or ``cluster`` (2 actors)."""
    if mode == "cluster":
        pytest.importorskip("distributed")
        daemon = cluster_daemon(folder)
    else:
        daemon = Daemon(folder, workers=2, workers_keys={"mode": mode, "batch": 4})
    try:
        daemon.wait_ready()
        if mode == "split":
            wait_for(lambda: daemon.status()["reconstructor"]["alive"], 30, "the reconstructor")
        if mode == "cluster":
            wait_actors(daemon)
    except BaseException:
        daemon.close()
        raise
    return daemon


def idle(daemon: Daemon) -> Daemon:
    """``daemon`` with no scan open: one a previous test left open (interrupted) is aborted."""
    if daemon.status()["state"] != "idle":
        daemon.ask({"cmd": "abort"})
    wait_for(lambda: daemon.status()["state"] == "idle", 30, "the shared daemon to be idle")
    return daemon
