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

:func:`column_stripes` (``"column-mean"``) works with phase retrieval too, and streams. A column gain error
multiplies the transmission by the same factor at every angle: an offset of ``-ln T`` on one
column, whatever the sample. It is estimated *before* phase retrieval, where it is still one
column wide (Paganin's low-pass spreads it into a band of tens of columns that no filter on
the δ sinogram separates from the sample, BENCHMARKS.md issue 10 part 2), from the means of
``-ln T`` over two sets of angles (θ mod 180° below and above 90°), each less its running
median across the columns: a stripe is what both show alike (the sample's part of a mean
is smooth, and what fine structure survives differs between the sets). Its effect on δ is
that of the phase retrieval on the flat image ``exp(stripes)`` (linearised: a gain error of
a few per cent);
it is the same at every angle, so it commutes with the (linear) ramp filter and
back-projection: the live daemon keeps only two running Σ weight·(-ln T) per worker and
subtracts the back-projection of the filtered correction from any volume at publish time
(:func:`stripes_volume`), the same volume as correcting every projection first. Measured
(BENCHMARKS.md): 8.9× without phase retrieval, 6.7× with Paganin at 2 mm with the clean
scan's correlation within 0.0002; at 5 cm the rings are below the noise already.
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
#: The same for ``"column-mean"`` (measured: 7 keeps the clean scans' correlation best for
#: ≥ 5× with Paganin, BENCHMARKS.md issue 10 part 2).
STREAMING_WINDOW_PX = 7
#: Angles back-projected per call by :func:`ring_volume`.
_BATCH = 32


def remove_stripes(method: str, sinograms, backend: Backend, window_px: int = DEFAULT_WINDOW_PX):
    """Apply the ring filter ``method`` (one of :data:`RING_FILTERS`) to a whole scan.

    Parameters
    ----------
    method : str
        ``"none"`` (returns ``sinograms`` unchanged) or ``"sorting"`` (``"column-mean"``
        works on the transmissions: :func:`stripes_volume`).
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
    if method in STREAMING_RING_FILTERS:
        raise ValueError(f"{method!r} works from the scan's mean transmissions, not on δ sinograms: "
                         "use stripes_volume")
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


def angle_half(angle_rad: float) -> int:
    """Which of the two angle sets a projection's mean goes to: 0 for θ mod 180° < 90°, else 1."""
    return int(math.fmod(math.fmod(float(angle_rad), math.pi) + math.pi, math.pi) >= math.pi / 2)


def column_stripes(mean_projections, backend: Backend, window_px: int = STREAMING_WINDOW_PX):
    """The stripes of a scan: what its mean projections show on single columns, in every one.

    Each mean (over the angles of one set) less its running median across the columns holds
    the stripes and some of the sample's own fine structure; the stripes are the same in
    every set, the sample's structure is not (it moves with the angle). So a value is kept
    where all the sets agree in sign, at the smallest magnitude among them.

    Parameters
    ----------
    mean_projections : array of shape (k, rows, cols) or (rows, cols), float
        Means over ``k`` sets of angles (angle-weighted; :func:`angle_half` makes two) of
        ``-ln T`` (or of the projected δ without phase retrieval): a column error is there a
        one-column offset, the sample a smooth profile.
    backend : Backend
    window_px : int
        Running-median window across the columns (odd), pixels.

    Returns
    -------
    array of shape (rows, cols), float32, on the backend
        The value to subtract from every projection (units of ``mean_projections``).
    """
    xp = backend.xp
    m = xp.asarray(mean_projections, dtype=xp.float32)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[0] < 1 or m.shape[2] < 3:
        raise ValueError(f"need mean projections (k, rows, cols >= 3), got shape {m.shape}")
    window = min(int(window_px) | 1, (m.shape[2] - 1) | 1)
    each = m - backend.ndimage.median_filter(m, size=(1, 1, window), mode="nearest")
    sign = xp.sign(each[0])
    agree = xp.all(xp.sign(each) == sign[None], axis=0)
    return xp.where(agree, sign * xp.abs(each).min(axis=0), xp.float32(0)).astype(xp.float32)


def ring_volume(filtered_stripes, angles_rad, weights, center_px: float, shape, backend: Backend):
    """The back-projection of ramp-filtered stripes at every angle: subtract it from the volume.

    A volume ``π/Σw · Σ w_i BP_i(f_i)`` of filtered projections ``f_i`` becomes that of
    ``f_i - r`` when this (with the same angles and weights) is subtracted from it.

    Parameters
    ----------
    filtered_stripes : array of shape (rows, cols), float
        ``r``: :func:`filtered_stripes`.
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


def absorption(transmission, backend: Backend):
    """``-ln T`` as the ring filter averages it (float64; T clipped at 1e-6 against noise <= 0)."""
    xp = backend.xp
    return -xp.log(xp.clip(xp.asarray(transmission, dtype=xp.float64), 1e-6, None))


def filtered_stripes(pipeline, mean_absorption, column_weights, backend: Backend,
                     window_px: int = STREAMING_WINDOW_PX):
    """What the ``"column-mean"`` filter subtracts from every filtered projection.

    Parameters
    ----------
    pipeline : ProjectionPipeline
        The scan's: its phase retrieval and ramp filter.
    mean_absorption : array of shape (2, rows_b, cols_b), float
        Angle-weighted means of :func:`absorption` of the binned transmissions of the two
        sets of :func:`angle_half`.
    column_weights : array of shape (cols_b,) or None
        The half-acquisition detector weights the projections get before the ramp filter.
    backend : Backend
    window_px : int
        See :func:`column_stripes`.

    Returns
    -------
    array of shape (rows_b, cols_b), float32, on the backend
        ``ramp(weights · (δ(1) - δ(exp(stripes))))``: the change of every filtered projection
        when its transmission is divided by the columns' gain errors (linearised).
    """
    return filter_change(delta_change(pipeline, mean_absorption, backend, window_px), column_weights,
                         pipeline.ramp, backend)


def delta_change(pipeline, mean_absorption, backend: Backend, window_px: int = STREAMING_WINDOW_PX):
    """``δ(1) - δ(exp(stripes))``: the stripes of :func:`column_stripes` as projected δ (px).

    The first half of :func:`filtered_stripes` (phase retrieval of the one stripes image);
    array of shape (rows_b, cols_b), float32, on the backend.
    """
    xp = backend.xp
    stripes = column_stripes(mean_absorption, backend, window_px)
    corrected = pipeline.delta_from_transmission(xp.stack([xp.exp(stripes), xp.ones_like(stripes)]))
    return corrected[1] - corrected[0]


def filter_change(change, column_weights, ramp, backend: Backend):
    """The second half of :func:`filtered_stripes`: detector weights, then ``ramp``."""
    xp = backend.xp
    change = xp.asarray(change, dtype=xp.float32)
    if column_weights is not None:
        change = change * xp.asarray(column_weights, dtype=xp.float32)
    return ramp(change[None])[0]


def stripes_volume(pipeline, mean_absorption, column_weights, angles_rad, weights,
                   center_px: float, shape, backend: Backend, window_px: int = STREAMING_WINDOW_PX):
    """What the ``"column-mean"`` filter subtracts from a volume, from the scan's mean ``-ln T``.

    Parameters
    ----------
    pipeline, mean_absorption, column_weights : see :func:`filtered_stripes`.
    angles_rad, weights, center_px, shape : see :func:`ring_volume`.
    backend : Backend
    window_px : int
        See :func:`column_stripes`.

    Returns
    -------
    array of ``shape``, float32, on the backend
    """
    filtered = filtered_stripes(pipeline, mean_absorption, column_weights, backend, window_px)
    return ring_volume(filtered, angles_rad, weights, center_px, shape, backend)
