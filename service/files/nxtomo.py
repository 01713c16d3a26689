"""NXtomo scans: read (via the ``nxtomo`` package) and written (simulated scans).

Reading converts every quantity at the door to the project's units (``energy_kev``,
``distance_m``, ``pixel_size_m``, ``angles_deg``) and checks the file is usable for a
reconstruction; anything that is not raises :class:`ScanFileError` with one-line reason.

Geometry (PROTOCOL.md "Extensions"): ``sample/propagation_distance`` and
``sample/x_pixel_size`` are the effective (plane-wave equivalent) values and win when
present; otherwise a file with ``instrument/source/distance`` is a cone beam, whose detector
distance and pixel size are turned into effective ones by Fresnel scaling, and a file
without it is taken as plane-wave (detector distance and pixel size used as they are). NXtomo
has no field for δ/β; files written here keep it in ``<entry>/holostream/delta_beta``.

The rotation axis, ``instrument/detector/x_rotation_axis_pixel_position``, is read as nabu
reads it: an offset in pixels from the middle of the frame, ``(cols - 1) / 2``, not the
absolute column that nxtomo's docstring describes (PROTOCOL.md, "Extensions"); files
written here store it the same way. Without it the centre is estimated from the data, with
``instrument/detector/estimated_cor_from_motor`` (same convention) as the starting guess.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import h5py
import numpy as np

_log = logging.getLogger(__name__)

# image_key values of the NXtomo definition (nxtomo.nxobject.nxdetector.ImageKey)
_PROJECTION, _FLAT, _DARK = 0, 1, 2


class ScanFileError(Exception):
    """A scan file that cannot be reconstructed; ``str()`` is the reason, on one line."""


@dataclass
class ScanData:
    """A scan in memory, in project units, ready for :func:`reconstruct_scan`.

    Attributes
    ----------
    darks : ndarray of shape (n_darks, rows, cols)
        Raw dark frames (file dtype).
    flats : ndarray of shape (n_flats, rows, cols)
        Flats taken before the projections (or the only flats there are).
    flats_after : ndarray of shape (n, rows, cols) or None
        Flats taken after the projections, when the file has both.
    projections : ndarray or ProjectionFrames of shape (n_projections, rows, cols)
        Raw projections in acquisition order; :class:`ProjectionFrames` (read on slicing)
        when the scan was read with ``lazy=True``.
    angles_deg : ndarray of shape (n_projections,), float64
    energy_kev, distance_m, pixel_size_m : float
        Photon energy (keV), effective (plane-wave equivalent) distance and pixel size (m).
    magnification : float
        Cone-beam magnification ``(z₁ + z₂) / z₁``; 1 for a plane-wave file.
    half_acquisition : bool
        The file's ``instrument/detector/half_acquisition`` (a 360° offset-axis scan).
    cor_px : float or None
        Rotation-axis offset from ``(cols - 1) / 2`` in pixels, when the file has it
        (None: estimate it).
    cor_guess_px : float or None
        A starting guess for the estimate (the motor position), same convention.
    delta_beta : float or None
        δ/β, when the file has it (files written by :func:`write_scan`).
    source : str
        Where the data came from (file path and entry).
    """

    darks: np.ndarray
    flats: np.ndarray
    flats_after: np.ndarray | None
    projections: np.ndarray
    angles_deg: np.ndarray
    energy_kev: float
    distance_m: float
    pixel_size_m: float
    cor_px: float | None = None
    delta_beta: float | None = None
    source: str = ""
    cor_guess_px: float | None = None
    magnification: float = 1.0
    half_acquisition: bool = False

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of every frame."""
        return tuple(self.projections.shape[1:])

    @property
    def n_projections(self) -> int:
        """Number of projections."""
        return int(self.projections.shape[0])


class ProjectionFrames:
    """Frames of an open HDF5 dataset at given positions, read when sliced.

    Supports ``len``, ``shape``, ``dtype`` and ``frames[start:stop]`` (a numpy array), which
    is all :func:`reconstruct_scan` needs, so a scan larger than memory can be
    reconstructed. Keeps its file open until :meth:`close`.
    """

    def __init__(self, path: str, dataset_name: str, positions: np.ndarray):
        self._file = h5py.File(path, "r")
        self._data = self._file[dataset_name]
        self._positions = np.asarray(positions, dtype=np.int64)
        self.shape = (self._positions.size, *self._data.shape[1:])
        self.dtype = self._data.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if not isinstance(index, slice):
            raise TypeError(f"ProjectionFrames takes a slice, got {type(index).__name__}")
        positions = self._positions[index]
        if positions.size == 0:
            return np.empty((0, *self.shape[1:]), self.dtype)
        return _read_frames(self._data, positions)

    def close(self) -> None:
        """Close the file (slicing fails afterwards)."""
        self._file.close()


def scan_data_from_simulation(scan) -> ScanData:
    """View a :class:`~holostream.workers.simulate.SimulatedScan` as :class:`ScanData` (no copy)."""
    g = scan.geometry
    return ScanData(scan.darks, scan.flats, scan.flats_after, scan.projections,
                    np.asarray(scan.angles_deg, np.float64), g.energy_kev, g.distance_m,
                    g.pixel_size_m, g.cor_px, scan.delta_beta, "simulation")


def _nxtomo_entries(path: str) -> list[str]:
    """Names of the top-level groups of ``path`` that are NXtomo entries."""
    try:
        with h5py.File(path, "r") as f:
            entries = []
            for name, node in f.items():
                if not isinstance(node, h5py.Group):
                    continue
                definition = node.attrs.get("definition")
                if definition is None and "definition" in node:
                    definition = node["definition"][()]
                if isinstance(definition, bytes):
                    definition = definition.decode()
                if str(definition) == "NXtomo":
                    entries.append(name)
            return entries
    except OSError as err:
        raise ScanFileError(f"{path}: not a readable HDF5/NeXus file ({err})") from None


def _magnitude(quantity, unit: str, what: str, path: str) -> float:
    if quantity is None:
        raise ScanFileError(f"{path}: no {what} in the file")
    value = float(np.asarray(quantity.to(unit).magnitude).ravel()[0])
    if not np.isfinite(value) or value <= 0:
        raise ScanFileError(f"{path}: {what} must be a positive number, got {value}")
    return value


def _geometry(nx, path: str) -> dict[str, float]:
    """Effective distance and pixel size, and the magnification, of an NXtomo entry.

    ``sample/propagation_distance`` and ``sample/x_pixel_size`` are effective values and win
    when present. Otherwise, with ``instrument/source/distance`` (z₁) the beam is a cone: the
    detector's distance (z₂) and pixel size are scaled by ``M = (z₁ + z₂) / z₁`` (Fresnel
    scaling); without it they are taken as they are (plane wave, M = 1). Distances count by
    magnitude (NeXus writes the source distance as negative).
    """
    from holostream.workers.physics import fresnel_scaling

    det, sample = nx.instrument.detector, nx.sample
    z1 = nx.instrument.source.distance
    z2 = _magnitude(_absolute(det.distance), "m", "sample-detector distance", path)
    if z1 is not None:
        z1 = _magnitude(_absolute(z1), "m", "source-sample distance", path)
        pixel = _magnitude(det.x_pixel_size, "m", "detector x pixel size", path)
        magnification, distance, pixel_size = fresnel_scaling(z1, z2, pixel)
    else:
        magnification, distance = 1.0, z2
        pixel_size = None if det.x_pixel_size is None else _magnitude(
            det.x_pixel_size, "m", "detector x pixel size", path)
    if sample.propagation_distance is not None:
        distance = _magnitude(_absolute(sample.propagation_distance), "m", "propagation distance", path)
    if sample.x_pixel_size is not None:
        pixel_size = _magnitude(sample.x_pixel_size, "m", "sample x pixel size", path)
    if pixel_size is None:
        raise ScanFileError(f"{path}: no x pixel size in the file")
    return {"distance_m": distance, "pixel_size_m": pixel_size, "magnification": magnification}


def _absolute(quantity):
    """``|quantity|`` keeping its unit (None stays None)."""
    return None if quantity is None else abs(quantity)


def _split_flats(flat_pos: np.ndarray, proj_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flats before vs after the projections, by their position in the frame sequence.

    Flats in the middle of a scan join the nearer end, so a mid-scan series is split
    between the two references.
    """
    middle = (proj_pos[0] + proj_pos[-1]) / 2.0
    return flat_pos[flat_pos < middle], flat_pos[flat_pos >= middle]


def read_scan(path: str, entry: str | None = None, lazy: bool = False) -> ScanData:
    """Read an NXtomo scan (darks, flats, angles and geometry into memory).

    Parameters
    ----------
    path : str
        NeXus/HDF5 file.
    entry : str, optional
        NXtomo entry name (default: the only one in the file).
    lazy : bool
        If True, projections are read only when sliced (:class:`ProjectionFrames`; call
        its ``close()`` when done), otherwise all are read now.

    Returns
    -------
    ScanData

    Raises
    ------
    ScanFileError
        Not a file, not HDF5, not NXtomo, no darks/flats/projections, no or too few
        angles, frame counts that disagree, or missing energy, distance or pixel size.
    """
    if not os.path.isfile(path):
        raise ScanFileError(f"{path}: no such file")
    entries = _nxtomo_entries(path)
    if not entries:
        raise ScanFileError(f"{path}: not an NXtomo file (no entry with definition NXtomo)")
    if entry is None:
        if len(entries) > 1:
            raise ScanFileError(f"{path}: several NXtomo entries {entries}; choose one")
        entry = entries[0]
    elif entry not in entries:
        raise ScanFileError(f"{path}: no NXtomo entry {entry!r} (found {entries})")
    # heavy (pint, silx: 1.5 s): only once the file is known to hold an NXtomo entry, so that
    # a wrong path or a file of another kind is said at once
    from nxtomo import NXtomo

    try:
        nx = NXtomo().load(path, entry, detector_data_as="as_data_url")
    except (KeyError, ValueError, TypeError, OSError, AttributeError, IndexError) as err:
        raise ScanFileError(f"{path}: NXtomo entry {entry!r} cannot be read ({err})") from None

    det = nx.instrument.detector
    with h5py.File(path, "r") as f:
        data = f[entry].get("instrument/detector/data")
        if not isinstance(data, h5py.Dataset) or data.ndim != 3:
            raise ScanFileError(f"{path}: no 3-D detector data in {entry}/instrument/detector")
        n_frames = data.shape[0]
        keys = det.image_key_control if det.image_key_control is not None else det.image_key
        if keys is None:
            raise ScanFileError(f"{path}: no image_key: darks, flats and projections unknown")
        keys = np.array([int(getattr(k, "value", k)) for k in keys])
        if keys.size != n_frames:
            raise ScanFileError(
                f"{path}: shape mismatch: {keys.size} image keys for {n_frames} frames")
        angles = nx.sample.rotation_angle
        if angles is None or np.size(angles.magnitude) == 0:
            raise ScanFileError(f"{path}: no rotation angles (sample/rotation_angle)")
        angles = np.asarray(angles.to("degree").magnitude, dtype=np.float64).ravel()
        if angles.size != n_frames:
            raise ScanFileError(
                f"{path}: shape mismatch: {angles.size} rotation angles for {n_frames} frames")
        dark_pos, flat_pos, proj_pos = (np.nonzero(keys == k)[0] for k in (_DARK, _FLAT, _PROJECTION))
        for what, pos in (("dark frames", dark_pos), ("flat fields", flat_pos),
                          ("projections", proj_pos)):
            if pos.size == 0:
                raise ScanFileError(f"{path}: no {what} (image_key) in {entry}")
        if not np.all(np.isfinite(angles[proj_pos])):
            raise ScanFileError(f"{path}: rotation angles of projections are not all finite")
        before, after = _split_flats(flat_pos, proj_pos)
        if before.size == 0:  # only flats after the scan: use them as the one reference
            before, after = after, after[:0]
        geometry = dict(
            energy_kev=_magnitude(nx.instrument.beam.incident_energy, "keV", "energy", path),
            **_geometry(nx, path),
        )
        scan = ScanData(
            darks=_read_frames(data, dark_pos),
            flats=_read_frames(data, before),
            flats_after=_read_frames(data, after) if after.size else None,
            projections=(ProjectionFrames(path, data.name, proj_pos) if lazy
                         else _read_frames(data, proj_pos)),
            angles_deg=angles[proj_pos],
            cor_px=_optional_float(det.x_rotation_axis_pixel_position),
            # read directly: nxtomo's accessor is deprecated (and warns on every read)
            cor_guess_px=_optional_float(_dataset_value(f[entry], "instrument/detector/estimated_cor_from_motor")),
            half_acquisition=bool(det.half_acquisition),
            delta_beta=_stored_delta_beta(f[entry]),
            source=f"{path}::{entry}",
            **geometry,
        )
    _log.info("read %s: %d darks, %d+%d flats, %d projections of %s", scan.source,
              len(scan.darks), len(scan.flats), 0 if scan.flats_after is None else len(scan.flats_after),
              scan.n_projections, scan.frame_shape)
    return scan


def _dataset_value(group: h5py.Group, name: str):
    """The scalar value of dataset ``name`` under ``group``, or None when absent."""
    item = group.get(name)
    return item[()] if isinstance(item, h5py.Dataset) and item.shape == () else None


def _optional_float(value) -> float | None:
    """A finite float, or None for an absent (or NaN) value."""
    if value is None:
        return None
    value = float(getattr(value, "magnitude", value))
    return value if np.isfinite(value) else None


def _read_frames(data: h5py.Dataset, positions: np.ndarray) -> np.ndarray:
    """Frames at increasing ``positions``; one contiguous read when they are consecutive."""
    if positions[-1] - positions[0] + 1 == positions.size:
        return data[int(positions[0]) : int(positions[-1]) + 1]
    return data[positions]


def _stored_delta_beta(group: h5py.Group) -> float | None:
    node = group.get("holostream/delta_beta")
    if not isinstance(node, h5py.Dataset):
        return None
    value = float(node[()])
    return value if np.isfinite(value) and value > 0 else None


def write_scan(path: str, scan, entry: str = "entry", delta_beta: float | None = None,
               write_cor: bool = True, magnification: float = 1.0) -> None:
    """Write a :class:`~holostream.workers.simulate.SimulatedScan` as an NXtomo file.

    Frames go in acquisition order: darks, flats, projections, flats after. Energy is
    written in keV, distance and pixel sizes in metres, angles in degrees, the axis offset
    as ``x_rotation_axis_pixel_position``; δ/β (``delta_beta`` or the scan's own) in
    ``<entry>/holostream/delta_beta``. With ``write_cor=False`` the axis position is left
    out (a reader then estimates it). With ``magnification`` M > 1 the geometry is written
    as a cone beam with those effective values, as nxtomomill writes ID16 scans: source
    distance ``-z₁`` (NeXus sign), detector distance ``z₂ = M·distance``, detector pixel
    ``M·pixel``, and no ``sample/x_pixel_size``. An existing file is replaced.
    """
    import pint
    from nxtomo import NXtomo
    from nxtomo.nxobject.nxdetector import ImageKey

    units = pint.get_application_registry()
    g = scan.geometry
    after = scan.flats_after if scan.flats_after is not None else scan.flats[:0]
    last_deg = float(scan.angles_deg[-1]) if len(scan.angles_deg) else 0.0
    parts = [(scan.darks, ImageKey.DARK_FIELD, 0.0), (scan.flats, ImageKey.FLAT_FIELD, 0.0),
             (scan.projections, ImageKey.PROJECTION, None),
             (after, ImageKey.FLAT_FIELD, last_deg)]
    nx = NXtomo()
    det = nx.instrument.detector
    det.data = np.concatenate([p[0] for p in parts])
    det.image_key_control = [key for frames, key, _ in parts for _ in range(len(frames))]
    angles = np.concatenate([scan.angles_deg if a is None else np.full(len(f), a)
                             for f, _, a in parts])
    nx.sample.rotation_angle = angles * units.degree
    nx.instrument.beam.incident_energy = g.energy_kev * units.keV
    if not magnification >= 1.0:
        raise ValueError(f"magnification must be >= 1, got {magnification}")
    if magnification > 1.0:
        z2 = magnification * g.distance_m
        nx.instrument.source.distance = -(z2 / (magnification - 1.0)) * units.meter
        det.distance = z2 * units.meter
        det.x_pixel_size = det.y_pixel_size = magnification * g.pixel_size_m * units.meter
    else:
        det.distance = g.distance_m * units.meter
        det.x_pixel_size = det.y_pixel_size = g.pixel_size_m * units.meter
        nx.sample.x_pixel_size = nx.sample.y_pixel_size = g.pixel_size_m * units.meter
    if write_cor:
        det.x_rotation_axis_pixel_position = float(g.cor_px)
    nx.title = "holostream simulated scan"
    nx.save(file_path=path, data_path=entry, overwrite=True)
    delta_beta = delta_beta if delta_beta is not None else scan.delta_beta
    if delta_beta is not None:
        with h5py.File(path, "a") as f:
            group = f[entry].require_group("holostream")
            group.attrs["NX_class"] = "NXcollection"
            group.create_dataset("delta_beta", data=float(delta_beta))


