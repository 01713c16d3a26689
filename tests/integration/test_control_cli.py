"""The control commands of the CLI against a real daemon: set, config, abort, republish, status.

Each finds the daemon through its TOML file (``--config``), as an operator's shell would.
Ctrl-C ends a command with one line and exit status 130, never a traceback.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import pytest

from holostream.service.clients.detector import stream_scan

pytestmark = pytest.mark.integration


@pytest.fixture
def daemon(shared_daemon):
    """The session's shared daemon (conftest.shared_daemon): the tests count from what it had
    done before them and give back the settings they change."""
    return shared_daemon


def holostream(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "holostream.service.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_set_config_abort_republish_through_the_toml(daemon, subscriber, small_scan_data, serve):
    config = daemon.config
    status = holostream("status", "--config", config, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "idle"
    failed = json.loads(status.stdout)["scans_failed"]

    nothing = holostream("abort", "--config", config)
    assert nothing.returncode == 1 and nothing.stderr.strip() == \
        "holostream abort: the daemon refused: no scan is being reconstructed"
    nothing = holostream("republish", "--config", config)
    assert nothing.returncode == 1 and "no final volume" in nothing.stderr

    changed = holostream("set", "filter=hann", "publish_interval_s=0.25", "--config", config)
    assert changed.returncode == 0, changed.stderr
    assert "filter=hann" in changed.stdout and "publish_interval_s=0.25" in changed.stdout
    refused = holostream("set", "colour=blue", "--config", config)
    assert refused.returncode == 1 and "colour" in refused.stderr and "Traceback" not in refused.stderr
    shown = holostream("config", "--config", config, "--json")
    assert json.loads(shown.stdout)["reconstruction"]["filter"] == "hann"
    toml = holostream("config", "--config", config)
    assert 'filter = "hann"' in toml.stdout and f'address = "{daemon.control}"' in toml.stdout

    # a scan with the new settings, then its final volume again on request
    stream_scan(daemon.ingest, small_scan_data, "cli_0001")
    header, _ = subscriber.volumes_until_final("cli_0001", 120)[-1]
    assert header["filter"] == "hann"
    again = holostream("republish", "--config", config)
    assert again.returncode == 0 and again.stdout.strip() == f"republished cli_0001 volume {header['seq']}"
    # (the shared daemon may still publish a re-tuned volume of an earlier test's scan)
    republished = serve.wait_for(
        lambda: (lambda m: m if m and m[0] == "volume" and m[1]["scan_id"] == "cli_0001" else None)(subscriber.next(0.2)),
        10, "the republished volume")
    assert republished[1]["republished"] and republished[1]["seq"] == header["seq"]

    # abort a scan while it streams
    sender = threading.Thread(target=stream_scan, args=(daemon.ingest, small_scan_data, "cli_0002"),
                              kwargs={"fps": 20}, daemon=True)
    sender.start()
    serve.wait_for(lambda: daemon.status()["scan_id"] == "cli_0002", 30, "the second scan to open")
    aborted = holostream("abort", "--config", config)
    assert aborted.returncode == 0 and aborted.stdout.strip() == "aborted cli_0002"
    sender.join(30)
    serve.wait_for(lambda: daemon.status()["scans_failed"] == failed + 1, 30, "the aborted scan to be dropped")
    # back to the defaults for whichever test shares the daemon next
    assert holostream("set", "filter=ram-lak", "publish_interval_s=0.5", "--config", config).returncode == 0


def test_ctrl_c_ends_a_command_with_one_line(daemon, serve):
    received = daemon.status()["frames_received"]
    proc = subprocess.Popen([sys.executable, "-m", "holostream.service.cli", "stream", "--simulate", "--size", "32",
                             "--projections", "400", "--fps", "5", "--delta-beta", "200",
                             "--address", daemon.ingest], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # once frames arrive, the command is inside its run()
        serve.wait_for(lambda: daemon.status()["frames_received"] > received + 12, 60,
                       "the stream to send projections")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "holostream stream: interrupted"
    serve.idle(daemon)  # the interrupted scan stays open until aborted


def test_version():
    out = holostream("--version")
    assert out.returncode == 0 and out.stdout.startswith("holostream ")
