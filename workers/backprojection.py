"""Back-projection for FBP: the compiled CPU kernel, and the array-operation reference.

:func:`backproject` is the one entry point (:mod:`holostream.workers.fbp` re-exports it). On
CPU it runs the multi-threaded kernel of :mod:`holostream.workers.backprojection_numba`, on
GPU the one-launch kernel of :mod:`holostream.workers.backprojection_cuda` (when numba-cuda
is installed). :func:`backproject_reference` (also with ``reference=True``) expresses the
same arithmetic as whole-array operations of the backend's namespace (numpy or cupy); it is
the reference the kernels are tested against.

Geometry (PROTOCOL.md): a point at ``(x, y)`` pixels from the rotation axis projects at angle
θ onto detector column ``u = c0 + x cos θ + y sin θ`` with ``c0 = (cols - 1)/2 + center_px``;
volumes are ``volume[z, y, x]``, index ``i ↔ i - (n - 1)/2``.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from holostream.workers.backend import Backend

#: Elements of one reference work item (z-slab × pixels); ~1 MiB float32 temporaries
#: stay in a core's cache, which was measured faster than whole-volume passes.
_SLAB_ELEMENTS = 1 << 18

#: Volumes thinner than this are back-projected by the reference on CPU (measured on the
#: 2-core VM, 180 angles: 1-2 rows of 128² or 682² were 1.5-2.6x faster there, 4 rows equal,
#: 8 and more rows faster in the kernel).
_CPU_KERNEL_MIN_ROWS = 3

#: Calls with fewer voxel updates (angles × voxels) than this stay with the reference on CPU.
#: A process's first kernel call costs 1-3 s on the 2-core VM (numba's import, the cached
#: machine code, its thread pool; 3-16 s more where nothing is cached yet): a live scan of
#: small volumes saw it as a stalled first group (fewer live volumes in tests/integration,
#: pool mode 64³ × 1 angle and split mode 64³ × 4 angles per call), while such calls take
#: milliseconds either way. From 256³ × 1 angle on (or once a process has loaded it), the
#: kernel is used.
_CPU_KERNEL_MIN_UPDATES = 1 << 24

# Devices whose compiled kernel this process has loaded (small calls then use it too).
_LOADED: set[str] = set()

#: Below this many voxel updates (angles × voxels) per call, starting threads costs more
#: than it saves (measured: 1 angle of 64×128² took 1.2 ms alone, 3.3 ms with a 2-thread pool).
_THREADING_MIN_UPDATES = 1 << 22


def _detector_positions(xp, n: int, cols: int, angle_rad: float, c0: float):
    """Table index and fraction of ``u(x, y)`` for the ``n × n`` grid, flattened.

    The returned index ``j`` points into a row padded with one zero on the left and two
    on the right (table column ``j`` ↔ detector column ``j - 1``); positions outside
    the detector are clipped onto the zeros, so interpolation gives 0 there.
    """
    coords = xp.arange(n, dtype=xp.float32) - xp.float32((n - 1) / 2)
    u = (coords[None, :] * xp.float32(math.cos(angle_rad))
         + (coords[:, None] * xp.float32(math.sin(angle_rad)) + xp.float32(c0)))
    u = xp.clip(u, -1.0, float(cols), out=u).ravel()
    floor = xp.floor(u)
    frac = u - floor
    index = floor.astype(xp.intp)
    index += 1
    return index, frac


def _slabs(nz: int, n_pixels: int, threads: int) -> list[slice]:
    """z-ranges small enough to stay in cache, and at least one per thread."""
    rows = max(1, min(_SLAB_ELEMENTS // max(n_pixels, 1), -(-nz // max(threads, 1))))
    return [slice(z, min(z + rows, nz)) for z in range(0, nz, rows)]


def backproject(volume, filtered, angles_rad, weights, center_px: float, backend: Backend,
                reference: bool = False) -> None:
    """Add weighted back-projections of filtered projections into ``volume`` (in place).

    ``volume[z, y, x] += Σ_i weights[i] · filtered[i][z, u_i(x, y)]`` with
    ``u_i = (cols - 1)/2 + center_px + x cos θ_i + y sin θ_i``, linear interpolation
    between detector columns and 0 outside the detector. All angles of one call are summed
    before the volume is touched, so a call with many angles costs one pass over the volume.

    Parameters
    ----------
    volume : array of shape (nz, n, n), float32, C-contiguous
        Accumulator, modified in place.
    filtered : array of shape (b, nz, cols) or (nz, cols)
        Ramp-filtered projections (:class:`~holostream.workers.fbp.RampFilter`).
    angles_rad : array_like of shape (b,) or scalar
        Projection angles, radians.
    weights : array_like of shape (b,) or scalar
        Angle weights (:func:`~holostream.workers.fbp.angle_weights`), radians.
    center_px : float
        Rotation-axis offset from ``(cols - 1)/2``, in the pixels of ``filtered``.
    backend : Backend
        Namespace of ``volume`` and ``filtered``; on CPU, ``backend.threads`` threads.
    reference : bool
        Use the array-operation reference instead of the compiled kernels (for tests and
        comparisons).
    """
    xp = backend.xp
    filtered = xp.asarray(filtered, dtype=xp.float32)
    if filtered.ndim == 2:
        filtered = filtered[None]
    angles = np.atleast_1d(np.asarray(angles_rad, dtype=np.float64))
    weights = np.atleast_1d(np.asarray(weights, dtype=np.float64))
    if volume.ndim != 3 or volume.shape[1] != volume.shape[2] or volume.dtype != np.float32:
        raise ValueError(f"volume must be float32 (nz, n, n), got {volume.dtype} {volume.shape}")
    if not volume.flags.c_contiguous:
        raise ValueError("volume must be C-contiguous (it is updated in place through views)")
    if filtered.ndim != 3 or filtered.shape[1] != volume.shape[0]:
        raise ValueError(f"filtered shape: expected (b, {volume.shape[0]}, cols), got {filtered.shape}")
    b, nz, cols = filtered.shape
    if angles.shape != (b,) or weights.shape != (b,):
        raise ValueError(f"angles and weights: expected {b} each, got {angles.size} and {weights.size}")
    c0 = (cols - 1) / 2 + float(center_px)
    # the CPU kernel works on 32 rows at a time (one or two rows are faster one angle at a
    # time) and is worth loading for a large call; once loaded, it serves every call
    small = backend.name == "cpu" and (nz < _CPU_KERNEL_MIN_ROWS or (
        b * nz * volume.shape[1] ** 2 < _CPU_KERNEL_MIN_UPDATES and "cpu" not in _LOADED))
    kernel = None if reference or small else _kernel(backend.name)
    if kernel is not None:
        _LOADED.add(backend.name)
    if kernel is None:
        backproject_reference(volume, filtered, angles, weights, c0, backend)
    elif backend.name == "cpu":
        kernel(volume, filtered, angles, weights, c0, backend.threads)
    else:
        kernel(volume, xp.ascontiguousarray(filtered), angles, weights, c0)


def _kernel(device: str):
    """The compiled back-projector of ``device`` ("cpu", "gpu"), or None where it cannot import.

    numba is a dependency and numba-cuda comes with the ``gpu`` extra; an environment put
    together by hand without them (e.g. a bare GPU machine given only some wheels) runs the
    array-operation reference instead, which gives the same volume, more slowly.
    """
    try:
        if device == "cpu":
            from holostream.workers.backprojection_numba import backproject_numba as kernel
        else:
            from holostream.workers.backprojection_cuda import backproject_cuda as kernel
    except ImportError:
        return None
    return kernel


def backproject_reference(volume, filtered, angles, weights, c0: float, backend: Backend) -> None:
    """Array-operation form of :func:`backproject`, one angle at a time (inputs validated).

    The same ``u_i`` serves every row z, so it is computed once per angle; the z-rows are
    processed in cache-sized slabs, in parallel threads on CPU (``backend.threads``) when
    the call is large enough to pay for starting them.

    Parameters
    ----------
    volume : array of shape (nz, n, n), float32, C-contiguous
    filtered : array of shape (b, nz, cols), float32
    angles, weights : numpy.ndarray of shape (b,), float64, radians
    c0 : float
        Detector column of the rotation axis, pixels.
    backend : Backend
    """
    xp = backend.xp
    b, nz, cols = filtered.shape
    n = volume.shape[1]
    flat = volume.reshape(nz, n * n)
    slabs = _slabs(nz, n * n, backend.threads)

    def add_slab(zs, table, slope, index, frac):
        value = xp.take(slope[zs], index, axis=1)
        value *= frac
        value += xp.take(table[zs], index, axis=1)
        flat[zs] += value

    threaded = backend.threads > 1 and len(slabs) > 1 and b * nz * n * n >= _THREADING_MIN_UPDATES
    pool = ThreadPoolExecutor(backend.threads) if threaded else None
    try:
        for i in range(b):
            if weights[i] == 0.0:
                continue
            index, frac = _detector_positions(xp, n, cols, angles[i], c0)
            table = xp.zeros((nz, cols + 3), dtype=xp.float32)
            table[:, 1 : cols + 1] = filtered[i] * xp.float32(weights[i])
            slope = table[:, 1:] - table[:, :-1]
            if pool is None:
                for zs in slabs:
                    add_slab(zs, table, slope, index, frac)
            else:
                list(pool.map(lambda zs: add_slab(zs, table, slope, index, frac), slabs))
    finally:
        if pool is not None:
            pool.shutdown()
