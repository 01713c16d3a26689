"""The propagation geometry of a single-distance ``scan_start``: plane wave or cone beam.

PROTOCOL.md "Extensions": a scan gives either the effective ``distance_m`` + ``pixel_size_m``
or the cone-beam ``source_distance_m`` + ``detector_distance_m`` + ``detector_pixel_size_m``,
never both; a cone beam is turned into its plane-wave equivalent at the door.
"""

from __future__ import annotations


from .wirefields import ProtocolError, _float


#: The two ways of giving the geometry (PROTOCOL.md "Extensions"): exactly one, whole.
_PLANE_WAVE = ("distance_m", "pixel_size_m")


_CONE_BEAM = ("source_distance_m", "detector_distance_m", "detector_pixel_size_m")


def _parse_geometry(d: dict) -> dict[str, float | None]:
    """ScanInfo's geometry fields from a ``scan_start``: plane-wave or cone-beam, not both.

    A cone-beam geometry is turned into its plane-wave equivalent (Fresnel scaling theorem,
    the formula of ``workers/physics.fresnel_scaling``, which shared/ may not import):
    ``M = (z₁ + z₂) / z₁``, distance ``z₂ / M``, pixel ``detector pixel / M``.
    """
    plane = [k for k in _PLANE_WAVE if k in d]
    cone = [k for k in _CONE_BEAM if k in d]
    if plane and cone:
        raise ProtocolError(f"give either {' + '.join(_PLANE_WAVE)} or {' + '.join(_CONE_BEAM)}, "
                            f"not both (got {', '.join(plane + cone)})", "bad_field")
    if cone:
        missing = [k for k in _CONE_BEAM if k not in d]
        if missing:
            raise ProtocolError(f"cone-beam geometry needs {', '.join(missing)} too", "missing_field")
        # Distances by magnitude: NeXus writes the source distance as negative.
        z1, z2 = (abs(_float(d, k)) for k in _CONE_BEAM[:2])
        if z1 == 0 or z2 == 0:
            raise ProtocolError("source_distance_m and detector_distance_m must be non-zero",
                                "out_of_range")
        pixel = _float(d, "detector_pixel_size_m", positive=True)
        magnification = (z1 + z2) / z1
        return {"distance_m": z2 / magnification, "pixel_size_m": pixel / magnification,
                "source_distance_m": z1, "detector_distance_m": z2, "detector_pixel_size_m": pixel,
                "magnification": magnification}
    missing = [k for k in _PLANE_WAVE if k not in d]
    if missing:
        raise ProtocolError(f"missing {', '.join(missing)} (or give {', '.join(_CONE_BEAM)})",
                            "missing_field")
    return {"distance_m": _float(d, "distance_m", positive=True),
            "pixel_size_m": _float(d, "pixel_size_m", positive=True), "magnification": 1.0}


def _geometry_fields(scan) -> dict[str, float]:
    """The geometry of ``scan`` as its ``scan_start`` gave it (for :meth:`ScanInfo.to_dict`)."""
    if scan.source_distance_m is None:
        return {"distance_m": scan.distance_m, "pixel_size_m": scan.pixel_size_m}
    return {"source_distance_m": scan.source_distance_m,
            "detector_distance_m": scan.detector_distance_m,
            "detector_pixel_size_m": scan.detector_pixel_size_m}
