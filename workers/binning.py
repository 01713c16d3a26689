"""Pixel binning (b×b blocks) and angle binning (k consecutive projections).

Binning trades resolution for speed and noise: ``b×b`` pixel binning shrinks each frame,
and averaging ``k`` consecutive projections (angle binning) divides the number of
back-projections by ``k``. Both take plain means, so transmissions and line integrals keep
their values.

Pixel binning crops the ``cols % b`` (and ``rows % b``) pixels that do not fill a block at
the right (bottom) end. That crop moves the frame centre, so the rotation-axis offset in
binned pixels is not simply ``cor_px / b``; :func:`binned_center_px` gives it.
"""

from __future__ import annotations

import numpy as np


def bin_pixels(a, b: int, xp):
    """Mean over ``b×b`` blocks of the last two axes.

    Parameters
    ----------
    a : array of shape (..., rows, cols)
        Any real dtype.
    b : int
        Block size, ``1 ≤ b ≤ min(rows, cols)``.
    xp : module
        Array namespace (``numpy`` or ``cupy``) of ``a``.

    Returns
    -------
    array of shape (..., rows // b, cols // b), float32
        Block means; the ``rows % b`` bottom rows and ``cols % b`` right columns are
        dropped. ``b == 1`` returns ``a`` as float32 (a view when it already is float32).
    """
    a = xp.asarray(a)
    if a.ndim < 2:
        raise ValueError(f"bin_pixels needs at least 2 axes (rows, cols), got shape {a.shape}")
    b = int(b)
    rows, cols = a.shape[-2:]
    if b < 1 or b > min(rows, cols):
        raise ValueError(f"bin factor must be in [1, {min(rows, cols)}] for shape {a.shape}, got {b}")
    if b == 1:
        return a.astype(xp.float32, copy=False)
    rows_b, cols_b = rows // b, cols // b
    cropped = a[..., : rows_b * b, : cols_b * b]
    # Sums of strided slices (rows, then columns): 7x faster than a mean over the two
    # block axes of a reshaped view, which numpy reduces element by element.
    row_sum = cropped[..., 0::b, :].astype(xp.float32)
    for i in range(1, b):
        row_sum += cropped[..., i::b, :]
    out = row_sum[..., 0::b].copy()
    for j in range(1, b):
        out += row_sum[..., j::b]
    out *= xp.float32(1.0 / (b * b))
    return out


def binned_center_px(cols: int, b: int, cor_px: float) -> float:
    """Rotation-axis offset after binning, in binned pixels from ``(cols_b - 1) / 2``.

    Binned pixel ``j`` averages unbinned columns ``j·b … j·b + b - 1`` (centre
    ``j·b + (b - 1)/2``), so unbinned column ``u`` sits at binned column
    ``(u - (b - 1)/2) / b``. The axis at ``u = (cols - 1)/2 + cor_px`` therefore lands at ::

        (cor_px + (cols - b·cols_b) / 2) / b   from (cols_b - 1) / 2,   cols_b = cols // b

    where ``cols - b·cols_b`` is the number of columns cropped at the right end.

    Parameters
    ----------
    cols : int
        Unbinned frame width, pixels.
    b : int
        Bin factor, ``1 ≤ b ≤ cols``.
    cor_px : float
        Axis offset from ``(cols - 1) / 2`` in unbinned pixels.

    Returns
    -------
    float
        Axis offset from ``(cols // b - 1) / 2`` in binned pixels.
    """
    if b < 1 or b > cols:
        raise ValueError(f"bin factor must be in [1, {cols}], got {b}")
    cols_b = cols // b
    return (float(cor_px) + (cols - b * cols_b) / 2.0) / b


def angle_groups(n_projections: int, k: int) -> list[range]:
    """Consecutive groups of ``k`` projection indices; the last one may be shorter.

    Parameters
    ----------
    n_projections : int
        Number of projections, ≥ 1.
    k : int
        Group size, ≥ 1.

    Returns
    -------
    list of range
        ``ceil(n_projections / k)`` ranges covering ``0 … n_projections - 1`` in order.
    """
    if n_projections < 1 or k < 1:
        raise ValueError(f"angle_groups needs n_projections >= 1 and k >= 1, got {n_projections}, {k}")
    return [range(i, min(i + k, n_projections)) for i in range(0, n_projections, k)]


def bin_angles(stack, angles_deg, k: int, xp):
    """Average ``k`` consecutive projections and their angles.

    Parameters
    ----------
    stack : array of shape (n, rows, cols)
        Projections in acquisition order (consecutive angles).
    angles_deg : array of shape (n,)
        Angle of each projection, degrees.
    k : int
        Group size (see :func:`angle_groups`).
    xp : module
        Array namespace of ``stack``.

    Returns
    -------
    stack_b : array of shape (ceil(n / k), rows, cols), float32
        Mean projection of each group.
    angles_b : numpy.ndarray of shape (ceil(n / k),), float64
        Mean angle of each group, degrees.
    """
    stack = xp.asarray(stack)
    angles = np.asarray(angles_deg, dtype=np.float64)
    if stack.ndim != 3:
        raise ValueError(f"bin_angles needs a stack (n, rows, cols), got shape {stack.shape}")
    n = stack.shape[0]
    if angles.shape != (n,):
        raise ValueError(f"angles_deg shape: expected ({n},), got {angles.shape}")
    groups = angle_groups(n, k)
    n_full = n // k
    parts = []
    if n_full:
        full = stack[: n_full * k].reshape(n_full, k, *stack.shape[1:])
        parts.append(full.mean(axis=1, dtype=xp.float32))
    if n_full < len(groups):
        parts.append(stack[n_full * k :].mean(axis=0, dtype=xp.float32)[None])
    stack_b = parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=0)
    angles_b = np.array([angles[g.start : g.stop].mean() for g in groups])
    return stack_b, angles_b

