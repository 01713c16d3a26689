"""Physical constants and unit conversions shared by every phase-retrieval module.

Conventions (see docs/architecture.md): object transmission ``T = exp(-B + iφ)`` with
``φ = -(2π/λ)∫δ dl``, so the phase is negative in matter.
"""

from __future__ import annotations

import math

#: h·c in keV·m: λ[m] = HC_KEV_M / E[keV].
HC_KEV_M = 1.23984198e-9


def wavelength_m(energy_kev: float) -> float:
    """X-ray wavelength in metres for a photon energy in keV.

    Parameters
    ----------
    energy_kev : float
        Photon energy in keV, > 0.

    Returns
    -------
    float
        λ = 1.23984198e-9 / energy_kev, in metres.
    """
    if not energy_kev > 0:
        raise ValueError(f"energy_kev must be > 0, got {energy_kev!r}")
    return HC_KEV_M / energy_kev


def _phase_per_delta_px(energy_kev: float, pixel_size_m: float) -> float:
    """Phase in radians of one pixel length of δ = 1: 2π·pixel/λ."""
    if not pixel_size_m > 0:
        raise ValueError(f"pixel_size_m must be > 0, got {pixel_size_m!r}")
    return 2.0 * math.pi * pixel_size_m / wavelength_m(energy_kev)


def phase_to_delta_px(phase, energy_kev: float, pixel_size_m: float):
    """Projected δ in pixel units from a phase map, the quantity the FBP takes.

    Parameters
    ----------
    phase : ndarray of shape (..., rows, cols), float
        Phase φ in radians (negative in matter), numpy or cupy.
    energy_kev : float
        Photon energy in keV.
    pixel_size_m : float
        Pixel size in metres of ``phase``.

    Returns
    -------
    ndarray, float32, same shape and array type as ``phase``
        ``∫δ dl / pixel_size_m = -φ·λ / (2π·pixel_size_m)`` (dimensionless, ≥ 0 in matter).
    """
    scale = -1.0 / _phase_per_delta_px(energy_kev, pixel_size_m)
    return (phase * scale).astype("float32", copy=False)


def delta_px_to_phase(delta_px, energy_kev: float, pixel_size_m: float):
    """Phase in radians from projected δ in pixel units; inverse of :func:`phase_to_delta_px`.

    Parameters
    ----------
    delta_px : ndarray of shape (..., rows, cols), float
        ``∫δ dl / pixel_size_m``, numpy or cupy.
    energy_kev : float
        Photon energy in keV.
    pixel_size_m : float
        Pixel size in metres.

    Returns
    -------
    ndarray, float32, same shape and array type as ``delta_px``
        ``φ = -2π·pixel_size_m·delta_px / λ`` in radians.
    """
    scale = -_phase_per_delta_px(energy_kev, pixel_size_m)
    return (delta_px * scale).astype("float32", copy=False)


def fresnel_scaling(source_distance_m: float, detector_distance_m: float,
                    detector_pixel_size_m: float) -> tuple[float, float, float]:
    """Plane-wave equivalent of a cone-beam (point source) geometry: the Fresnel scaling theorem.

    A point source at ``z1`` before the sample and a detector at ``z2`` behind it record the
    hologram of a plane wave propagated over ``z2 / M`` and sampled at ``pixel / M``, magnified
    by ``M = (z1 + z2) / z1``. Distances are taken by magnitude (NeXus writes the source
    distance as negative).

    Parameters
    ----------
    source_distance_m : float
        z₁, source (focus) to sample, metres, non-zero.
    detector_distance_m : float
        z₂, sample to detector, metres, non-zero.
    detector_pixel_size_m : float
        Detector pixel size, metres, > 0.

    Returns
    -------
    (magnification, distance_m, pixel_size_m) : tuple of float
        ``M``, the effective propagation distance ``z₁z₂/(z₁+z₂)`` and the effective pixel size
        ``detector_pixel_size_m / M``, metres.
    """
    z1, z2 = abs(float(source_distance_m)), abs(float(detector_distance_m))
    if not (math.isfinite(z1) and math.isfinite(z2) and z1 > 0 and z2 > 0):
        raise ValueError(f"source and detector distances must be finite and non-zero, got {z1!r}, {z2!r}")
    if not (math.isfinite(detector_pixel_size_m) and detector_pixel_size_m > 0):
        raise ValueError(f"detector_pixel_size_m must be > 0, got {detector_pixel_size_m!r}")
    magnification = (z1 + z2) / z1
    return magnification, z2 / magnification, float(detector_pixel_size_m) / magnification
