"""The NeXus volume file: round trip, compression choices, attributes HDF5 cannot hold as is."""

import json

import h5py
import numpy as np
import pytest

from holostream.service.files.volume import (COMPRESSIONS, axis_coordinates, compression_options,
                                             read_default_plot, write_volume)


def test_round_trip_through_the_default_plot_with_every_compression(tmp_path):
    volume = np.random.default_rng(0).standard_normal((4, 6, 6)).astype(np.float32)
    for compression in COMPRESSIONS:
        if compression in ("lz4", "zstd"):
            pytest.importorskip("hdf5plugin", reason="lz4/zstd need hdf5plugin")
        path = tmp_path / f"{compression}.h5"
        write_volume(path, volume, {"voxel_size_m": 1e-6, "scan_id": "s", "cor_px": None,
                                    "distances": [{"distance_m": 0.1, "shift_px": [0, 1]}]}, compression)
        data, attrs = read_default_plot(path)
        np.testing.assert_array_equal(data, volume)
        assert attrs["compression"] == compression and "cor_px" not in attrs  # None: left out
        assert json.loads(attrs["distances"]) == [{"distance_m": 0.1, "shift_px": [0, 1]}]
        with h5py.File(path, "r") as f:
            assert f["entry/title"][()] == b"s"
            assert dict(f["entry/process"].attrs)["voxel_size_m"] == 1e-6


def test_bad_input_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="'bzip9' is not one of none, gzip, lz4, zstd"):
        compression_options("bzip9")
    with pytest.raises(ValueError, match="3-D"):
        write_volume(tmp_path / "x.h5", np.zeros((2, 2), np.float32), {"voxel_size_m": 1.0})
    with pytest.raises(ValueError, match="voxel_size_m"):
        write_volume(tmp_path / "x.h5", np.zeros((2, 2, 2), np.float32), {})


def test_axis_coordinates_are_voxel_centres_about_the_middle():
    np.testing.assert_allclose(axis_coordinates(4, 2.0), [-3.0, -1.0, 1.0, 3.0])
    np.testing.assert_allclose(axis_coordinates(3, 1e-6), [-1e-6, 0.0, 1e-6])
