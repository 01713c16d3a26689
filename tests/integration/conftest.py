"""Fixtures of the integration tests: daemons (fresh, shared for the session, kept per mode),
subscribers and the scans they stream; the process helpers are in live_service.py.

Everything synchronises by polling with deadlines (docs/testing.md: which daemons are shared,
and what a test on a shared one must keep to).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from live_service import (_STOPPING, DELTA_BETA, SCAN, Daemon, Subscriber, client_context, cluster_daemon,
                          daemon_in_mode, free_port, holostream_shm, idle, pid_alive, wait_actors, wait_for)


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
