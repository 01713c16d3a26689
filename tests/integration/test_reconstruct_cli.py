"""``holostream reconstruct`` and ``holostream simulate`` as real subprocesses."""

import subprocess
import sys

import h5py
import numpy as np
import pytest

from holostream.service.files.nxtomo import read_scan, scan_data_from_simulation
from holostream.service.offline import reconstruct_scan
from holostream.shared.settings import ReconstructionSettings

pytestmark = pytest.mark.integration


def holostream(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "holostream.service.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def _cylinder_corr(volume, truth):
    n = truth.shape[1]
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    mask = np.broadcast_to(np.hypot(yy, xx) < n / 2 - 2, truth.shape)
    return np.corrcoef(volume[mask], truth[mask])[0, 1]


def test_reconstruct_writes_volume_with_attributes(single_material_nx, single_material_scan,
                                                   cpu_backend, tmp_path):
    out = tmp_path / "vol.h5"
    proc = holostream("reconstruct", single_material_nx, "-o", out, "--binning", 2,
                      "--angle-binning", 2, "--batch", 16)
    assert proc.returncode == 0, proc.stderr
    # no progress bar off a terminal (tests/unit/test_progress.py draws one on a terminal)
    assert "groups" not in proc.stderr and f"wrote {out}" in proc.stdout
    with h5py.File(out, "r") as f:
        dset = f["volume"]
        assert dset.dtype == np.float32 and dset.shape == (64, 64, 64)
        attrs = dict(dset.attrs)
        volume = dset[()]
    assert attrs["units"] == "1" and attrs["quantity"] == "delta"
    assert attrs["voxel_size_m"] == pytest.approx(2e-6)
    assert (attrs["binning"], attrs["angle_binning"], attrs["iterations"]) == (2, 2, 10)
    assert attrs["phase"] == "paganin" and attrs["filter"] == "ram-lak"
    assert attrs["delta_beta"] == 200.0  # read from the file, not given on the command line
    assert attrs["energy_kev"] == pytest.approx(17.5) and attrs["distance_m"] == pytest.approx(0.05)
    assert attrs["pixel_size_m"] == pytest.approx(1e-6) and attrs["cor_px"] == 0.0
    assert attrs["n_projections_used"] == attrs["n_projections_expected"] == 180
    corr = _cylinder_corr(volume, single_material_scan.ground_truth)
    print(f"\nreconstruct CLI on the simulated NXtomo: corr {corr:.4f}")
    assert corr >= 0.97
    # the command is the library function: same numbers in-process
    settings = ReconstructionSettings(binning=2, angle_binning=2)
    direct, _ = reconstruct_scan(read_scan(str(single_material_nx)), settings, 200.0, 0.0, cpu_backend)
    np.testing.assert_allclose(volume, direct, atol=1e-10)
    from silx.io import open as silx_open  # a viewer's reader sees the same volume

    with silx_open(str(out)) as f:
        assert f["volume"].shape == (64, 64, 64)


def test_config_table_and_options(single_material_nx, tmp_path):
    cfg = tmp_path / "rec.toml"
    cfg.write_text('[reconstruction]\nbinning = 4\nphase = "ctf"\nfilter = "hann"\n')
    out = tmp_path / "vol.h5"
    proc = holostream("reconstruct", single_material_nx, "-o", out, "--config", cfg,
                      "--binning", 2, "--angle-binning", 3, "--delta-beta", 150, "--cor-px", 0.5,
                      "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    with h5py.File(out, "r") as f:
        attrs = dict(f["volume"].attrs)
        assert f["volume"].shape == (64, 64, 64)  # the option beats the file's binning = 4
    assert attrs["phase"] == "ctf" and attrs["filter"] == "hann"
    assert attrs["angle_binning"] == 3 and attrs["n_angle_groups"] == 60
    assert attrs["delta_beta"] == 150.0 and attrs["cor_px"] == 0.5


def test_simulate_writes_a_readable_scan(tmp_path):
    out, truth = tmp_path / "sim.nx", tmp_path / "truth.h5"
    proc = holostream("simulate", "-o", out, "--size", 32, "--projections", 12, "--materials", 2,
                      "--flats-after", 3, "--cor-px", 1.5, "--seed", 4, "--ground-truth", truth,
                      "--ground-truth-binning", 2)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    scan = read_scan(str(out))
    assert scan.projections.shape == (12, 32, 32) and scan.projections.dtype == np.uint16
    assert scan.darks.shape == (10, 32, 32) and scan.flats.shape == (10, 32, 32)
    assert scan.flats_after.shape == (3, 32, 32)
    np.testing.assert_allclose(scan.angles_deg, np.arange(12) * 15.0)
    assert (scan.energy_kev, scan.distance_m, scan.pixel_size_m) == pytest.approx((17.5, 0.05, 1e-6))
    assert scan.cor_px == 1.5 and scan.delta_beta == 100.0
    # flats are brighter than darks by about the photon count, projections in between
    assert scan.darks.mean() == pytest.approx(100, rel=0.05)
    assert 1.5e4 < scan.flats.mean() - scan.darks.mean() < 2.0e4
    with h5py.File(truth, "r") as f:
        assert f["volume"].shape == (16, 16, 16) and f["volume"].attrs["voxel_size_m"] == 2e-6
        assert f["volume"][()].max() == pytest.approx(2.5e-6, rel=0.01)


def test_scan_data_round_trip_through_nxtomo(single_material_nx, single_material_scan):
    read = read_scan(str(single_material_nx))
    sim = scan_data_from_simulation(single_material_scan)
    for name in ("darks", "flats", "flats_after", "projections", "angles_deg"):
        np.testing.assert_array_equal(getattr(read, name), getattr(sim, name))
    assert read.delta_beta == 200.0 and read.cor_px == 0.0


def test_lazy_projections_read_the_same_frames(single_material_nx):
    eager = read_scan(str(single_material_nx))
    lazy = read_scan(str(single_material_nx), lazy=True)
    try:
        assert lazy.projections.shape == eager.projections.shape and len(lazy.projections) == 180
        np.testing.assert_array_equal(lazy.projections[10:14], eager.projections[10:14])
        assert lazy.projections[5:5].shape == (0, 128, 128)
        with pytest.raises(TypeError):
            lazy.projections[3]
    finally:
        lazy.projections.close()


def test_centre_estimated_when_the_file_has_none_and_ring_filter_chosen(tmp_path):
    # A 360° scan with the axis 9.3 px off centre and no axis position in the file: the
    # default is to estimate it, and the volume says so; a given --cor-px wins; 'auto'
    # estimates even when the file has one; a bad value is refused with a reason.
    scan_file, out = tmp_path / "sim.nx", tmp_path / "vol.h5"
    proc = holostream("simulate", "-o", scan_file, "--size", 48, "--projections", 60,
                      "--span-deg", 360, "--cor-px", 9.3, "--axis-unknown", "--bad-columns", 2,
                      "--wide-sample", "--seed", 3)
    assert proc.returncode == 0, proc.stderr
    assert read_scan(str(scan_file)).cor_px is None
    proc = holostream("reconstruct", scan_file, "-o", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "(estimated, confidence" in proc.stdout
    with h5py.File(out, "r") as f:
        attrs = dict(f["volume"].attrs)
    assert attrs["cor_source"] == "estimated" and attrs["cor_confidence"] >= 0.5
    assert attrs["cor_px"] == pytest.approx(9.3, abs=0.3)
    proc = holostream("reconstruct", scan_file, "-o", out, "--quiet", "--cor-px", 9.0)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(out, "r") as f:
        assert f["volume"].attrs["cor_source"] == "given" and f["volume"].attrs["cor_px"] == 9.0
        assert "cor_confidence" not in f["volume"].attrs
    proc = holostream("reconstruct", scan_file, "-o", out, "--quiet", "--cor-px", "middle")
    assert proc.returncode == 2 and "'auto'" in proc.stderr
    # the ring filter is chosen per reconstruction and recorded
    proc = holostream("reconstruct", scan_file, "-o", out, "--quiet", "--ring-filter", "sorting")
    assert proc.returncode == 0, proc.stderr
    with h5py.File(out, "r") as f:
        assert f["volume"].attrs["ring_filter"] == "sorting"
    proc = holostream("reconstruct", scan_file, "-o", out, "--quiet", "--ring-filter", "wavelet")
    assert proc.returncode == 2 and "ring_filter" in proc.stderr and "sorting" in proc.stderr


def test_cone_beam_file_reconstructs_with_effective_geometry(tmp_path):
    # A file written as a cone beam (M = 40, as nxtomomill writes ID16 scans) is read back as
    # the same effective geometry, and the volume records it with its magnification;
    # sample/propagation_distance, when present, wins.
    scan_file, out = tmp_path / "cone.nx", tmp_path / "vol.h5"
    proc = holostream("simulate", "-o", scan_file, "--size", 32, "--projections", 24,
                      "--magnification", 40, "--seed", 2)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(scan_file, "r") as f:
        assert f["entry/instrument/source/distance"][()] < 0
        assert f["entry/instrument/detector/distance"][()] == pytest.approx(2.0)
        assert "x_pixel_size" not in f["entry/sample"]
    scan = read_scan(str(scan_file))
    assert scan.magnification == pytest.approx(40.0)
    assert (scan.distance_m, scan.pixel_size_m) == pytest.approx((0.05, 1e-6))
    proc = holostream("reconstruct", scan_file, "-o", out, "--quiet", "--cor-px", 0)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(out, "r") as f:
        attrs = f["volume"].attrs
        assert attrs["magnification"] == pytest.approx(40.0)
        assert (attrs["distance_m"], attrs["pixel_size_m"]) == pytest.approx((0.05, 1e-6))
    with h5py.File(scan_file, "a") as f:
        f["entry/sample"].create_dataset("propagation_distance", data=0.07).attrs["units"] = "m"
    assert read_scan(str(scan_file)).distance_m == pytest.approx(0.07)


def test_quick_look_slices_are_the_volume_cuts(single_material_nx, cpu_backend, tmp_path):
    out = tmp_path / "look.h5"
    proc = holostream("reconstruct", single_material_nx, "-o", out, "--binning", 2, "--angle-binning", 2,
                      "--slices", "z:40,y:20,x:33,z:3")
    assert proc.returncode == 0, proc.stderr
    assert "slices z:40, y:20, x:33, z:3 of the volume (64, 64, 64)" in proc.stdout
    whole, _ = reconstruct_scan(read_scan(str(single_material_nx)), ReconstructionSettings(binning=2, angle_binning=2),
                                200.0, 0.0, cpu_backend)
    with h5py.File(out, "r") as f:
        assert f.attrs["cor_source"] == "given" and list(f.attrs["shape"]) == [64, 64, 64]
        cuts = {"z_40": whole[40], "y_20": whole[:, 20], "x_33": whole[:, :, 33], "z_3": whole[3]}
        for name, expected in cuts.items():
            image = f[f"slices/{name}"][()]
            assert image.dtype == np.float32 and image.shape == expected.shape
            np.testing.assert_allclose(image, expected, rtol=0, atol=1e-5 * float(np.abs(whole).max()))
    for png in ("z40", "y20", "x33", "z3"):
        assert (tmp_path / f"look_{png}.png").read_bytes().startswith(b"\x89PNG")
    bad = holostream("reconstruct", single_material_nx, "-o", out, "--binning", 2, "--slices", "y:64")
    assert bad.returncode == 2 and "outside the volume" in bad.stderr
    bad = holostream("reconstruct", single_material_nx, "-o", out, "--slices", "w:3")
    assert bad.returncode == 2 and "AXIS:INDEX" in bad.stderr
