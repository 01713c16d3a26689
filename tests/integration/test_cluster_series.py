"""A series of scans on a real Dask cluster (local worker processes started by the command).

Six small scans go through ``holostream reconstruct --series --cluster local``; the command
is killed once some volumes are written and run again: it skips what is done, finishes the
rest, and every volume equals the single-machine ``holostream reconstruct`` of its scan.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

pytest.importorskip("distributed", reason="the cluster extra (dask[distributed]) is not installed")

pytestmark = pytest.mark.integration

N_SCANS = 6
OPTIONS = ["--phase", "paganin", "--binning", "2"]


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory):
    """Six 48² × 40-projection scans of different phantoms, as NXtomo files."""
    from holostream.service.bench.cluster import simulated_series

    return simulated_series(tmp_path_factory.mktemp("series"), N_SCANS, size=48, n_projections=40)


#: ``python -c SINGLE_RUNS '[[argv...], ...]'``: ``holostream ARGV`` for each, stopping at the first failure.
SINGLE_RUNS = ("import json, sys\nfrom holostream.service.cli import main\n"
               "for argv in json.loads(sys.argv[1]):\n"
               "    code = main(argv)\n"
               "    if code:\n"
               "        sys.exit(f'holostream {argv}: exit status {code}')\n")


def holostream(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "holostream.service.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300, **kwargs)


def test_series_on_a_local_cluster_restarts_and_matches_single_machine(series_dir, tmp_path):
    out = tmp_path / "volumes"
    cmd = [sys.executable, "-m", "holostream.service.cli", "reconstruct", "--series", str(series_dir),
           "-o", str(out), "--cluster", "local", "--cluster-workers", "2", *OPTIONS]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        if len(list(out.glob("*_volume.h5"))) >= 2:
            break
        time.sleep(0.05)  # polling the output folder; bounded by the deadline
    if first.poll() is None:  # stopped halfway: the whole process group, workers included
        os.killpg(first.pid, signal.SIGKILL)
    first.wait(30)
    done_first = sorted(p.name for p in out.glob("*_volume.h5"))
    assert 2 <= len(done_first) <= N_SCANS

    with socket.socket() as dashboard_port:  # Dask's default HTTP port, taken by someone else
        try:
            dashboard_port.bind(("127.0.0.1", 8787))
            dashboard_port.listen()
        except OSError:
            pass  # already taken: the same situation
        second = holostream("reconstruct", "--series", series_dir, "-o", out, "--cluster", "local",
                            "--cluster-workers", "2", *OPTIONS)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "already in use" not in second.stderr  # the local scheduler asks for no fixed port
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["skipped"] == len(done_first) and summary["done"] == N_SCANS - len(done_first)
    assert summary["failed"] == 0
    assert len(list(out.glob("*_volume.h5"))) == N_SCANS and not list(out.glob("*.part"))

    # the single-machine reference: `holostream reconstruct SCAN -o FILE` of each scan, through the
    # command's own main() in one interpreter (six interpreters' start-up cost ~8 s on 2 cores)
    scans = sorted(series_dir.glob("*.nx"))
    calls = [["reconstruct", str(scan), "-o", str(tmp_path / f"{scan.stem}_single.h5"), "--quiet", *OPTIONS]
             for scan in scans]
    single = subprocess.run([sys.executable, "-c", SINGLE_RUNS, json.dumps(calls)], capture_output=True,
                            text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    for scan in scans:
        with h5py.File(tmp_path / f"{scan.stem}_single.h5") as a, h5py.File(out / f"{scan.stem}_volume.h5") as b:
            np.testing.assert_allclose(b["volume"][()], a["volume"][()], rtol=1e-6, atol=1e-12)


def test_series_without_a_cluster_runs_here_and_reports_a_bad_scan(series_dir, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for scan in sorted(series_dir.glob("*.nx"))[:2]:
        (inputs / scan.name).symlink_to(scan)
    (inputs / "broken.nx").write_bytes(b"not an HDF5 file")
    result = holostream("reconstruct", "--series", inputs, "-o", tmp_path / "out", *OPTIONS)
    assert result.returncode == 1
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == {**summary, "done": 2, "failed": 1, "skipped": 0}
    assert "broken.nx: FAILED" in result.stderr


def test_series_refuses_inputs_that_name_nothing(tmp_path):
    result = holostream("reconstruct", "--series", tmp_path / "nowhere*.nx", "-o", tmp_path / "out")
    assert result.returncode == 2 and "no scan file there" in result.stderr
    two = holostream("reconstruct", tmp_path / "a.nx", tmp_path / "b.nx", "-o", tmp_path / "v.h5")
    assert two.returncode == 2
