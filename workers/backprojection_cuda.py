"""Pixel-driven back-projection on a CUDA device (numba-cuda), all angles in one launch.

The arithmetic is that of :func:`holostream.workers.backprojection.backproject_reference`:
``volume[z, y, x] += Σ_i w_i · q_i[z](u_i)``, ``u_i = c0 + x cos θ_i + y sin θ_i``, linear
interpolation between detector columns and 0 outside the detector. One thread owns one voxel
column ``(y, x)`` over ``Z_PER_THREAD`` consecutive rows: it computes ``u_i`` once per angle
for those rows, sums every angle of the call in registers and writes the volume once, so a
group of ``b`` projections is one launch instead of ``b`` × thousands of array operations.
Neighbouring threads of a warp run along x, so their reads of a projection row are close
together and their writes to the volume are contiguous.

The kernel runs unchanged under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, numpy
arrays), which is how CI checks its indexing without a GPU (tests/unit/test_backprojection_cuda.py);
on a GPU it takes cupy arrays (CUDA array interface) and is compared with the CPU reference
by the gpu-marked test.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

#: Volume rows summed by one thread; they share the detector position of each angle.
Z_PER_THREAD = 4

#: Threads per block along x and y (x along the volume's contiguous axis).
BLOCK = (32, 8, 1)


@cuda.jit(fastmath=False)
def _accumulate(volume, filtered, weights, cos_a, sin_a, c0):  # pragma: no cover - compiled
    x, y, slab = cuda.grid(3)
    nz, n = volume.shape[0], volume.shape[1]
    n_angles, cols = filtered.shape[0], filtered.shape[2]
    z0 = slab * Z_PER_THREAD
    if x >= n or y >= n or z0 >= nz:
        return
    half = float32(0.5) * float32(n - 1)
    xc = float32(x) - half
    yc = float32(y) - half
    acc = cuda.local.array(Z_PER_THREAD, float32)
    for k in range(Z_PER_THREAD):
        acc[k] = float32(0.0)
    for a in range(n_angles):
        u = c0 + xc * cos_a[a] + yc * sin_a[a]
        if u <= float32(-1.0) or u >= float32(cols):
            continue  # both interpolation nodes are off the detector: adds 0
        floor = math.floor(u)
        frac = u - floor
        j = int(floor)
        weight = weights[a]
        for k in range(Z_PER_THREAD):
            z = z0 + k
            if z < nz:
                low = filtered[a, z, j] if j >= 0 else float32(0.0)
                high = filtered[a, z, j + 1] if j + 1 < cols else float32(0.0)
                acc[k] += weight * (low + frac * (high - low))
    for k in range(Z_PER_THREAD):
        if z0 + k < nz:
            volume[z0 + k, y, x] += acc[k]


def backproject_cuda(volume, filtered, angles_rad: np.ndarray, weights: np.ndarray, c0: float) -> None:
    """Add ``Σ_i weights[i] · filtered[i][z, c0 + x cos θ_i + y sin θ_i]`` into ``volume``.

    Inputs are validated by :func:`holostream.workers.backprojection.backproject`.

    Parameters
    ----------
    volume : device array of shape (nz, n, n), float32, C-contiguous
        Accumulator (cupy array; numpy under the CUDA simulator), modified in place.
    filtered : device array of shape (b, nz, cols), float32, C-contiguous
    angles_rad, weights : numpy.ndarray of shape (b,), float64, radians
    c0 : float
        Detector column of the rotation axis, pixels.
    """
    nz, n, _ = volume.shape
    # three small host arrays per call; float32 positions are exact to ~1e-4 px at 10⁴ px
    cos_a = cuda.to_device(np.cos(angles_rad).astype(np.float32))
    sin_a = cuda.to_device(np.sin(angles_rad).astype(np.float32))
    w = cuda.to_device(np.asarray(weights, dtype=np.float32))
    grid = (-(-n // BLOCK[0]), -(-n // BLOCK[1]), -(-nz // Z_PER_THREAD))
    _accumulate[grid, BLOCK](volume, filtered, w, cos_a, sin_a, np.float32(c0))
