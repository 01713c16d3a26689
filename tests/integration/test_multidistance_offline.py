"""``holostream simulate --distances`` and ``holostream reconstruct`` of several files, as subprocesses."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from holostream.service.files.nxtomo import read_scan
from holostream.service.offline_distances import reconstruct_distances
from holostream.shared.settings import ReconstructionSettings
from holostream.workers.backend import get_backend

pytestmark = pytest.mark.integration


def holostream(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "holostream.service.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=180, cwd=cwd)


def correlation(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.fixture(scope="module")
def four_files(four_distance_files):
    """``holostream simulate --distances 4`` (conftest: made once, for test_multidistance_live too)."""
    folder, paths, stdout = four_distance_files
    assert all(p.exists() for p in paths) and "magnification 71.43" in stdout
    return folder, paths


def test_reconstruct_four_files_gives_delta_and_beta(four_files):
    folder, paths = four_files
    out = folder / "v.h5"
    proc = holostream("reconstruct", *paths, "-o", out, "--phase", "ctf", "--quiet")
    assert proc.returncode == 0, proc.stderr
    with h5py.File(out, "r") as f, h5py.File(folder / "truth.h5", "r") as truth:
        delta, beta = f["volume"][()], f["beta"][()]
        attrs = dict(f["volume"].attrs)
        assert f["beta"].attrs["quantity"] == "beta"
        corr_delta = correlation(delta, truth["volume"][()])
        corr_beta = correlation(beta, truth["beta"][()])
    print(f"\n4-distance CLI: corr δ {corr_delta:.3f}, β {corr_beta:.3f}")
    assert corr_delta > 0.9 and corr_beta > 0.6
    assert attrs["n_distances"] == 4 and attrs["shifts_measured"]
    entries = json.loads(attrs["distances"])
    assert [e["pixel_size_m"] for e in entries] == sorted(e["pixel_size_m"] for e in entries)
    assert attrs["pixel_size_m"] == pytest.approx(entries[0]["pixel_size_m"])
    # The command is the library function: the same numbers in-process.
    scans = [read_scan(str(p)) for p in paths]
    direct, _, _ = reconstruct_distances(scans, ReconstructionSettings(phase="ctf"), attrs["delta_beta"],
                                         0.0, get_backend("cpu"))
    np.testing.assert_allclose(delta, direct, atol=1e-9)
    # One distance alone does markedly worse on this mixed-material phantom.
    single = folder / "single.h5"
    assert holostream("reconstruct", paths[0], "-o", single, "--phase", "ctf", "--quiet").returncode == 0
    with h5py.File(single, "r") as f, h5py.File(folder / "truth.h5", "r") as truth:
        assert correlation(f["volume"][()], truth["volume"][()]) < corr_delta - 0.03


def test_files_that_do_not_belong_together_are_refused_with_a_reason(four_files, tmp_path):
    folder, paths = four_files
    other = tmp_path / "other.nx"
    assert holostream("simulate", "-o", other, "--size", 48, "--projections", 30).returncode == 0
    proc = holostream("reconstruct", paths[0], other, "-o", tmp_path / "v.h5", "--quiet")
    assert proc.returncode == 2
    assert "every distance must share the same angles" in proc.stderr
    proc = holostream("reconstruct", *paths[:2], "-o", tmp_path / "v.h5", "--phase", "ctf, newton**3")
    assert proc.returncode == 2 and "single-distance only" in proc.stderr
