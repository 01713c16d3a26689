"""Live and offline volumes share one NeXus layout: opened at the NXdata default plot path.

The daemon writes its final volume to ``[publish] output_dir``; ``holostream reconstruct``
writes the same scan offline. Both files are followed from ``/@default`` to the signal, as
silx does, and must carry the same parameter names with the same values.
"""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from holostream import __version__
from holostream.service.clients.detector import stream_scan
from holostream.service.files.nxtomo import write_scan
from holostream.service.files.volume import PARAMETERS, read_default_plot

pytestmark = pytest.mark.integration

#: Equal in both files: what the reconstruction was asked to do and the scan's geometry.
SAME_VALUE = ("voxel_size_m", "binning", "angle_binning", "phase", "phase_chain", "iterations", "filter",
              "pad_mode", "cor_px", "delta_beta", "energy_kev", "distance_m", "pixel_size_m",
              "n_projections_used", "n_projections_expected", "holostream_version")


def default_plot(path):
    """Follow the NeXus default chain by hand; the signal dataset's path, data and attributes."""
    with h5py.File(path, "r") as f:
        entry = f[f.attrs["default"]]
        assert entry.attrs["NX_class"] == "NXentry"
        data = entry[entry.attrs["default"]]
        assert data.attrs["NX_class"] == "NXdata"
        signal = data[data.attrs["signal"]]
        assert list(data.attrs["axes"]) == ["z", "y", "x"]
        for i, name in enumerate("zyx"):
            axis = data[name]
            assert axis.attrs["units"] == "m" and axis.shape == (signal.shape[i],)
            assert data.attrs[f"{name}_indices"] == i
            step = np.diff(axis[()])
            assert np.allclose(step, signal.attrs["voxel_size_m"]) and abs(axis[()].mean()) < 1e-12
        assert signal.attrs["units"] == "1" and signal.attrs["interpretation"] == "image"
        assert f["volume"] == signal  # the earlier layout's path: the same dataset
        assert entry["process/program"][()] == b"holostream"
        return signal.name, signal[()], dict(signal.attrs)


def test_live_and_offline_volumes_share_the_nexus_layout(tmp_path, serve, small_scan, small_scan_data,
                                                         shared_daemon):
    try:  # the optional filter when it is installed ([compression] extra), HDF5's own otherwise
        import hdf5plugin  # noqa: F401
        compression = "zstd"
    except ModuleNotFoundError:
        compression = "gzip"
    # offline
    scan_file = tmp_path / "scan.nx"
    write_scan(str(scan_file), small_scan)
    offline = tmp_path / "offline.h5"
    proc = subprocess.run([sys.executable, "-m", "holostream.service.cli", "reconstruct", str(scan_file),
                           "-o", str(offline), "--quiet", "--compression", compression, "--delta-beta", "200"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # live, same scan, same settings (the defaults of the session's shared daemon, conftest)
    daemon = shared_daemon
    subscriber = serve.Subscriber(daemon.publish)
    try:
        subscriber.wait_connected()
        stream_scan(daemon.ingest, small_scan_data, "nexus_0001")
        final_header, final = subscriber.volumes_until_final("nexus_0001", 120)[-1]
    finally:
        subscriber.close()
    live = serve.wait_for(lambda: next(daemon.output_dir.glob(f"nexus_0001_{final_header['scan_seq']}.h5"), None),
                          20, "the live volume file")

    live_path, live_volume, live_attrs = default_plot(live)
    offline_path, offline_volume, offline_attrs = default_plot(offline)
    assert live_path == offline_path == "/entry/data/delta"
    np.testing.assert_array_equal(live_volume, final)
    assert set(PARAMETERS) <= set(live_attrs) and set(PARAMETERS) <= set(offline_attrs)
    for name in SAME_VALUE:
        assert live_attrs[name] == pytest.approx(offline_attrs[name]) if isinstance(live_attrs[name], float) \
            else live_attrs[name] == offline_attrs[name], name
    assert live_attrs["holostream_version"] == __version__ and live_attrs["final"]
    assert offline_attrs["compression"] == compression
    with h5py.File(offline, "r") as f:
        filters = f["entry/data/delta"]._filters
        assert filters, filters  # compressed
    # the same scan, the same reconstruction: live and offline agree
    scale = np.abs(offline_volume).max()
    assert np.abs(live_volume - offline_volume).max() < 1e-3 * scale
    # and the helper every reader can use lands on the same data
    data, attrs = read_default_plot(live)
    np.testing.assert_array_equal(data, live_volume)


def test_silx_sees_an_image_stack_with_axes(tmp_path):
    silx_nxdata = pytest.importorskip("silx.io.nxdata", reason="silx is not installed")
    from holostream.service.files.volume import write_volume

    path = tmp_path / "v.h5"
    write_volume(path, np.zeros((3, 4, 5), np.float32), {"voxel_size_m": 2e-6})
    with h5py.File(path, "r") as f:
        nxdata = silx_nxdata.get_default(f)
        assert nxdata is not None and nxdata.is_valid and nxdata.signal_is_3d
        assert [a.name for a in nxdata.axes] == ["/entry/data/z", "/entry/data/y", "/entry/data/x"]
