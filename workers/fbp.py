"""Filtered back-projection (parallel beam), one-shot or incremental.

Geometry (PROTOCOL.md): a point at ``(x, y)`` pixels from the rotation axis projects at
angle θ onto detector column ``u = c0 + x cos θ + y sin θ`` with
``c0 = (cols - 1)/2 + center_px``. Volumes are ``volume[z, y, x]`` with ``n = cols`` voxels
along x and y, index ``i ↔ i - (n - 1)/2``; row ``z`` of the volume is detector row ``z``.

Reconstruction formula, with every length in pixels::

    f(x, y) = Σ_i w_i · q_i(c0 + x cos θ_i + y sin θ_i),     Σ_i w_i = π

where ``q_i`` is projection ``i`` convolved with the discrete ramp kernel of Kak & Slaney
(``h[0] = 1/4``, ``h[k odd] = -1/(π k)²``, ``h[k even] = 0``) and ``w_i`` are the angle
weights of :func:`angle_weights`. For a sinogram of projected δ in pixel units
(``∫δ dl / pixel``) the result is δ per voxel; a disk of value 1 reconstructs to 1.

The back-projection itself is :func:`holostream.workers.backprojection.backproject` (a
compiled multi-threaded kernel on CPU), re-exported here.

:class:`VolumeAccumulator` keeps ``Σ w_i BP(q_i)`` and ``Σ w_i``, so ``data · π / Σ w_i`` is a
correctly scaled partial volume at any moment.
"""

from __future__ import annotations

import math

import numpy as np

from holostream.workers.backend import Backend
from holostream.workers.backprojection import backproject
from holostream.workers.padding import smooth_size

#: Angles closer than this modulo π (rad) count as the same direction.
ANGLE_TOLERANCE_RAD = 1e-7

#: Projections filtered or back-projected per batch: bounds the memory of filtered copies.
_BATCH_ANGLES = 32

#: Frequency windows of the ramp filter, functions of f in cycles/pixel (0 … 0.5).
WINDOWS = {
    "ram-lak": lambda f: np.ones_like(f),
    "shepp-logan": lambda f: np.sinc(f),
    "cosine": lambda f: np.cos(np.pi * f),
    "hann": lambda f: 0.5 * (1.0 + np.cos(2.0 * np.pi * f)),
}


def angle_weights(angles_rad) -> np.ndarray:
    """Quadrature weights of the projection angles for FBP.

    Angles are taken modulo π and sorted; each gets half the gap to its two neighbours on
    the circle of period π, so the weights sum to π. A 180° scan, a 360° scan (each
    direction measured twice) and non-uniform spacing are all handled by this one rule.
    Angles equal modulo π (within ``ANGLE_TOLERANCE_RAD``) share their direction's weight
    equally.

    Parameters
    ----------
    angles_rad : array_like of shape (n,)
        Projection angles, radians, any order, n ≥ 1.

    Returns
    -------
    numpy.ndarray of shape (n,), float64
        Weight of each angle (radians), in the order given.
    """
    angles = np.asarray(angles_rad, dtype=np.float64).ravel()
    if angles.size == 0 or not np.all(np.isfinite(angles)):
        raise ValueError(f"angle_weights needs >= 1 finite angle, got {angles.size} values")
    folded = np.mod(angles, np.pi)
    folded[folded > np.pi - ANGLE_TOLERANCE_RAD] -= np.pi  # π - ε is the direction 0
    order = np.argsort(folded, kind="stable")
    ordered = folded[order]
    starts = np.flatnonzero(np.diff(ordered, prepend=-np.inf) > ANGLE_TOLERANCE_RAD)
    directions = ordered[starts]
    if directions.size == 1:
        direction_weight = np.array([np.pi])
    else:
        gaps = np.diff(directions, append=directions[0] + np.pi)
        direction_weight = 0.5 * (gaps + np.roll(gaps, 1))
    members = np.diff(starts, append=angles.size)
    sorted_weights = np.repeat(direction_weight / members, members)
    weights = np.empty_like(sorted_weights)
    weights[order] = sorted_weights
    return weights


def _ramp_kernel(n_pad: int) -> np.ndarray:
    """Discrete ramp kernel of length ``n_pad`` (circular), unit pixel spacing."""
    k = np.arange(n_pad)
    dist = np.minimum(k, n_pad - k).astype(np.float64)
    h = np.zeros(n_pad)
    h[0] = 0.25
    odd = dist % 2 == 1
    h[odd] = -1.0 / (np.pi * dist[odd]) ** 2
    return h


class RampFilter:
    """Ramp filter along detector rows, planned once per detector width.

    Parameters
    ----------
    n_cols : int
        Detector width (pixels) of the projections to filter.
    backend : Backend
        Array namespace and FFTs.
    window : {"ram-lak", "shepp-logan", "cosine", "hann"}
        Apodisation of the ramp (``ram-lak``: none).
    padding_factor : float
        Rows are padded to ``smooth_size(ceil(padding_factor · n_cols))`` (≥ 1) before the
        FFT so the circular convolution does not wrap the data onto itself.
    pad_mode : {"edge", "constant"}
        Fill of the padding: edge values (default) or zeros. Both agree for objects
        inside the field of view; for objects wider than it, edge padding is more
        accurate (measured in ``tests/unit/test_fbp.py``).
    """

    def __init__(self, n_cols: int, backend: Backend, window: str = "ram-lak",
                 padding_factor: float = 2, pad_mode: str = "edge"):
        if window not in WINDOWS:
            raise ValueError(f"unknown FBP window {window!r}; expected one of {sorted(WINDOWS)}")
        if pad_mode not in ("edge", "constant"):
            raise ValueError(f"pad_mode must be 'edge' or 'constant', got {pad_mode!r}")
        if n_cols < 1 or padding_factor < 1:
            raise ValueError(
                f"RampFilter needs n_cols >= 1 and padding_factor >= 1, got {n_cols}, {padding_factor}"
            )
        self.backend = backend
        self.n_cols = int(n_cols)
        self.window = window
        self.pad_mode = pad_mode
        self.n_pad = smooth_size(math.ceil(padding_factor * self.n_cols))
        self.left = (self.n_pad - self.n_cols) // 2
        # Fourier transform of the spatial kernel: its DC term is the discrete one, not 0
        response = np.fft.rfft(_ramp_kernel(self.n_pad)).real
        response *= WINDOWS[window](np.fft.rfftfreq(self.n_pad))
        self.response = backend.asarray(response, dtype=backend.xp.float32)

    def __call__(self, proj):
        """Filter projections along their last axis.

        Parameters
        ----------
        proj : array of shape (..., rows, n_cols)
            Projections (e.g. projected δ in pixel units).

        Returns
        -------
        array of shape (..., rows, n_cols), float32
            Ramp-filtered projections, ready for :func:`backproject`.
        """
        xp = self.backend.xp
        proj = xp.asarray(proj, dtype=xp.float32)
        if proj.shape[-1] != self.n_cols:
            raise ValueError(f"projection width: expected {self.n_cols}, got {proj.shape[-1]}")
        right = self.n_pad - self.n_cols - self.left
        padded = xp.pad(proj, [(0, 0)] * (proj.ndim - 1) + [(self.left, right)], mode=self.pad_mode)
        spectrum = self.backend.rfft(padded)
        spectrum *= self.response
        filtered = self.backend.irfft(spectrum, n=self.n_pad)
        return xp.ascontiguousarray(filtered[..., self.left : self.left + self.n_cols], dtype=xp.float32)


def reweight(volume, filtered_of, angles_rad, old_weights, new_weights, center_px: float,
             backend: Backend, tolerance_rad: float = 0.0) -> float:
    """Change the weights of projections already in ``volume``: adds ``(new - old)·BP(q_i)``.

    Used when a scan ends with angles missing: the weights of the arrived angles are
    recomputed and only the projections whose weight changed (the neighbours of a gap)
    are back-projected again, in batches of ``_BATCH_ANGLES``.

    Parameters
    ----------
    volume : array of shape (nz, n, n), float32
        Accumulator, modified in place.
    filtered_of : callable
        ``filtered_of(i)`` for an int array ``i`` of positions returns the filtered
        projections ``(len(i), nz, cols)`` of those projections, on the backend.
    angles_rad, old_weights, new_weights : array_like of shape (k,)
        Angles and weights (radians) of the k projections in ``volume``.
    center_px : float
        Rotation-axis offset, as for :func:`backproject`.
    backend : Backend
    tolerance_rad : float
        Weight changes up to this size are ignored.

    Returns
    -------
    float
        ``Σ (new - old)`` over the changed projections: the change of the weight sum.
    """
    angles = np.asarray(angles_rad, dtype=np.float64).ravel()
    diff = np.asarray(new_weights, dtype=np.float64).ravel() - np.asarray(old_weights, dtype=np.float64).ravel()
    changed = np.flatnonzero(np.abs(diff) > tolerance_rad)
    for start in range(0, changed.size, _BATCH_ANGLES):
        batch = changed[start : start + _BATCH_ANGLES]
        backproject(volume, filtered_of(batch), angles[batch], diff[batch], center_px, backend)
    return float(diff[changed].sum())


class VolumeAccumulator:
    """Incremental FBP: a volume that is correctly normalised after every projection.

    Keeps ``data = Σ w_i BP(q_i)`` and ``weight_sum = Σ w_i``; :meth:`volume` returns
    ``data · π / weight_sum``. The filtered projection of each key is kept so that
    :meth:`reweight` can change weights later, e.g. when a scan ends with angles missing
    and the weights of the arrived ones are recomputed.

    Parameters
    ----------
    shape : tuple (nz, n, n)
        Volume shape.
    center_px : float
        Rotation-axis offset from ``(cols - 1)/2`` of the filtered projections, pixels.
    backend : Backend
        Array namespace.
    out : array of shape ``shape``, float32, optional
        Storage for ``data`` (e.g. shared memory); it is set to zero here.
    keep_filtered : bool
        Keep each filtered projection for :meth:`reweight` (one ``(nz, cols)`` float32
        array per key). A caller that never reweights passes False and holds one volume,
        not a second sinogram.
    """

    def __init__(self, shape, center_px: float, backend: Backend, out=None, keep_filtered: bool = True):
        xp = backend.xp
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(f"volume shape must be (nz, n, n), got {shape}")
        if out is None:
            out = xp.zeros(shape, dtype=xp.float32)
        elif tuple(out.shape) != shape or out.dtype != np.float32:
            raise ValueError(f"out: expected float32 {shape}, got {out.dtype} {tuple(out.shape)}")
        else:
            out[...] = 0
        self.backend = backend
        self.center_px = float(center_px)
        self.data = out
        self.keep_filtered = bool(keep_filtered)
        self._projections: dict = {}  # key -> (filtered (nz, cols) or None, angle_rad, weight)

    @property
    def weight_sum(self) -> float:
        """Σ of the weights currently in ``data`` (radians)."""
        return float(sum(w for _, _, w in self._projections.values()))

    def add(self, key, filtered, angle_rad: float, weight: float) -> None:
        """Back-project one filtered projection ``(nz, cols)`` with ``weight`` (radians)."""
        if key in self._projections:
            raise ValueError(f"projection {key!r} was already added")
        filtered = self.backend.xp.array(filtered, dtype=self.backend.xp.float32)
        if filtered.ndim != 2 or filtered.shape[0] != self.data.shape[0]:
            raise ValueError(
                f"filtered shape: expected ({self.data.shape[0]}, cols), got {filtered.shape}"
            )
        backproject(self.data, filtered, angle_rad, weight, self.center_px, self.backend)
        self._projections[key] = (filtered if self.keep_filtered else None, float(angle_rad), float(weight))

    def volume(self):
        """Normalised copy ``data · π / weight_sum`` (zeros before the first projection)."""
        total = self.weight_sum
        if total == 0.0:
            return self.backend.xp.zeros_like(self.data)
        return self.data * self.backend.xp.float32(math.pi / total)

    def reweight(self, new_weights: dict) -> None:
        """Change the weights of some projections: adds ``(new - old) · BP(q_key)``.

        Parameters
        ----------
        new_weights : dict
            ``key -> weight`` (radians) for keys already added; other keys keep theirs.
        """
        unknown = [k for k in new_weights if k not in self._projections]
        if unknown:
            raise KeyError(f"reweight: keys never added: {unknown[:5]}")
        if not self.keep_filtered:
            raise ValueError("reweight needs the filtered projections: create with keep_filtered=True")
        keys = list(new_weights)
        old = [self._projections[k][2] for k in keys]
        xp = self.backend.xp
        reweight(self.data, lambda idx: xp.stack([self._projections[keys[i]][0] for i in idx]),
                 [self._projections[k][1] for k in keys], old, [float(new_weights[k]) for k in keys],
                 self.center_px, self.backend)
        for k in keys:
            filtered, angle, _ = self._projections[k]
            self._projections[k] = (filtered, angle, float(new_weights[k]))


def combine_partials(datas, weight_sums):
    """Volume from partial accumulators: ``Σ data · π / Σ weight_sums``.

    Parameters
    ----------
    datas : sequence of arrays of shape (nz, n, n), or one array (k, nz, n, n)
        Un-normalised sums ``Σ w_i BP(q_i)`` (``VolumeAccumulator.data``), float32.
    weight_sums : sequence of float
        ``Σ w_i`` of each partial, radians.

    Returns
    -------
    array of shape (nz, n, n), float32
    """
    total = float(np.sum(np.asarray(weight_sums, dtype=np.float64)))
    if len(datas) == 0 or total <= 0.0:
        raise ValueError(f"combine_partials needs >= 1 partial with weights > 0, got sum {total}")
    volume = datas[0].astype(np.float32, copy=True)
    for data in datas[1:]:
        volume += data
    volume *= np.float32(math.pi / total)
    return volume


def reconstruct(sinogram, angles_rad, center_px: float, backend: Backend, window: str = "ram-lak"):
    """One-shot FBP of a whole sinogram: filter, weight, back-project.

    Parameters
    ----------
    sinogram : array of shape (n_angles, nz, cols)
        Projections, e.g. projected δ in pixel units.
    angles_rad : array_like of shape (n_angles,)
        Projection angles, radians (host array: weights are computed with numpy).
    center_px : float
        Rotation-axis offset from ``(cols - 1)/2``, pixels.
    backend : Backend
        Array namespace.
    window : str
        Ramp window (see :class:`RampFilter`).

    Returns
    -------
    array of shape (nz, cols, cols), float32
        The reconstructed volume ``[z, y, x]`` (δ per voxel for a δ-px sinogram).
    """
    xp = backend.xp
    sinogram = xp.asarray(sinogram, dtype=xp.float32)
    if sinogram.ndim != 3:
        raise ValueError(f"sinogram must be (n_angles, nz, cols), got shape {sinogram.shape}")
    n_angles, nz, cols = sinogram.shape
    weights = angle_weights(angles_rad)
    angles = np.asarray(angles_rad, dtype=np.float64).ravel()
    if weights.size != n_angles:
        raise ValueError(f"angles_rad: expected {n_angles} angles, got {weights.size}")
    ramp = RampFilter(cols, backend, window)
    volume = xp.zeros((nz, cols, cols), dtype=xp.float32)
    for start in range(0, n_angles, _BATCH_ANGLES):
        part = slice(start, start + _BATCH_ANGLES)
        backproject(volume, ramp(sinogram[part]), angles[part], weights[part], center_px, backend)
    return volume
