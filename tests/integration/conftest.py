"""Run `holostream serve` for real: a subprocess on free ports, reached through its sockets.

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
from types import SimpleNamespace

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


@pytest.fixture(scope="session", autouse=True)
def daemons_reaped():
    """Every daemon ``Daemon.close`` stopped in the background has exited when the session ends
    (each reaper is bounded: 10 s, then SIGKILL)."""
    yield
    while _STOPPING:
        _STOPPING.pop().join(30)


@pytest.fixture(scope="session", autouse=True)
def children_take_ctrl_c():
    """SIGINT handled (not ignored) in this process, so the commands the tests start can be
    interrupted as from a terminal.

    A non-interactive shell starts a background job (``pytest ... &`` in a script) with SIGINT
    ignored; an ignored signal stays ignored across exec, and Python then installs no
    KeyboardInterrupt handler: ``holostream stream`` went on streaming after the Ctrl-C of
    test_control_cli (found by running the suite that way).
    """
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture
def ingest_in_process(request):
    """``make(n_workers=1, ring_slots=4, **kwargs) -> (Ingest, Channels)``: the ingest state
    machine in the test's own process (no socket; messages go to ``Ingest.handle``); closed
    and its shared memory swept after the test."""
    from holostream.service.daemon.channels import make_channels
    from holostream.service.config import IngestConfig
    from holostream.service.daemon.ingest_state import Ingest
    from holostream.shared.scanbuffers import sweep
    from holostream.shared.settings import ReconstructionSettings

    made = []

    def make(n_workers: int = 1, ring_slots: int = 4, **kwargs):
        channels = make_channels()
        prefix = f"holostream_{os.getpid()}_inproc{len(made)}"
        ingest = Ingest(IngestConfig(ring_slots=ring_slots), ReconstructionSettings(), n_workers, prefix,
                        channels, **kwargs)
        made.append((ingest, prefix))
        return ingest, channels
    yield make
    for ingest, prefix in made:
        ingest.close()
        sweep(prefix)


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


#: The daemon ``mode_daemon`` handed out last, kept for the next test if it asks for the same
#: mode: ``{mode: Daemon}``, one entry at most.
_MODE_DAEMON: dict[str, Daemon] = {}


def _close_mode_daemon() -> None:
    for daemon in _MODE_DAEMON.values():
        daemon.close()
    _MODE_DAEMON.clear()


@pytest.fixture
def mode_daemon(tmp_path_factory):
    """``mode_daemon(mode) -> Daemon``: a ready daemon of ``daemon_in_mode``, shared with the
    next tests that ask for the same mode (consecutive parametrised cases, consecutive modules).

    A cluster daemon costs ~8 s (a local Dask cluster and its actors), the others ~3 s. The
    daemon is closed once a test asks for another mode or the next test does not use this
    fixture (``pytest_runtest_teardown`` below), so at most one idles beside the suite. Tests
    on it use their own scan ids and set only what belongs to a scan (``cor_px``, a
    completed scan's re-tuning), or run last on it.
    """
    def get(mode: str) -> Daemon:
        if mode not in _MODE_DAEMON:
            _close_mode_daemon()
            _MODE_DAEMON[mode] = daemon_in_mode(tmp_path_factory.mktemp(mode), mode)
        return idle(_MODE_DAEMON[mode])
    return get


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    if _MODE_DAEMON and (nextitem is None or "mode_daemon" not in getattr(nextitem, "fixturenames", ())):
        _close_mode_daemon()
    if _SHARED and (nextitem is None or nextitem.path.parent != Path(__file__).parent):
        daemon = _SHARED.pop()  # after the last integration test: SIGTERM, exit status 0
        try:
            code, _ = daemon.terminate()
            assert code == 0, daemon.log.read_text()
        finally:
            daemon.close()


@pytest.fixture(scope="session")
def serve():
    """The helpers of this file for test modules (conftest is not importable by name)."""
    return SimpleNamespace(Daemon=Daemon, Subscriber=Subscriber, wait_for=wait_for, free_port=free_port,
                           shm=holostream_shm, pid_alive=pid_alive, DELTA_BETA=DELTA_BETA, context=client_context,
                           cluster_daemon=cluster_daemon, wait_actors=wait_actors, idle=idle,
                           shared_daemon_of=shared_daemon_of,
                           daemon_in_mode=daemon_in_mode)


@pytest.fixture(scope="session")
def four_distance_files(tmp_path_factory):
    """``(folder, paths, stdout)`` of ``holostream simulate --distances 4`` (48² × 60 projections,
    with ``truth.h5``): made once for the offline and the live multi-distance tests."""
    folder = tmp_path_factory.mktemp("md")
    proc = subprocess.run([sys.executable, "-m", "holostream.service.cli", "simulate", "-o", str(folder / "s.nx"),
                           "--distances", "4", "--size", "48", "--projections", "60", "--delta", "2e-6",
                           "--objects", "12", "--seed", "3", "--ground-truth", str(folder / "truth.h5")],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return folder, [folder / f"s_{i}.nx" for i in range(1, 5)], proc.stdout


@pytest.fixture(scope="session")
def small_scan():
    """A simulated 64×64, 90-projection scan of one material (δ/β 200): SimulatedScan."""
    from holostream.workers.phantom import random_phantom
    from holostream.workers.simulate import simulate_scan

    phantom = random_phantom(11, radius_m=52e-6, height_m=110e-6, n_objects=9,
                             size_range=(0.15, 0.35), materials=((1.0e-6, 5.0e-9),))
    return simulate_scan(phantom, seed=3, **SCAN)


@pytest.fixture(scope="session")
def small_scan_data(small_scan):
    """``small_scan`` as ScanData (what stream_scan and reconstruct_scan take)."""
    from holostream.service.files.nxtomo import scan_data_from_simulation

    return scan_data_from_simulation(small_scan)


@pytest.fixture
def daemon(tmp_path):
    """A running daemon (2 workers, live volumes every 0.5 s), stopped after the test."""
    d = Daemon(tmp_path)
    try:
        d.wait_ready()
        yield d
    finally:
        d.close()


def idle(daemon: Daemon) -> Daemon:
    """``daemon`` with no scan open: one a previous test left open (interrupted) is aborted."""
    if daemon.status()["state"] != "idle":
        daemon.ask({"cmd": "abort"})
    wait_for(lambda: daemon.status()["state"] == "idle", 30, "the shared daemon to be idle")
    return daemon


#: The session's default daemon (``shared_daemon``), once a test has asked for it.
_SHARED: list[Daemon] = []


def shared_daemon_of(tmp_path_factory) -> Daemon:
    """The session's default daemon, started on first use, idle, with its start-up settings.

    A test that changed a setting (``set filter=...``) and failed before it changed it back
    leaves it changed: given back here, once ingest has taken it and the re-tune of the kept
    scan it causes is done, so the next test starts from the defaults.
    """
    if not _SHARED:
        folder = tmp_path_factory.mktemp("shared")
        daemon = Daemon(folder, output_dir=folder / "volumes")
        try:
            daemon.wait_ready()
        except BaseException:
            daemon.close()
            raise
        daemon.defaults = daemon.status()["settings"]
        _SHARED.append(daemon)
    daemon = idle(_SHARED[0])
    status = daemon.status()
    changed = {k: v for k, v in daemon.defaults.items() if status["settings"].get(k) != v}
    if changed:
        reply = daemon.ask({"cmd": "set", "params": changed})
        assert reply["ok"], reply
        reports = status["ingest_reports"]
        wait_for(lambda: (s := daemon.status())["ingest_reports"] >= reports + 2
                 and s["retune"]["running"] is None and not s["retune"]["waiting"], 60,
                 "the shared daemon's settings to be back to its defaults")
    return daemon


@pytest.fixture
def shared_daemon(tmp_path_factory):
    """The session's default daemon (2 workers, live volumes every 0.5 s, final volumes written
    to ``output_dir``) for the tests that need no fresh one; a module opts in by overriding
    ``daemon`` with it.

    A daemon costs ~3 s and four interpreters' imports on 2 cores to start and ~1 s to stop,
    and about eight modules need only this one. Tests on it use their own scan ids, count from
    what it had counted before them and give back the settings they change (checked, and done
    for them if they failed first: ``shared_daemon_of``). It is stopped with SIGTERM after the
    last integration test and must exit with status 0 (``pytest_runtest_teardown``).
    """
    return shared_daemon_of(tmp_path_factory)


@pytest.fixture
def subscribe():
    """``subscribe(address, **kwargs) -> Subscriber``; each one closed after the test, failed or not."""
    made = []

    def make(address: str, **kwargs) -> Subscriber:
        made.append(Subscriber(address, **kwargs))
        return made[-1]
    yield make
    for subscriber in made:
        subscriber.close()


@pytest.fixture
def subscriber(daemon):
    """A subscriber connected to ``daemon`` (volumes and status)."""
    s = Subscriber(daemon.publish)
    s.wait_connected()
    yield s
    s.close()
