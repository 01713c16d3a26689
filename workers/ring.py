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
"""

from __future__ import annotations

from .backend import Backend

#: Ring filters offered (``ReconstructionSettings.ring_filter``); "none" switches it off.
RING_FILTERS = ("none", "sorting")
#: Running-median window across the columns (binned pixels); 5 was measured best at
#: keeping a clean scan's correlation while removing ≥ 5× of the rings.
DEFAULT_WINDOW_PX = 5


def remove_stripes(method: str, sinograms, backend: Backend, window_px: int = DEFAULT_WINDOW_PX):
    """Apply the ring filter ``method`` (one of :data:`RING_FILTERS`) to a whole scan.

    Parameters
    ----------
    method : str
        ``"none"`` (returns ``sinograms`` unchanged) or ``"sorting"``.
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
