"""Reconstructed volumes as NeXus HDF5, one layout for the offline command and the live daemon.

::

    /                       @default = "entry"
    /entry                  NXentry, @default = "data"; title = the scan id
    /entry/data             NXdata: @signal = "delta", @axes = ["z", "y", "x"]
    /entry/data/delta       float32 [z, y, x], δ (units "1"), every parameter as an attribute
    /entry/data/z, y, x     voxel centres in metres from the volume's centre (x, y: the axis)
    /entry/process          NXprocess: program "holostream", version, date, the parameters again
    /volume                 the same dataset as /entry/data/delta (the earlier layout's path)

silx opens the file at its default plot (an image stack with axes and units); h5py readers of
the earlier layout still find ``/volume`` with its attributes. Compression is optional:
``gzip`` (built into HDF5) or, through ``hdf5plugin``, ``lz4`` and ``zstd``.
"""

from __future__ import annotations

import json
import os
import time
import tempfile
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from holostream import __version__

#: The parameters that every saved volume carries, live or offline, under these names.
PARAMETERS = ("voxel_size_m", "binning", "angle_binning", "phase", "phase_chain", "iterations",
              "filter", "pad_mode", "cor_px", "delta_beta", "energy_kev", "distance_m",
              "pixel_size_m", "n_projections_used", "n_projections_expected")

#: Values of ``compression`` (``[publish] compression``, ``reconstruct --compression``).
COMPRESSIONS = ("none", "gzip", "lz4", "zstd")


def compression_options(compression: str) -> dict[str, Any]:
    """Keyword arguments of ``h5py.Group.create_dataset`` for ``compression``.

    Raises
    ------
    ValueError
        For an unknown name, or ``lz4``/``zstd`` without the ``hdf5plugin`` package.
    """
    if compression == "none":
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    if compression in ("lz4", "zstd"):
        try:
            import hdf5plugin
        except ModuleNotFoundError:
            raise ValueError(f"compression {compression!r} needs hdf5plugin (pip install hdf5plugin)") from None
        return dict(hdf5plugin.LZ4() if compression == "lz4" else hdf5plugin.Zstd())
    raise ValueError(f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}")


def _attribute(value: Any) -> Any:
    """``value`` as HDF5 can store it: nested objects (e.g. ``distances``) as JSON text."""
    if isinstance(value, dict) or (isinstance(value, (list, tuple)) and any(isinstance(v, (dict, list)) for v in value)):
        return json.dumps(value)
    return value


def axis_coordinates(n: int, voxel_size_m: float) -> np.ndarray:
    """Voxel centres ``(i - (n - 1) / 2) · voxel_size_m`` in metres, float64, shape ``(n,)``."""
    return (np.arange(n) - (n - 1) / 2.0) * float(voxel_size_m)


def write_volume(path: str | os.PathLike, volume: np.ndarray, attrs: Mapping[str, Any],
                 compression: str = "none") -> None:
    """Write a reconstructed volume as NeXus HDF5 (layout in the module docstring).

    Parameters
    ----------
    path : str or path
        Output file (replaced when it exists).
    volume : ndarray of shape (nz, ny, nx), float32
        δ per voxel, ``[z, y, x]``.
    attrs : mapping
        Reconstruction parameters (those of :data:`PARAMETERS` and any others); must contain
        ``voxel_size_m``. Stored as attributes of the volume dataset and of the NXprocess
        group; None values are left out, nested objects stored as JSON text.
    compression : str
        One of :data:`COMPRESSIONS`.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D [z, y, x], got shape {volume.shape}")
    if "voxel_size_m" not in attrs:
        raise ValueError("attrs must contain voxel_size_m")
    options = compression_options(compression)
    parameters = {k: _attribute(v) for k, v in attrs.items() if v is not None}
    parameters.update(holostream_version=__version__, compression=compression)
    with h5py.File(path, "w") as f:
        f.attrs["default"] = "entry"
        f.attrs["creator"] = f"holostream {__version__}"
        entry = f.create_group("entry")
        entry.attrs.update(NX_class="NXentry", default="data")
        entry["title"] = str(attrs.get("scan_id") or attrs.get("source") or "holostream volume")
        data = entry.create_group("data")
        data.attrs.update(NX_class="NXdata", signal="delta", axes=["z", "y", "x"],
                          z_indices=0, y_indices=1, x_indices=2)
        dset = data.create_dataset("delta", data=volume, chunks=(1, *volume.shape[1:]), **options)
        dset.attrs.update(units="1", long_name="δ (refractive index decrement)", quantity="delta",
                          interpretation="image")
        dset.attrs.update(parameters)
        for name, n in zip("zyx", volume.shape):
            axis = data.create_dataset(name, data=axis_coordinates(n, attrs["voxel_size_m"]))
            axis.attrs.update(units="m", long_name=f"{name} (m, from the volume's centre)")
        process = entry.create_group("process")
        process.attrs.update(NX_class="NXprocess")
        process["program"] = "holostream"
        process["version"] = __version__
        process["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        process.attrs.update(parameters)
        f["volume"] = dset  # a second name of the same dataset, for readers of the earlier layout


def read_default_plot(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """The signal of the file's default NXdata (what silx shows) and its attributes.

    Follows ``/@default`` → ``NXentry@default`` → ``NXdata@signal``. Raises KeyError when
    the file has no such chain.
    """
    with h5py.File(path, "r") as f:
        entry = f[f.attrs["default"]]
        data = entry[entry.attrs["default"]]
        signal = data[data.attrs["signal"]]
        return signal[()], dict(signal.attrs)


def save_volume_h5(path: str | os.PathLike, header: dict[str, Any], volume: np.ndarray,
                   compression: str = "none") -> None:
    """Write ``volume`` (float32 ``(nz, ny, nx)``) as the offline ``reconstruct`` does.

    The published header's fields become its attributes. Written to a temporary name first,
    so a reader never sees a half-written file.
    """
    tmp = f"{os.fspath(path)}.part"
    write_volume(tmp, volume, header, compression)
    os.replace(tmp, path)


def save_new_volume_h5(directory: str | os.PathLike, stem: str, header: dict[str, Any],
                       volume: np.ndarray, compression: str = "none", beta: np.ndarray | None = None) -> Path:
    """Write ``volume`` to ``DIRECTORY/STEM.h5``, or ``STEM-2.h5``, ``STEM-3.h5``...: never over a file.

    Written under a temporary name of this process, then hard-linked to the first free
    name (``link`` fails when the name exists, so two daemons or a restarted one can never
    replace a volume, and a reader never sees a half-written file). ``beta`` (float32, the
    shape of ``volume``; several distances) goes to ``/entry/data/beta`` before the link.

    Returns
    -------
    Path
        The file written.
    """
    directory = Path(directory)
    tmp = directory / f".{stem}.{os.getpid()}.part"
    write_volume(os.fspath(tmp), volume, header, compression)
    if beta is not None:
        append_volume(tmp, "beta", beta, "beta")
    try:
        for n in range(1, 10_000):
            path = directory / (f"{stem}.h5" if n == 1 else f"{stem}-{n}.h5")
            try:
                os.link(tmp, path)
            except FileExistsError:
                continue
            return path
        raise FileExistsError(f"{directory}/{stem}*.h5: 9999 volumes of that name already")
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(directory: str | os.PathLike) -> None:
    """Make ``directory`` if needed and prove a file can be created in it; OSError says why not."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".holostream-check-"):
        pass


def append_volume(path: str | os.PathLike, name: str, volume: np.ndarray, quantity: str) -> None:
    """Add a second volume (β beside δ) to a file written by :func:`write_volume`.

    It goes to ``/entry/data/<name>``, listed in the NXdata's ``auxiliary_signals`` so that
    silx offers it beside δ, and ``/<name>`` names the same dataset (as ``/volume`` does δ).

    Parameters
    ----------
    path : str or path
        Existing volume file.
    name : str
        Dataset name (``"beta"``).
    volume : ndarray of shape (nz, ny, nx), float32
        On the grid of the δ volume.
    quantity : str
        The dataset's ``quantity`` attribute (``"beta"``); ``units="1"``.
    """
    volume = np.asarray(volume, dtype=np.float32)
    with h5py.File(path, "a") as f:
        data = f["entry/data"]
        if data["delta"].shape != volume.shape:
            raise ValueError(f"{name} volume {volume.shape} is not on the grid of δ {data['delta'].shape}")
        dset = data.create_dataset(name, data=volume, chunks=(1, *volume.shape[1:]))
        dset.attrs.update(units="1", quantity=quantity, interpretation="image")
        data.attrs["auxiliary_signals"] = [*data.attrs.get("auxiliary_signals", []), name]
        f[name] = dset
