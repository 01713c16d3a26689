"""The example client of each socket (examples/) works against a real daemon, as documented."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=timeout_s)


def test_push_subscribe_and_control_examples(tmp_path, serve, shared_daemon):
    daemon = shared_daemon  # conftest: the session's default daemon
    completed = daemon.status()["scans_completed"]
    saved = tmp_path / "volumes"
    subscriber = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "subscribe_volumes.py"), "--address", daemon.publish,
         "--count", "1", "--save", str(saved)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # connected once it prints its first message (status, every 0.25 s here): nothing is missed
        first = subscriber.stdout.readline()
        assert first.startswith("status"), first + subscriber.stderr.read()
        pushed = run_example("push_frames.py", "--address", daemon.ingest, "--size", "48",
                             "--projections", "60", "--scan-id", "example_scan")
        assert pushed.returncode == 0, pushed.stderr
        out, err = subscriber.communicate(timeout=60)
    finally:  # the daemon outlives this test: so would a subscriber left waiting
        if subscriber.poll() is None:
            subscriber.kill()
            subscriber.wait()
    out = first + out
    assert subscriber.returncode == 0, err
    assert "example_scan" in out and "final=True" in out
    volume = np.load(next(saved.glob("*.npy")))
    assert volume.shape == (48, 48, 48) and np.isfinite(volume).all() and volume.max() > 0

    status = run_example("control_client.py", "--address", daemon.control, "status")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"]["scans_completed"] == completed + 1
    refused = run_example("control_client.py", "--address", daemon.control, "set", "binnig=2")
    assert json.loads(refused.stdout)["ok"] is False and "binnig" in json.loads(refused.stdout)["error"]
    changed = run_example("control_client.py", "--address", daemon.control, "set", "filter=hann")
    assert json.loads(changed.stdout)["ok"] is True
    assert daemon.ask({"cmd": "set", "params": {"filter": "ram-lak"}})["ok"]  # the shared daemon's default
