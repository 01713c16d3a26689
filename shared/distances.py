"""The ``distances`` list of a multi-distance ``scan_start`` (PROTOCOL.md, "Extensions").

A scan recorded at several propagation distances lists them in ``scan_start`` instead of
the top-level geometry fields; every frame then names its ``distance_index``. This module
validates that list into :class:`DistanceInfo` entries and checks a frame's index against
it; :mod:`shared.messages` calls it, so the single-distance code there stays as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MIN_DISTANCES, MAX_DISTANCES = 2, 8
#: Top-level fields that ``distances`` replaces (giving both is rejected).
GEOMETRY_FIELDS = ("distance_m", "pixel_size_m", "source_distance_m", "detector_distance_m",
                   "detector_pixel_size_m")
_PLANE = ("distance_m", "pixel_size_m")
_CONE = ("source_distance_m", "detector_distance_m", "detector_pixel_size_m")


class DistanceError(ValueError):
    """A ``distances`` list or ``distance_index`` that breaks the protocol; ``reason`` says why."""

    def __init__(self, reason: str, code: str = "bad_distances"):
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class DistanceInfo:
    """One propagation distance of a multi-distance scan, in effective (plane-wave) values.

    Attributes
    ----------
    distance_m : float
        Effective propagation distance, metres (``z₂ / M`` for a cone beam).
    pixel_size_m : float
        Effective pixel size, metres (``detector_pixel_size_m / M``).
    magnification : float
        ``M = (z₁ + z₂) / z₁``; 1 for a plane-wave entry.
    shift_px : tuple of float or None
        ``(dv, du)`` known offset from the reference in this distance's own pixels; None
        means "measure it".
    cone_beam : tuple of float or None
        ``(source_distance_m, detector_distance_m, detector_pixel_size_m)`` as given.
    """

    distance_m: float
    pixel_size_m: float
    magnification: float = 1.0
    shift_px: tuple[float, float] | None = None
    cone_beam: tuple[float, float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The wire form of the entry (the form it was given in)."""
        if self.cone_beam is not None:
            d = dict(zip(_CONE, self.cone_beam))
        else:
            d = {"distance_m": self.distance_m, "pixel_size_m": self.pixel_size_m}
        if self.shift_px is not None:
            d["shift_px"] = list(self.shift_px)
        return d


def _number(entry: dict, key: str, where: str) -> float:
    v = entry[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise DistanceError(f"{where}: {key} must be a finite number, got {v!r}")
    return float(v)


def _positive(entry: dict, key: str, where: str, magnitude: bool = False) -> float:
    v = _number(entry, key, where)
    v = abs(v) if magnitude else v  # NeXus writes the source distance as negative
    if v <= 0:
        what = "non-zero" if magnitude else "positive"
        raise DistanceError(f"{where}: {key}={entry[key]!r} must be {what}")
    return v


def parse_distance(entry: Any, i: int) -> DistanceInfo:
    """Validate entry ``i`` of ``distances``: ``distance_m`` + ``pixel_size_m`` or the cone-beam three.

    Raises
    ------
    DistanceError
        Naming the entry and field.
    """
    where = f"distances[{i}]"
    if not isinstance(entry, dict):
        raise DistanceError(f"{where} must be an object, got {type(entry).__name__}")
    plane, cone = [k for k in _PLANE if k in entry], [k for k in _CONE if k in entry]
    extra = sorted(entry.keys() - set(_PLANE) - set(_CONE) - {"shift_px"})
    if extra:
        raise DistanceError(f"{where} has unknown field(s) {', '.join(extra)}")
    if plane and cone:
        raise DistanceError(f"{where} gives both {'/'.join(plane)} and {'/'.join(cone)}: choose one form")
    shift = None
    if "shift_px" in entry:
        raw = entry["shift_px"]
        if (not isinstance(raw, list) or len(raw) != 2 or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in raw)):
            raise DistanceError(f"{where}: shift_px must be [dv, du], two finite numbers, got {raw!r}")
        shift = (float(raw[0]), float(raw[1]))
    if len(cone) == len(_CONE):
        z1 = _positive(entry, "source_distance_m", where, magnitude=True)
        z2 = _positive(entry, "detector_distance_m", where, magnitude=True)
        pixel = _positive(entry, "detector_pixel_size_m", where)
        # Fresnel scaling, as workers.physics.fresnel_scaling (shared/ imports no workers).
        m = (z1 + z2) / z1
        return DistanceInfo(z2 / m, pixel / m, m, shift, (z1, z2, pixel))
    if len(plane) == len(_PLANE):
        return DistanceInfo(_positive(entry, "distance_m", where), _positive(entry, "pixel_size_m", where),
                            1.0, shift)
    missing = [k for k in (_CONE if cone else _PLANE) if k not in entry]
    raise DistanceError(f"{where} lacks {', '.join(missing)}")


def parse_distances(header: dict) -> tuple[DistanceInfo, ...]:
    """The validated ``distances`` of a ``scan_start`` header, or ``()`` when it has none.

    Raises
    ------
    DistanceError
        For a list that is not 2–8 objects, a bad entry, or ``distances`` given together
        with a top-level geometry field.
    """
    if "distances" not in header:
        return ()
    raw = header["distances"]
    both = [k for k in GEOMETRY_FIELDS if k in header]
    if both:
        raise DistanceError(f"scan_start gives distances and the top-level {', '.join(both)}: "
                            "with distances, every geometry field goes into its entry")
    if not isinstance(raw, list) or not MIN_DISTANCES <= len(raw) <= MAX_DISTANCES:
        n = len(raw) if isinstance(raw, list) else type(raw).__name__
        raise DistanceError(f"distances must list {MIN_DISTANCES}-{MAX_DISTANCES} entries, got {n}")
    return tuple(parse_distance(entry, i) for i, entry in enumerate(raw))


def given_shifts(distances: tuple[DistanceInfo, ...]) -> list[tuple[float, float]] | None:
    """Every distance's ``shift_px`` when all but the reference give theirs, else None (measure them).

    The reference's is its own or ``(0, 0)``; own unbinned pixels, ``(dv, du)``.
    """
    if any(entry.shift_px is None for entry in distances[1:]):
        return None
    return [entry.shift_px or (0.0, 0.0) for entry in distances]


def check_distance_index(distances: tuple[DistanceInfo, ...], index: int | None) -> None:
    """Raise :class:`DistanceError` unless a frame's ``distance_index`` fits the scan's list.

    A multi-distance scan needs the index on every frame, in range; a single-distance scan
    (``distances == ()``) accepts no index.
    """
    if not distances:
        if index is not None:
            raise DistanceError(f"frame has distance_index {index} but the scan announced no distances",
                                "unknown_distance")
        return
    if index is None:
        raise DistanceError(f"frame lacks distance_index; the scan has {len(distances)} distances",
                            "unknown_distance")
    if not 0 <= index < len(distances):
        raise DistanceError(f"distance_index {index} out of range: the scan has {len(distances)} distances",
                            "unknown_distance")
