"""Bad input files and settings: one line on stderr, exit code 2, never a traceback."""

import dataclasses
import subprocess
import sys

import h5py
import numpy as np
import pytest

from holostream.service.files.nxtomo import ScanFileError, read_scan, write_scan
from holostream.workers.phantom import random_phantom
from holostream.workers.simulate import simulate_scan

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_scan():
    ph = random_phantom(0, radius_m=5e-6, height_m=12e-6, n_objects=2)
    return simulate_scan(ph, n_projections=6, rows=16, cols=16, n_darks=2, n_flats=2, binning=None)


@pytest.fixture(scope="module")
def tiny_nx(tmp_path_factory, tiny_scan):
    path = tmp_path_factory.mktemp("bad") / "good.nx"
    write_scan(str(path), tiny_scan)
    return path


def reconstruct(*args):
    proc = subprocess.run([sys.executable, "-m", "holostream.service.cli", "reconstruct",
                           *map(str, args)], capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stderr


def assert_one_line_error(code, stderr, *words):
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for word in words:
        assert word in lines[0], lines[0]


def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def _replace(f, name, data):
    attrs = dict(f[name].attrs)
    del f[name]
    f[name] = data
    f[name].attrs.update(attrs)


def test_good_file_reconstructs(tiny_nx, tmp_path):
    code, stderr = reconstruct(tiny_nx, "-o", tmp_path / "v.h5", "--quiet")
    assert code == 0, stderr


@pytest.mark.parametrize("missing, words", [("flats", "no flat fields"), ("darks", "no dark frames"),
                                            ("projections", "no projections")])
def test_missing_frames(tiny_scan, tmp_path, missing, words):
    path = tmp_path / f"no_{missing}.nx"
    frames = getattr(tiny_scan, missing)
    broken = dataclasses.replace(tiny_scan, **{missing: frames[:0]})
    if missing == "projections":
        broken.angles_deg = broken.angles_deg[:0]
    write_scan(str(path), broken)
    assert_one_line_error(*reconstruct(path, "-o", tmp_path / "v.h5"), words, str(path))


def test_shape_mismatch_of_angles_and_of_image_keys(tiny_nx, tmp_path):
    angles = _copy(tiny_nx, tmp_path / "angles.nx")
    with h5py.File(angles, "a") as f:
        _replace(f, "entry/sample/rotation_angle", f["entry/sample/rotation_angle"][:-3])
    assert_one_line_error(*reconstruct(angles, "-o", tmp_path / "v.h5"), "shape mismatch",
                          "rotation angles")
    keys = _copy(tiny_nx, tmp_path / "keys.nx")
    with h5py.File(keys, "a") as f:
        for name in ("image_key", "image_key_control"):
            _replace(f, f"entry/instrument/detector/{name}", f[f"entry/instrument/detector/{name}"][:-1])
    assert_one_line_error(*reconstruct(keys, "-o", tmp_path / "v.h5"), "shape mismatch", "image keys")


def test_no_angles(tiny_nx, tmp_path):
    path = _copy(tiny_nx, tmp_path / "no_angles.nx")
    with h5py.File(path, "a") as f:
        del f["entry/sample/rotation_angle"]
    assert_one_line_error(*reconstruct(path, "-o", tmp_path / "v.h5"), "no rotation angles")


def test_missing_geometry(tiny_nx, tmp_path):
    path = _copy(tiny_nx, tmp_path / "no_energy.nx")
    with h5py.File(path, "a") as f:
        del f["entry/instrument/beam/incident_energy"]
        if "entry/beam/incident_energy" in f:
            del f["entry/beam/incident_energy"]
    assert_one_line_error(*reconstruct(path, "-o", tmp_path / "v.h5"), "no energy")


def test_not_a_file_not_hdf5_not_nxtomo(tmp_path):
    assert_one_line_error(*reconstruct(tmp_path / "absent.nx", "-o", tmp_path / "v.h5"), "no such file")
    text = tmp_path / "notes.nx"
    text.write_text("not a nexus file\n")
    assert_one_line_error(*reconstruct(text, "-o", tmp_path / "v.h5"), "not a readable HDF5")
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["entry/data"] = np.zeros((3, 4, 4))
    assert_one_line_error(*reconstruct(plain, "-o", tmp_path / "v.h5"), "not an NXtomo file")
    with pytest.raises(ScanFileError, match="not an NXtomo"):
        read_scan(str(plain))


@pytest.mark.parametrize("args, words", [
    (("--binning", "0"), ["'binning'", "between 1"]),
    (("--phase", "pagannin"), ["'phase'", "unknown method"]),
    (("--phase", "paganin, xx**2"), ["'phase'", "xx"]),
    (("--filter", "box"), ["'filter'"]),
    (("--device", "tpu"), ["'device'"]),
    (("--delta-beta", "-5"), ["--delta-beta"]),
])
def test_bad_settings_are_named(tiny_nx, tmp_path, args, words):
    assert_one_line_error(*reconstruct(tiny_nx, "-o", tmp_path / "v.h5", *args), *words)


def test_bad_config_key_is_named(tiny_nx, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[reconstruction]\nbinnig = 2\n")
    assert_one_line_error(*reconstruct(tiny_nx, "-o", tmp_path / "v.h5", "--config", cfg),
                          "reconstruction.binnig", "unknown")


def test_delta_beta_required_when_the_file_has_none(tiny_scan, tmp_path):
    path = tmp_path / "no_db.nx"
    write_scan(str(path), dataclasses.replace(tiny_scan, delta_beta=None))
    assert_one_line_error(*reconstruct(path, "-o", tmp_path / "v.h5"), "--delta-beta")
    code, stderr = reconstruct(path, "-o", tmp_path / "v.h5", "--delta-beta", 300, "--quiet")
    assert code == 0, stderr
