"""Ring removal: stripes of the sinograms (detector column errors) removed before the FBP.

A detector column whose gain in the projections differs from the flats' adds the same value
to every projection at that column: a stripe in each sinogram, a ring in the volume.
:func:`remove_stripes_sorting` is the sorting-based method of Vo, Atwood & Drakopoulos
(Opt. Express 26, 28396, 2018), applied here to the projected δ after phase retrieval (one
sinogram per detector row, all angles of the scan at once).

Measured (tests/unit/test_ring.py, 128-column simulated scans with 0.5–3 % column gain
errors): where phase retrieval keeps fine detail (no or weak phase contrast), the artefact
of the bad columns drops 8–14× and the correlation of a clean scan with its truth does not
drop. In strongly phase-contrast scans retrieved with Paganin (δ/β 200 at 5 cm), the
Paganin low-pass already spreads the stripes thin, while the sample's own fine fringes look
like stripes to the filter: there it removed next to nothing and lowered the correlation by
0.001–0.01. Hence it is off by default (``ring_filter = "none"``).

:func:`column_stripes` (``"column-mean"``) is the streaming one: a column error adds the same
value at every angle, so it is estimated from the mean over the angles of the projected δ
(the sample's part of that mean is smooth across the columns, averaged over the rotation)
less its running median across the columns, and subtracted from every projection. Being an
angle-independent correction, it commutes with the (linear) ramp filter and back-projection:
the live daemon keeps only a running Σ weight·δ per worker and subtracts the back-projection
of the ramp-filtered stripes from any volume at publish time (:func:`ring_volume`), which
gives the same volume as filtering the whole sinogram first (tests/unit/test_ring_live.py).
"""


from __future__ import annotations

import math

import numpy as np

from .backend import Backend

#: Ring filters offered (``ReconstructionSettings.ring_filter``); "none" switches it off.
RING_FILTERS = ("none", "sorting", "column-mean")
#: Filters that work from a running mean over the angles: the live daemon applies them.
STREAMING_RING_FILTERS = ("column-mean",)
#: Running-median window across the columns (binned pixels); 5 was measured best at
#: keeping a clean scan's correlation while removing ≥ 5× of the rings.
DEFAULT_WINDOW_PX = 5
#: Angles back-projected per call by :func:`ring_volume`.
_BATCH = 32


def remove_stripes(method: str, sinograms, backend: Backend, window_px: int = DEFAULT_WINDOW_PX):
    """Apply the ring filter ``method`` (one of :data:`RING_FILTERS`) to a whole scan.

    Parameters
    ----------
    method : str
        ``"none"`` (returns ``sinograms`` unchanged), ``"sorting"`` or ``"column-mean"``.
    sinograms : array of shape (n_angles, rows, cols), float
        Projected δ of every angle of the scan, in angle order or not.
    backend : Backend
    window_px : int
        Window of the method, pixels.

    Returns
    -------
    array of shape (n_angles, rows, cols), float32, on the backend
    """
    if method == "none":
        return backend.xp.asarray(sinograms, dtype=backend.xp.float32)
    if method == "sorting":
        return remove_stripes_sorting(sinograms, backend, window_px)
    if method == "column-mean":
        v = backend.xp.asarray(sinograms, dtype=backend.xp.float32)
        return v - column_stripes(v.mean(axis=0), backend, window_px)[None]
    raise ValueError(f"unknown ring filter {method!r}; expected one of {', '.join(RING_FILTERS)}")


def remove_stripes_sorting(sinograms, backend: Backend, window_px: int = DEFAULT_WINDOW_PX):
    """Vo's sorting-based stripe removal on whole sinograms (Vo, Atwood & Drakopoulos 2018).

    In each sinogram (one detector row, all angles) every column's values are sorted over
    the angles; in the sorted sinogram the sample's part varies smoothly from column to
    column while a column error is an offset of one column, which a running median across
    the columns removes. The values are then put back in their angular order.

    Parameters
    ----------
    sinograms : array of shape (n_angles, rows, cols), float
        Projected δ (or ``-ln`` of the transmissions) of the whole scan, where a gain error
        is additive.
    backend : Backend
    window_px : int
        Running-median window across the columns (odd), pixels.

    Returns
    -------
    array of shape (n_angles, rows, cols), float32, on the backend
    """
    xp = backend.xp
    v = xp.asarray(sinograms, dtype=xp.float32)
    if v.ndim != 3 or v.shape[0] < 2 or v.shape[2] < 3:
        raise ValueError(f"need (n_angles >= 2, rows, cols >= 3), got shape {v.shape}")
    window = min(int(window_px) | 1, (v.shape[2] - 1) | 1)
    order = xp.argsort(v, axis=0)
    ordered = xp.take_along_axis(v, order, axis=0)
    smoothed = backend.ndimage.median_filter(ordered, size=(1, 1, window), mode="nearest")
    # Scatter back to the angular order (advanced indexing: numpy and cupy alike).
    out = xp.empty_like(v)
    rows = xp.arange(v.shape[1])[None, :, None]
    cols = xp.arange(v.shape[2])[None, None, :]
    out[order, rows, cols] = smoothed
    return out


def column_stripes(mean_delta, backend: Backend, window_px: int = DEFAULT_WINDOW_PX):
    """The stripes of a scan: its mean projection less that mean's running median across columns.

    Parameters
    ----------
    mean_delta : array of shape (rows, cols), float
        Mean over the angles (angle-weighted) of the projected δ, pixels, before the ramp
        filter: a column error is there a one-column offset, the sample a smooth profile.
    backend : Backend
    window_px : int
        Running-median window across the columns (odd), pixels.

    Returns
    -------
    array of shape (rows, cols), float32, on the backend
        The value to subtract from every projection (δ px).
    """
    xp = backend.xp
    m = xp.asarray(mean_delta, dtype=xp.float32)
    if m.ndim != 2 or m.shape[1] < 3:
        raise ValueError(f"need a mean projection (rows, cols >= 3), got shape {m.shape}")
    window = min(int(window_px) | 1, (m.shape[1] - 1) | 1)
    return m - backend.ndimage.median_filter(m, size=(1, window), mode="nearest")


def ring_volume(filtered_stripes, angles_rad, weights, center_px: float, shape, backend: Backend):
    """The back-projection of ramp-filtered stripes at every angle: subtract it from the volume.

    A volume ``π/Σw · Σ w_i BP_i(f_i)`` of filtered projections ``f_i`` becomes that of
    ``f_i - r`` when this (with the same angles and weights) is subtracted from it.

    Parameters
    ----------
    filtered_stripes : array of shape (rows, cols), float
        ``r``: the ramp filter of :func:`column_stripes` (after any detector weights).
    angles_rad, weights : array of shape (n,)
        The volume's angles (radians) and weights (radians; their sum normalises).
    center_px : float
        Rotation-axis offset from ``(cols - 1) / 2``, pixels.
    shape : tuple of int
        ``(rows, n, n)`` of the volume.
    backend : Backend

    Returns
    -------
    array of ``shape``, float32, on the backend
    """
    from .fbp import backproject

    xp = backend.xp
    angles = np.asarray(angles_rad, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if angles.shape != weights.shape or angles.size == 0 or weights.sum() <= 0.0:
        raise ValueError(f"need matching angles and weights with a positive sum, "
                         f"got {angles.shape} and {weights.shape}")
    r = xp.asarray(filtered_stripes, dtype=xp.float32)
    repeated = xp.repeat(r[None], min(_BATCH, angles.size), axis=0)  # one profile: bounded memory
    volume = xp.zeros(tuple(shape), dtype=xp.float32)
    for start in range(0, angles.size, _BATCH):
        part = slice(start, start + _BATCH)
        backproject(volume, repeated[: angles[part].size], angles[part], weights[part],
                    center_px, backend)
    volume *= np.float32(math.pi / weights.sum())
    return volume


def stripes_volume(pipeline, mean_delta, column_weights, angles_rad, weights, center_px: float,
                   shape, backend: Backend, window_px: int = DEFAULT_WINDOW_PX):
    """What the ``"column-mean"`` filter subtracts from a volume, from the scan's mean projection.

    Parameters
    ----------
    pipeline : ProjectionPipeline
        Its ``ramp`` filter is the volume's.
    mean_delta : array of shape (rows_b, cols_b), float
        Angle-weighted mean of the projected δ (before detector weights and the ramp filter).
    column_weights : array of shape (cols_b,) or None
        The half-acquisition detector weights the projections had before the ramp filter.
    angles_rad, weights, center_px, shape : see :func:`ring_volume`.
    backend : Backend
    window_px : int
        See :func:`column_stripes`.

    Returns
    -------
    array of ``shape``, float32, on the backend
    """
    xp = backend.xp
    stripes = column_stripes(mean_delta, backend, window_px)
    if column_weights is not None:
        stripes = stripes * xp.asarray(column_weights, dtype=xp.float32)
    filtered = pipeline.ramp(stripes[None])[0]
    return ring_volume(filtered, angles_rad, weights, center_px, shape, backend)
