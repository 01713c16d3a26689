"""Volume files are never overwritten, and an unwritable output_dir stops the start (issue 9, 2 and 3)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import h5py
import pytest

from holostream.service.clients.detector import stream_scan

pytestmark = pytest.mark.integration


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_one_scan(serve, tmp_path, out, small_scan_data) -> dict:
    daemon = serve.Daemon(tmp_path, output_dir=out)
    try:
        daemon.wait_ready(60)
        sub = serve.Subscriber(daemon.publish)
        try:
            sub.wait_connected()
            stream_scan(daemon.ingest, small_scan_data, "same_id", timeout_s=60.0)
            sub.volumes_until_final("same_id", timeout_s=120)
        finally:
            sub.close()
        status = serve.wait_for(lambda: (s := daemon.status())["last_volume_file"] and s, 30, "the volume file")
        code, _ = daemon.terminate(timeout_s=20)
        assert code == 0
        return status
    finally:
        daemon.close()


def test_a_restarted_daemon_never_overwrites_a_volume(tmp_path, serve, small_scan_data):
    out = tmp_path / "volumes"
    first = run_one_scan(serve, tmp_path / "a", out, small_scan_data)
    assert first["last_volume_file"] == str(out / "same_id_1.h5")
    before = digest(out / "same_id_1.h5")
    # the same scan id, scan number 1 again: a new daemon numbers from 1
    second = run_one_scan(serve, tmp_path / "b", out, small_scan_data)
    assert second["last_volume_file"] == str(out / "same_id_1-2.h5")
    assert digest(out / "same_id_1.h5") == before
    assert sorted(p.name for p in out.iterdir()) == ["same_id_1-2.h5", "same_id_1.h5"]  # no temporary left
    with h5py.File(out / "same_id_1-2.h5") as fh:
        assert fh["volume"].attrs["scan_id"] == "same_id"


def test_unwritable_output_dir_is_a_configuration_error_at_start(tmp_path, serve):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    config = tmp_path / "bad.toml"
    config.write_text(f'[publish]\noutput_dir = "{blocker}/volumes"\n')
    result = subprocess.run([sys.executable, "-m", "holostream.service.cli", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "publish.output_dir" in result.stderr and "not writable" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
