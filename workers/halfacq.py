"""360° offset-axis (half-acquisition) scans: a volume nearly twice the detector width.

With the axis near one edge of the detector and 360° of rotation, every ray through the
disc the rotation sweeps is measured at least once: the rays on the detector's long side of
the axis once, those within the short side's reach twice (at θ and θ + 180°, mirrored).
Each projection is weighted before the ramp filter by a function ``w(s)`` of the distance
``s`` from the axis that is 0 beyond the short side, 2 beyond the overlap on the long side,
and rises smoothly across the overlap with ``w(s) + w(-s) = 2`` (the displaced-detector
weighting of Wang, Med. Phys. 29, 1634, 2002). Back-projected with the ordinary 360° angle
weights (each direction's two angles sharing it), every ray then counts once.

Geometry (PROTOCOL.md "Extensions"): the volume's ``x`` and ``y`` span
``2·⌈distance from the axis to the far detector edge⌉`` voxels, centred on the axis.
"""

from __future__ import annotations

import math

import numpy as np

#: A scan is half-acquisition when its axis is further than this fraction of the detector
#: width from the centre (PROTOCOL.md) and its angles cover 360°.
OFFSET_FRACTION = 0.25


def covers_360(angles_deg) -> bool:
    """True when the angles span a full turn (within two angle steps)."""
    angles = np.sort(np.asarray(angles_deg, dtype=np.float64).ravel() % 360.0)
    if angles.size < 4:
        return False
    gaps = np.diff(np.concatenate([angles, [angles[0] + 360.0]]))
    return bool(gaps.max() <= 2.5 * np.median(gaps))


def is_half_acquisition(angles_deg, cols: int, center_px: float) -> bool:
    """True for a 360° scan whose axis lies more than a quarter of the width from the centre.

    Parameters
    ----------
    angles_deg : array of float
        Projection angles, degrees.
    cols : int
        Detector width, pixels (of ``center_px``).
    center_px : float
        Axis offset from ``(cols - 1) / 2``, pixels.
    """
    return abs(float(center_px)) > OFFSET_FRACTION * cols and covers_360(angles_deg)


def volume_width(cols: int, center_px: float) -> int:
    """Voxels along ``x`` and ``y`` of a half-acquisition volume: ``2·⌈far edge distance⌉``."""
    axis = (cols - 1) / 2 + float(center_px)
    far = max(axis + 0.5, cols - 0.5 - axis)  # to the outer edge of the last pixel
    return 2 * math.ceil(far)


def detector_weights(cols: int, center_px: float) -> np.ndarray:
    """The weight ``w(s)`` of every detector column, applied before the ramp filter.

    Parameters
    ----------
    cols : int
        Detector width, pixels.
    center_px : float
        Axis offset from ``(cols - 1) / 2``, pixels; its sign says which side is long.

    Returns
    -------
    ndarray of shape (cols,), float32
        0 … 2; ``w(s) + w(-s) = 2`` across the overlap ``|s| <= a`` (``a`` the distance from
        the axis to the near edge), 2 beyond it on the long side.
    """
    axis = (cols - 1) / 2 + float(center_px)
    s = np.arange(cols) - axis
    reach = max(min(axis, cols - 1 - axis), 1.0)  # overlap half-width, pixels
    side = 1.0 if center_px < 0 else -1.0  # +1: the long side is at s > 0
    ramp = np.clip(side * s / reach, -1.0, 1.0)
    return (1.0 + np.sin(0.5 * math.pi * ramp)).astype(np.float32)
