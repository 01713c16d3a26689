"""Ingest messages of the wire protocol: parse, validate, and build them.

Every ingest message is multipart: a UTF-8 JSON header, then for ``frame`` one raw
little-endian C-order payload part (see ``PROTOCOL.md`` "Ingest messages"). This module
turns a list of ZeroMQ parts into a typed message or raises :class:`ProtocolError` with a
reason that names the problem; it never pickles and imports nothing of holostream.

Validation that needs the state of the service (is this scan open, was this index already
received) belongs to the ingest process; :meth:`ScanInfo.check_frame` covers everything
that only needs the scan's announcement.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import numpy as np

from .distances import DistanceError, DistanceInfo, check_distance_index, parse_distances
from .geometry import _CONE_BEAM, _PLANE_WAVE, _geometry_fields, _parse_geometry
from .wirefields import (  # noqa: F401 - ProtocolError, Limits, clip, shown are used from here too
    DEFAULT_LIMITS, MAX_SHOWN_CHARS, Limits, ProtocolError, _float, _header, _int, _keys, _part_view, clip,
    load_json, shown,
)

DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4"), "float32": np.dtype("<f4")}
FRAME_KINDS = ("dark", "flat", "projection")
SCAN_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Every reject's ``code`` (status counters, PROTOCOL.md): the parser's own, then the ingest's.
REJECT_CODES = ("parts", "too_large", "too_deep", "bad_json", "unknown_type", "missing_field",
                "unknown_field", "bad_field", "out_of_range", "payload_size", "format", "missing_angle",
                "index_range", "unknown_scan", "scan_ended", "duplicate", "settings", "no_memory",
                "internal_error")


@dataclass(frozen=True)
class ScanInfo:
    """What a ``scan_start`` announced: detector format, counts, angles and geometry.

    Attributes
    ----------
    scan_id : str
    shape : tuple of int
        ``(rows, cols)`` of every frame, unbinned detector pixels.
    dtype : str
        ``"uint16"``, ``"uint32"`` or ``"float32"`` (little-endian on the wire).
    n_darks, n_flats, n_projections : int
    angles_deg : tuple of float or None
        One rotation angle (degrees) per projection, when given as a list.
    angle_start_deg, angle_step_deg : float or None
        Uniform angles ``start + index·step`` (degrees), when given that way.
    energy_kev : float
        Photon energy (keV).
    distance_m, pixel_size_m : float
        Effective propagation distance and pixel size (metres); for a cone-beam scan the
        values derived from the three fields below (Fresnel scaling).
    delta_beta : float
        δ/β ratio for single-material phase retrieval.
    cor_px : float or None
        Rotation-axis offset from ``(cols - 1) / 2`` in unbinned pixels; None when the
        scan left it out: the service estimates it.
    source_distance_m, detector_distance_m, detector_pixel_size_m : float or None
        The cone-beam geometry as given (z₁, z₂, detector pixel), None for a plane-wave
        ``scan_start``.
    magnification : float
        ``(z₁ + z₂) / z₁``; 1 for a plane-wave ``scan_start``.
    reconstruction : dict
        Raw per-scan overrides of the server's reconstruction settings; the service
        validates them against its settings schema.
    distances : tuple of DistanceInfo
        Several propagation distances (shared/distances.py), ``()`` for a single-distance
        scan; when given, ``distance_m`` and ``pixel_size_m`` are the reference's (entry 0).
    """

    scan_id: str
    shape: tuple[int, int]
    dtype: str
    n_darks: int
    n_flats: int
    n_projections: int
    energy_kev: float
    distance_m: float
    pixel_size_m: float
    delta_beta: float
    angles_deg: tuple[float, ...] | None = None
    angle_start_deg: float | None = None
    angle_step_deg: float | None = None
    cor_px: float | None = None
    reconstruction: dict[str, Any] = field(default_factory=dict)
    source_distance_m: float | None = None
    detector_distance_m: float | None = None
    detector_pixel_size_m: float | None = None
    magnification: float = 1.0
    distances: tuple[DistanceInfo, ...] = ()

    @property
    def angles_known(self) -> bool:
        """True when the scan announced every projection's angle up front."""
        return self.angles_deg is not None or self.angle_start_deg is not None

    @property
    def frame_nbytes(self) -> int:
        """Exact payload size of one frame (bytes)."""
        return self.shape[0] * self.shape[1] * DTYPES[self.dtype].itemsize

    def count_of(self, kind: str) -> int:
        """Number of frames of ``kind`` ("dark", "flat", "projection") in the scan."""
        return {"dark": self.n_darks, "flat": self.n_flats, "projection": self.n_projections}[kind]

    def angle_of(self, index: int, frame_angle_deg: float | None = None) -> float:
        """Rotation angle (degrees) of projection ``index``.

        The announced angles win; a frame's own ``angle_deg`` is used when the scan gave none.

        Raises
        ------
        ProtocolError
            When neither the scan nor the frame gives the angle.
        """
        if self.angles_deg is not None:
            return self.angles_deg[index]
        if self.angle_start_deg is not None:
            return self.angle_start_deg + index * self.angle_step_deg
        if frame_angle_deg is None:
            raise ProtocolError(f"projection {index} has no angle_deg and scan_start gave no angles",
                                "missing_angle")
        return float(frame_angle_deg)

    def all_angles_deg(self) -> np.ndarray | None:
        """float64 ``(n_projections,)`` announced angles in degrees, or None when not announced."""
        if self.angles_deg is not None:
            return np.asarray(self.angles_deg, dtype=np.float64)
        if self.angle_start_deg is not None:
            return self.angle_start_deg + np.arange(self.n_projections) * self.angle_step_deg
        return None

    def check_frame(self, frame: "Frame") -> None:
        """Raise :class:`ProtocolError` unless ``frame`` fits this scan (id, format, index, angle)."""
        if frame.scan_id != self.scan_id:
            raise ProtocolError(f"frame for scan {frame.scan_id!r}, but the open scan is {self.scan_id!r}",
                                "unknown_scan")
        if frame.dtype != self.dtype:
            raise ProtocolError(f"frame dtype {frame.dtype} disagrees with the scan's {self.dtype}", "format")
        if frame.shape != self.shape:
            raise ProtocolError(f"frame shape {list(frame.shape)} disagrees with the scan's {list(self.shape)}",
                                "format")
        count = self.count_of(frame.kind)
        if frame.index >= count:
            raise ProtocolError(f"{frame.kind} index {frame.index} out of range: the scan has {count}",
                                "index_range")
        if frame.kind == "projection":
            self.angle_of(frame.index, frame.angle_deg)
        _as_protocol_error(check_distance_index, self.distances, frame.distance_index)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the ``scan_start`` header without ``type``), for queues."""
        d = {"scan_id": self.scan_id, "shape": list(self.shape), "dtype": self.dtype,
             "n_darks": self.n_darks, "n_flats": self.n_flats, "n_projections": self.n_projections,
             "energy_kev": self.energy_kev, "delta_beta": self.delta_beta, **_geometry_fields(self)}
        if self.cor_px is not None:
            d["cor_px"] = self.cor_px
        if self.angles_deg is not None:
            d["angles_deg"] = list(self.angles_deg)
        if self.angle_start_deg is not None:
            d["angle_start_deg"] = self.angle_start_deg
            d["angle_step_deg"] = self.angle_step_deg
        if self.reconstruction:
            d["reconstruction"] = dict(self.reconstruction)
        if self.distances:
            del d["distance_m"], d["pixel_size_m"]
            d["distances"] = [entry.to_dict() for entry in self.distances]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> "ScanInfo":
        """Validate a ``scan_start`` header (with or without ``type``) into a ScanInfo."""
        d = {k: v for k, v in d.items() if k != "type"}
        return _parse_scan_start(d, limits)


@dataclass(frozen=True)
class Frame:
    """One ``frame`` message: header fields and the payload part (not copied).

    ``payload`` is a read-only memoryview of exactly ``rows·cols·itemsize`` bytes.
    """

    scan_id: str
    kind: str
    index: int
    shape: tuple[int, int]
    dtype: str
    angle_deg: float | None
    payload: memoryview
    distance_index: int | None = None

    def array(self) -> np.ndarray:
        """The payload as a ``(rows, cols)`` array of the frame dtype (a view, no copy)."""
        return np.frombuffer(self.payload, dtype=DTYPES[self.dtype]).reshape(self.shape)


@dataclass(frozen=True)
class ScanStart:
    """A ``scan_start`` message."""

    scan: ScanInfo


@dataclass(frozen=True)
class ScanEnd:
    """A ``scan_end`` message: no more frames for this scan."""

    scan_id: str


@dataclass(frozen=True)
class ScanAbort:
    """A ``scan_abort`` message: drop this scan."""

    scan_id: str


Message = Union[ScanStart, Frame, ScanEnd, ScanAbort]


# --------------------------------------------------------------------------- parsing


def _scan_id(d: dict) -> str:
    v = d["scan_id"]
    if not isinstance(v, str) or len(v) > 128 or not SCAN_ID_PATTERN.fullmatch(v):
        raise ProtocolError(f"scan_id {shown(v)} is not 1-128 characters of letters, digits, '.', '_', '-'",
                            "bad_field")
    return v


def _format(d: dict, limits: Limits) -> tuple[tuple[int, int], str]:
    shape, dtype = d["shape"], d["dtype"]
    if (not isinstance(shape, list) or len(shape) != 2
            or any(isinstance(n, bool) or not isinstance(n, int) for n in shape)):
        raise ProtocolError(f"shape must be [rows, cols] integers, got {shown(shape)}", "bad_field")
    rows, cols = shape
    if not (1 <= rows <= limits.max_rows and 1 <= cols <= limits.max_cols):
        raise ProtocolError(f"shape {shape} outside [1, {limits.max_rows}] x [1, {limits.max_cols}]",
                            "too_large")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ProtocolError(f"dtype {shown(dtype)} is not one of {', '.join(DTYPES)}", "bad_field")
    if rows * cols * DTYPES[dtype].itemsize > limits.max_frame_bytes:
        raise ProtocolError(f"a {rows}x{cols} {dtype} frame exceeds {limits.max_frame_bytes} bytes",
                            "too_large")
    return (rows, cols), dtype


_SCAN_START_REQUIRED = {"scan_id", "shape", "dtype", "n_darks", "n_flats", "n_projections",
                        "energy_kev", "delta_beta"}
_SCAN_START_OPTIONAL = {"angles_deg", "angle_start_deg", "angle_step_deg", "cor_px", "reconstruction"}


def _as_protocol_error(check, *args):
    """Run a shared/distances.py check, its DistanceError turned into a ProtocolError."""
    try:
        return check(*args)
    except DistanceError as exc:
        raise ProtocolError(exc.reason, exc.code) from exc


def _parse_scan_start(d: dict, limits: Limits) -> ScanInfo:
    distances = _as_protocol_error(parse_distances, d)
    if distances:  # every geometry field is in the entries; the first is the reference
        _keys(d, _SCAN_START_REQUIRED, _SCAN_START_OPTIONAL | {"distances"}, "scan_start")
        geometry = {"distance_m": distances[0].distance_m, "pixel_size_m": distances[0].pixel_size_m,
                    "magnification": distances[0].magnification}
    else:
        _keys(d, _SCAN_START_REQUIRED, _SCAN_START_OPTIONAL | set(_PLANE_WAVE) | set(_CONE_BEAM),
              "scan_start")
        geometry = _parse_geometry(d)
    shape, dtype = _format(d, limits)
    n_projections = _int(d, "n_projections", 1, limits.max_projections)
    angles = None
    start = step = None
    if "angles_deg" in d:
        if "angle_start_deg" in d or "angle_step_deg" in d:
            raise ProtocolError("give either angles_deg or angle_start_deg/angle_step_deg, not both",
                                "bad_field")
        raw = d["angles_deg"]
        if not isinstance(raw, list) or len(raw) != n_projections:
            n = len(raw) if isinstance(raw, list) else type(raw).__name__
            raise ProtocolError(f"angles_deg must list one angle per projection ({n_projections}), got {n}",
                                "bad_field")
        if any(isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) for a in raw):
            raise ProtocolError("angles_deg must contain finite numbers only", "out_of_range")
        angles = tuple(float(a) for a in raw)
    elif "angle_start_deg" in d or "angle_step_deg" in d:
        if not ("angle_start_deg" in d and "angle_step_deg" in d):
            raise ProtocolError("angle_start_deg and angle_step_deg must be given together", "missing_field")
        start, step = _float(d, "angle_start_deg"), _float(d, "angle_step_deg")
    reconstruction = d.get("reconstruction", {})
    if not isinstance(reconstruction, dict):
        raise ProtocolError(f"reconstruction must be an object, got {shown(reconstruction)}", "bad_field")
    return ScanInfo(
        scan_id=_scan_id(d), shape=shape, dtype=dtype,
        n_darks=_int(d, "n_darks", 0, limits.max_references),
        n_flats=_int(d, "n_flats", 0, limits.max_references),
        n_projections=n_projections,
        energy_kev=_float(d, "energy_kev", positive=True),
        delta_beta=_float(d, "delta_beta", positive=True),
        angles_deg=angles, angle_start_deg=start, angle_step_deg=step,
        cor_px=_float(d, "cor_px") if "cor_px" in d else None,  # absent: estimate it
        reconstruction=dict(reconstruction),
        **geometry,
        distances=distances,
    )


def _parse_frame(d: dict, payload: Any, limits: Limits) -> Frame:
    _keys(d, {"scan_id", "kind", "index", "shape", "dtype"}, {"angle_deg", "distance_index"}, "frame")
    scan_id = _scan_id(d)
    kind = d["kind"]
    if not isinstance(kind, str) or kind not in FRAME_KINDS:
        raise ProtocolError(f"frame kind {shown(kind)} is not one of {', '.join(FRAME_KINDS)}", "bad_field")
    index = _int(d, "index", 0, max(limits.max_projections, limits.max_references) - 1)
    shape, dtype = _format(d, limits)
    angle = _float(d, "angle_deg") if "angle_deg" in d else None
    distance_index = _int(d, "distance_index", 0, 1 << 16) if "distance_index" in d else None
    view = _part_view(payload)
    expected = shape[0] * shape[1] * DTYPES[dtype].itemsize
    if view.nbytes != expected:
        short = "short" if view.nbytes < expected else "long"
        raise ProtocolError(f"payload is {abs(expected - view.nbytes)} bytes {short}: got {view.nbytes}, "
                            f"a {shape[0]}x{shape[1]} {dtype} frame is {expected}", "payload_size")
    return Frame(scan_id, kind, index, shape, dtype, angle, view.cast("B") if view.format != "B" else view,
                 distance_index)


def parse_message(parts: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> Message:
    """Validate one multipart ingest message.

    Parameters
    ----------
    parts : sequence of zmq.Frame, bytes or buffer
        The message parts as received (``recv_multipart(copy=False)`` is fine: payloads
        are not copied).
    limits : Limits
        Sizes above which the message is rejected.

    Returns
    -------
    ScanStart, Frame, ScanEnd or ScanAbort

    Raises
    ------
    ProtocolError
        With a reason naming the problem and a short ``code`` for counters.
    """
    if len(parts) == 0:
        raise ProtocolError("empty message", "parts")
    header = _header(parts[0], limits)
    kind = header.pop("type", None)
    n_parts = len(parts)
    if kind == "frame":
        if n_parts != 2:
            raise ProtocolError(f"frame needs 2 parts (header, payload), got {n_parts}", "parts")
        return _parse_frame(header, parts[1], limits)
    if kind not in ("scan_start", "scan_end", "scan_abort"):
        raise ProtocolError(f"unknown message type {shown(kind)}", "unknown_type")
    if n_parts != 1:
        raise ProtocolError(f"{kind} takes no payload, got {n_parts} parts", "parts")
    if kind == "scan_start":
        return ScanStart(_parse_scan_start(header, limits))
    _keys(header, {"scan_id"}, set(), kind)
    scan_id = _scan_id(header)
    return ScanEnd(scan_id) if kind == "scan_end" else ScanAbort(scan_id)


# --------------------------------------------------------------------------- building

def _dumps(header: dict[str, Any]) -> bytes:
    return json.dumps(header, allow_nan=False, separators=(",", ":")).encode("utf-8")


def encode_scan_start(scan: ScanInfo) -> list[bytes]:
    """Parts of the ``scan_start`` message announcing ``scan``."""
    return [_dumps({"type": "scan_start", **scan.to_dict()})]


def encode_frame(scan_id: str, kind: str, index: int, image: np.ndarray,
                 angle_deg: float | None = None, distance_index: int | None = None) -> list[Any]:
    """Parts of one ``frame`` message: JSON header and the image's bytes (no copy if C-contiguous).

    Parameters
    ----------
    image : ndarray of shape (rows, cols), dtype uint16, uint32 or float32
    angle_deg : float, optional
        Rotation angle (degrees) of a projection.
    distance_index : int, optional
        Index into the scan's ``distances`` (multi-distance scans only).
    """
    dtype = np.dtype(image.dtype).newbyteorder("<")
    name = next((n for n, d in DTYPES.items() if d == dtype), None)
    if name is None or image.ndim != 2:
        raise ValueError(f"frames are 2-D {', '.join(DTYPES)} arrays, got {image.ndim}-D {image.dtype}")
    header = {"type": "frame", "scan_id": scan_id, "kind": kind, "index": int(index),
              "shape": list(image.shape), "dtype": name}
    if angle_deg is not None:
        header["angle_deg"] = float(angle_deg)
    if distance_index is not None:
        header["distance_index"] = int(distance_index)
    return [_dumps(header), np.ascontiguousarray(image, dtype=DTYPES[name])]


def encode_scan_end(scan_id: str) -> list[bytes]:
    """Parts of the ``scan_end`` message."""
    return [_dumps({"type": "scan_end", "scan_id": scan_id})]


def encode_scan_abort(scan_id: str) -> list[bytes]:
    """Parts of the ``scan_abort`` message."""
    return [_dumps({"type": "scan_abort", "scan_id": scan_id})]
