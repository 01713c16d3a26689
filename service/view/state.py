"""What the viewer knows: the latest status, the latest volume (or preview) and display scales.

No sockets here: :class:`ViewState` takes decoded published messages (``topic, header,
arrays`` as :func:`holostream.service.clients.subscriber.decode` returns them) and keeps only the
newest of each kind, so a viewer that falls behind shows the latest picture, never a backlog.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Axes of ``volume[z, y, x]`` a slice can be cut across.
AXES = ("z", "y", "x")

#: Scales of this many recent scans are kept (a daemon runs for days of scans).
KEPT_SCALES = 16

#: Percentiles of a volume's central slices that bound its display scale.
SCALE_PERCENTILES = (1.0, 99.0)

#: A scan's display scale is fixed at its first picture with at least this fraction of its
#: projections (or its final one): earlier live volumes are dominated by the streaks of the
#: few angles in, and a scale taken from them would leave the finished sample washed out.
SCALE_FIXED_FRACTION = 0.5


def scan_key(header: dict[str, Any]) -> str:
    """The identity of a scan in published headers: its id and the daemon's running number.

    Two scans with the same id (a repeated acquisition) get different scales.
    """
    return f"{header.get('scan_id')}#{header.get('scan_seq', 0)}"


def settled(header: dict[str, Any]) -> bool:
    """True when a picture has enough projections for its scan's scale to be fixed on it."""
    expected = int(header.get("n_projections_expected") or 0)
    used = int(header.get("n_projections_used") or 0)
    return bool(header.get("final")) or expected <= 0 or used >= SCALE_FIXED_FRACTION * expected


def display_scale(images: list[np.ndarray] | tuple[np.ndarray, ...]) -> tuple[float, float]:
    """A display range ``(low, high)`` that suits ``images``: their 1st and 99th percentiles.

    Parameters
    ----------
    images : sequence of ndarray, float32, any shapes
        The slices to be shown (δ per voxel).

    Returns
    -------
    (float, float)
        ``low < high``; a flat or empty input gets a range of ±1e-12 around its value, so
        the page never divides by zero.
    """
    values = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in images]) if images else np.zeros(0)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1e-12
    low, high = (float(v) for v in np.percentile(values, SCALE_PERCENTILES))
    if not high > low:
        low, high = low - 1e-12, high + 1e-12
    return low, high


def cut(volume: np.ndarray, axis: str, index: int) -> tuple[np.ndarray, int]:
    """One slice of ``volume[z, y, x]`` across ``axis`` at ``index`` (clipped into range).

    Parameters
    ----------
    volume : ndarray, float32, shape (nz, ny, nx)
    axis : {"z", "y", "x"}
    index : int
        Voxel index along ``axis``; values outside ``[0, n - 1]`` are clipped.

    Returns
    -------
    slice : ndarray, float32, C-contiguous
        ``(ny, nx)`` for z, ``(nz, nx)`` for y, ``(nz, ny)`` for x.
    index : int
        The index actually used.

    Raises
    ------
    ValueError
        For an axis other than z, y or x.
    """
    if axis not in AXES:
        raise ValueError(f"axis {axis!r} is not one of {', '.join(AXES)}")
    dim = AXES.index(axis)
    index = int(min(max(int(index), 0), volume.shape[dim] - 1))
    return np.ascontiguousarray(np.take(volume, index, axis=dim), dtype=np.float32), index


@dataclass
class Picture:
    """The newest volume (or preview) the viewer has, with everything the page shows about it.

    ``cuts`` are the three central slices ``volume[cz]``, ``volume[:, cy]``,
    ``volume[:, :, cx]`` (float32, shapes ``(ny, nx)``, ``(nz, nx)``, ``(nz, ny)``) at
    ``indices`` ``(cz, cy, cx)``; ``volume`` is the whole ``(nz, ny, nx)`` volume when the
    viewer subscribes to volumes, None when it only receives previews.
    """

    header: dict[str, Any]
    cuts: tuple[np.ndarray, np.ndarray, np.ndarray]
    indices: tuple[int, int, int]
    shape: tuple[int, int, int]
    volume: np.ndarray | None
    received: float  # time.time() when it arrived
    version: int


@dataclass
class ViewState:
    """The latest status and picture, and the display scale of each scan seen.

    ``scales`` maps :func:`scan_key` to ``(low, high, fixed)``: until a scan's scale is
    fixed (see :data:`SCALE_FIXED_FRACTION`) it follows each picture.

    ``version`` grows with every accepted message, so that each browser's sender can tell
    what it has not sent yet.
    """

    status: dict[str, Any] | None = None
    status_received: float = 0.0
    picture: Picture | None = None
    scales: dict[str, tuple[float, float, bool]] = field(default_factory=dict)
    version: int = 0
    messages: int = 0

    def take(self, topic: str, header: dict[str, Any], arrays: list[np.ndarray],
             now: float | None = None) -> bool:
        """Keep one published message if it is a status, a volume or a preview.

        Returns True when something the page shows changed.
        """
        now = time.time() if now is None else now
        if topic == "status":
            self.status, self.status_received = header, now
        elif topic == "volume":
            volume = arrays[0]
            nz, ny, nx = volume.shape
            indices = (nz // 2, ny // 2, nx // 2)
            cuts = tuple(cut(volume, axis, i)[0] for axis, i in zip(AXES, indices))
            self._keep(header, cuts, indices, (nz, ny, nx), volume, now)
        elif topic == "preview":
            indices = tuple(int(i) for i in header.get("indices", (0, 0, 0)))
            (ny, nx), (nz, _) = arrays[0].shape, arrays[1].shape
            self._keep(header, tuple(arrays), indices, (nz, ny, nx), None, now)
        else:
            return False
        self.messages += 1
        self.version += 1
        return True

    def _keep(self, header, cuts, indices, shape, volume, now) -> None:
        key = scan_key(header)
        if not self.scales.get(key, (0.0, 0.0, False))[2]:
            self.scales[key] = (*display_scale(cuts), settled(header))
            for old in list(self.scales)[:-KEPT_SCALES]:
                del self.scales[old]
        self.picture = Picture(dict(header), cuts, indices, shape, volume, now, self.version + 1)

    def scale(self) -> tuple[float, float, bool] | None:
        """The display scale ``(low, high, fixed)`` of the current picture's scan."""
        return self.scales.get(scan_key(self.picture.header)) if self.picture else None
