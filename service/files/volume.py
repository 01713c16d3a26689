"""Reconstructed volumes in HDF5, one layout for the offline command and the live daemon."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np


def write_volume(path: str, volume: np.ndarray, attrs: Mapping[str, Any]) -> None:
    """Write a reconstructed volume to HDF5 (readable by h5py and silx).

    Parameters
    ----------
    path : str
        Output file (replaced when it exists).
    volume : ndarray of shape (nz, ny, nx), float32
        δ per voxel, ``[z, y, x]``.
    attrs : mapping
        Reconstruction parameters; must contain ``voxel_size_m``. Stored as attributes of
        the dataset ``volume`` with ``units="1"`` and ``quantity="delta"``; None values
        are left out.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D [z, y, x], got shape {volume.shape}")
    if "voxel_size_m" not in attrs:
        raise ValueError("attrs must contain voxel_size_m")
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("volume", data=volume, chunks=(1, *volume.shape[1:]))
        dset.attrs["units"] = "1"
        dset.attrs["quantity"] = "delta"
        dset.attrs["axes"] = "z y x"
        dset.attrs["interpretation"] = "image"
        for key, value in attrs.items():
            if value is not None:
                dset.attrs[key] = value


def save_volume_h5(path: str | os.PathLike, header: dict[str, Any], volume: np.ndarray) -> None:
    """Write ``volume`` (float32 ``(nz, ny, nx)``) as the offline ``reconstruct`` does.

    Same layout as :func:`holostream.service.files.nxtomo.write_volume` (dataset ``/volume``);
    the header's fields become its attributes. Written to a temporary name first, so a
    reader never sees a half-written file.
    """
    from holostream.service.files.volume import write_volume

    tmp = f"{os.fspath(path)}.part"
    write_volume(tmp, volume, header)
    os.replace(tmp, path)


def save_new_volume_h5(directory: str | os.PathLike, stem: str, header: dict[str, Any],
                       volume: np.ndarray) -> Path:
    """Write ``volume`` to ``DIRECTORY/STEM.h5``, or ``STEM-2.h5``, ``STEM-3.h5``...: never over a file.

    Written under a temporary name of this process, then hard-linked to the first free
    name (``link`` fails when the name exists, so two daemons or a restarted one can never
    replace a volume, and a reader never sees a half-written file).

    Returns
    -------
    Path
        The file written.
    """
    directory = Path(directory)
    tmp = directory / f".{stem}.{os.getpid()}.part"
    write_volume(os.fspath(tmp), volume, header)
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
