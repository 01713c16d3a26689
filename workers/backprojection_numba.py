"""Pixel-driven back-projection on CPU: one compiled, multi-threaded pass for many angles.

The arithmetic is that of :func:`holostream.workers.backprojection.backproject_reference`
(linear interpolation between detector columns, 0 outside the detector); only the order of
the work differs, chosen so the CPU does it at memory and SIMD speed:

- the volume is cut into work items of ``SLAB_ROWS`` consecutive z-rows × one y-row; the
  items run in parallel threads (numba ``prange``);
- the filtered projections are laid out once per call as ``table[z_slab, angle, column, z]``
  (z innermost), so for one voxel column ``(y, x)`` the detector position ``u(x, y)`` of an
  angle is computed once and serves ``SLAB_ROWS`` rows with contiguous, vectorised loads;
- every angle of the call is summed into a per-item accumulator that stays in cache, and
  the volume is read and written once per call, not once per angle.

Measured on the 2-core development VM (682² slices, 64 angles): 0.35 ns per voxel update
with 2 threads against 5.8 ns for the array-operation reference; ``SLAB_ROWS`` = 8 or 16
was 3-8× slower than 32 (the z loop no longer fills the vector units), 64 no faster.
"""

from __future__ import annotations

import math
import threading

import numba
import numpy as np

#: Detector rows (volume z-rows) handled together by one work item; the innermost loop.
SLAB_ROWS = 32

# numba's thread count is per calling thread; the lock keeps set-count-then-run atomic
# when several Python threads of one process back-project at once.
_LOCK = threading.Lock()


def _accumulate_py(volume, table, cos_a, sin_a, c0, cols):  # pragma: no cover - compiled
    nz, n = volume.shape[0], volume.shape[1]
    n_slabs, n_angles = table.shape[0], table.shape[1]
    half = (n - 1) / 2.0
    for item in numba.prange(n_slabs * n):
        slab = item // n
        y = item - slab * n
        acc = np.zeros((n, SLAB_ROWS), np.float32)
        for a in range(n_angles):
            step = cos_a[a]
            start = c0 + (y - half) * sin_a[a] - half * step
            rows = table[slab, a]
            for x in range(n):
                u = start + x * step
                # clipped onto the zero columns: 0 outside the detector, as the reference
                if u < -1.0:
                    u = -1.0
                elif u > cols:
                    u = float(cols)
                floor = math.floor(u)
                frac = np.float32(u - floor)
                j = int(floor) + 1
                for k in range(SLAB_ROWS):
                    low = rows[j, k]
                    acc[x, k] += low + frac * (rows[j + 1, k] - low)
        z0 = slab * SLAB_ROWS
        for k in range(min(SLAB_ROWS, nz - z0)):
            for x in range(n):
                volume[z0 + k, y, x] += acc[x, k]


def _compiled(cache: bool):
    return numba.njit(parallel=True, cache=cache, boundscheck=False, nogil=True)(_accumulate_py)


# Compiling takes 3-16 s on the 2-core VM, in every process that back-projects (each worker,
# the reconstructor): the machine code is cached on disk (next to this file, else in the
# user's cache or NUMBA_CACHE_DIR) so that only the first process on a machine pays it.
try:
    _accumulate = _compiled(cache=True)
except RuntimeError:  # numba finds no writable cache directory: compile in each process
    _accumulate = _compiled(cache=False)


def weighted_table(filtered: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted projections in the kernel's layout, zero-padded around the detector.

    Parameters
    ----------
    filtered : numpy.ndarray of shape (b, nz, cols), float32
    weights : numpy.ndarray of shape (b,), float64, radians

    Returns
    -------
    numpy.ndarray of shape (ceil(nz / SLAB_ROWS), b, cols + 3, SLAB_ROWS), float32
        ``table[s, i, j, k] = weights[i] · filtered[i, s·SLAB_ROWS + k, j - 1]``; column 0 and
        the last two columns are 0, as are the rows past ``nz``.
    """
    b, nz, cols = filtered.shape
    n_slabs = -(-nz // SLAB_ROWS)
    weighted = np.zeros((b, n_slabs * SLAB_ROWS, cols), np.float32)
    np.multiply(filtered, weights.astype(np.float32)[:, None, None], out=weighted[:, :nz])
    table = np.zeros((n_slabs, b, cols + 3, SLAB_ROWS), np.float32)
    table[:, :, 1 : cols + 1, :] = weighted.reshape(b, n_slabs, SLAB_ROWS, cols).transpose(1, 0, 3, 2)
    return table


def backproject_numba(volume: np.ndarray, filtered: np.ndarray, angles_rad: np.ndarray,
                      weights: np.ndarray, c0: float, threads: int) -> None:
    """Add ``Σ_i weights[i] · filtered[i][z, c0 + x cos θ_i + y sin θ_i]`` into ``volume``.

    Inputs are validated by :func:`holostream.workers.backprojection.backproject`.

    Parameters
    ----------
    volume : numpy.ndarray of shape (nz, n, n), float32, C-contiguous
        Accumulator, modified in place.
    filtered : numpy.ndarray of shape (b, nz, cols), float32
    angles_rad, weights : numpy.ndarray of shape (b,), float64
    c0 : float
        Detector column of the rotation axis, pixels.
    threads : int
        Threads to use (capped at numba's maximum).
    """
    table = weighted_table(filtered, weights)
    cos_a = np.cos(angles_rad).astype(np.float64)
    sin_a = np.sin(angles_rad).astype(np.float64)
    with _LOCK:
        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
        _accumulate(volume, table, cos_a, sin_a, float(c0), filtered.shape[2])
