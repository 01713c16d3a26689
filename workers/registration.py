"""Bring the images of several propagation distances onto the reference distance's grid.

Multi-distance holo-tomography (PROTOCOL.md, "Several propagation distances") records each
angle at several effective distances, each with its own effective pixel size (cone-beam
magnification, :func:`~holostream.workers.physics.fresnel_scaling`) and a small lateral
offset (the sample stage is moved between distances). Before the distances can be phased
together they are

1. scaled to the reference (first) distance's pixel size about the detector centre, and
   shifted by their offset: :class:`ScaleToReference` (Lanczos-3 interpolation as two
   sparse matrices per distance);
2. registered to the reference with sub-pixel accuracy where the offset is not known:
   :func:`phase_correlation_shift` (cross-correlation refined by a matrix-multiply DFT
   upsampled around the peak, Guizar-Sicairos et al., Opt. Lett. 33, 156 (2008)) on
   per-distance Paganin phase maps (:func:`measure_shifts`): holograms of different
   distances carry different fringes, their Paganin phases are nearly the same image.

Geometry convention (the wire's ``shift_px = [dv, du]``): the reference's pixel ``(v, u)``
is seen by distance ``i`` at ``(cv + (v - cv)·s + dv, cu + (u - cu)·s + du)`` in its own
pixels, with ``s = pixel_size_ref / pixel_size_i`` and ``(cv, cu)`` the frame centre
``((rows - 1) / 2, (cols - 1) / 2)``.
"""

from __future__ import annotations

import math

import numpy as np

from .paganin import Paganin


def resampling_matrix(n: int, scale: float, shift_px: float):
    """Sparse ``(n, n)`` matrix taking samples at ``c + (k - c)·scale + shift_px`` of a line of n.

    Lanczos-3 interpolation (6 taps, weights normalised to sum 1), edge values beyond the
    ends (``mode="nearest"``), ``c = (n - 1) / 2``. Returns ``scipy.sparse.csr_matrix``,
    float32. Lanczos-3 rather than Keys' cubic (4 taps): it keeps more of the fine fringes,
    4-distance δ correlation 0.9555 vs 0.9529 in tests/unit/test_multidistance_volume.py
    (a cubic B-spline ``affine_transform``: 0.9550).
    """
    import scipy.sparse

    centre = (n - 1) / 2.0
    position = centre + (np.arange(n) - centre) * scale + shift_px
    base = np.floor(position).astype(np.int64)
    taps = base[:, None] + np.arange(-2, 4)[None, :]
    t = position[:, None] - taps
    weights = np.sinc(t) * np.sinc(t / 3.0)
    weights /= weights.sum(axis=1, keepdims=True)
    rows = np.repeat(np.arange(n), 6)
    # duplicates at the clamped ends are summed by the conversion to CSR
    matrix = scipy.sparse.coo_matrix((weights.ravel(), (rows, np.clip(taps, 0, n - 1).ravel())),
                                     shape=(n, n))
    return matrix.tocsr().astype(np.float32)


class ScaleToReference:
    """Resample images of the distances onto the reference grid; set up once per scan.

    Scaling about the frame centre plus a shift is separable: each distance's image is
    multiplied by two sparse resampling matrices (:func:`resampling_matrix`, 6 taps per
    axis), computed here once: ``out = V_i · image · U_iᵀ``. Three distances of 16 angles,
    best of 3 on this VM: 1.6 vs 15.5 ms per angle at 128², 51 vs 305 at 512², against a
    cubic-spline ``scipy.ndimage.affine_transform`` per image.

    Parameters
    ----------
    shape : tuple of int
        ``(rows, cols)`` of every distance's (flat-fielded, binned) images.
    pixel_sizes_m : sequence of float
        Effective pixel size of each distance (the same binning applied to all), metres;
        entry 0 is the reference.
    backend : Backend
    shifts_px : array of shape (n_distances, 2), optional
        ``(dv, du)`` of each distance in its own pixels (module doc); row 0 is ignored
        (the reference defines the grid). Default: no offset.

    Attributes
    ----------
    scales : ndarray of shape (n_distances,), float64
        ``pixel_size_ref / pixel_size_i``.
    shifts_px : ndarray of shape (n_distances, 2), float64
    """

    def __init__(self, shape, pixel_sizes_m, backend, shifts_px=None):
        self.shape = (int(shape[0]), int(shape[1]))
        sizes = np.asarray(pixel_sizes_m, dtype=np.float64).ravel()
        if sizes.size < 1 or not np.all(np.isfinite(sizes) & (sizes > 0)):
            raise ValueError(f"pixel_sizes_m must be positive numbers, got {pixel_sizes_m!r}")
        self.scales = sizes[0] / sizes
        shifts = np.zeros((sizes.size, 2)) if shifts_px is None else np.array(shifts_px, np.float64)
        if shifts.shape != (sizes.size, 2) or not np.all(np.isfinite(shifts)):
            raise ValueError(f"shifts_px must be finite, of shape ({sizes.size}, 2), got {shifts.shape}")
        shifts[0] = 0.0
        self.shifts_px = shifts
        self.backend = backend
        sparse = _sparse_module(backend)
        self._matrices = {}
        for i in range(1, sizes.size):
            if self.scales[i] == 1.0 and not shifts[i].any():
                continue
            rows = resampling_matrix(self.shape[0], self.scales[i], shifts[i, 0])
            cols = resampling_matrix(self.shape[1], self.scales[i], shifts[i, 1])
            self._matrices[i] = (sparse.csr_matrix(rows), sparse.csr_matrix(cols))

    def __call__(self, images):
        """The images of all distances on the reference grid.

        Parameters
        ----------
        images : ndarray of shape (..., n_distances, rows, cols), float32
            One image per distance (axis -3), on this backend.

        Returns
        -------
        ndarray of the same shape, float32
            Distance 0 unchanged, the others scaled and shifted (edge values outside their
            field of view).
        """
        xp = self.backend.xp
        images = xp.asarray(images, dtype=xp.float32)
        n = self.scales.size
        rows, cols = self.shape
        if images.ndim < 3 or tuple(images.shape[-3:]) != (n, rows, cols):
            raise ValueError(f"images: expected (..., {n}, {rows}, {cols}), got {images.shape}")
        out = images.copy()
        flat_in, flat_out = images.reshape(-1, n, rows, cols), out.reshape(-1, n, rows, cols)
        m = flat_in.shape[0]
        for i, (v, u) in self._matrices.items():
            stack = flat_in[:, i]  # (m, rows, cols)
            # rows: V · image for every image at once, as one (rows, m·cols) product
            tall = v @ xp.ascontiguousarray(stack.transpose(1, 0, 2)).reshape(rows, m * cols)
            tall = tall.reshape(rows, m, cols).transpose(1, 0, 2).reshape(m * rows, cols)
            # columns: (U · tallᵀ)ᵀ = tall · Uᵀ
            flat_out[:, i] = (u @ xp.ascontiguousarray(tall.T)).T.reshape(m, rows, cols)
        return out


def _sparse_module(backend):
    """``scipy.sparse`` or ``cupyx.scipy.sparse``, the sparse matrices of ``backend``."""
    if backend.name == "gpu":
        import cupyx.scipy.sparse as sparse
    else:
        import scipy.sparse as sparse
    return sparse


def _peak_offsets(n: int, index: int) -> int:
    """Signed shift of a correlation peak at ``index`` on a periodic axis of ``n``."""
    return index - n if index > n // 2 else index


def _local_dft(spectrum, rows_t, cols_t, backend):
    """``Σ_f X(f) exp(2πi f·t)`` at the sample positions ``rows_t × cols_t`` (pixels).

    A matrix-multiply DFT: the cross-correlation evaluated on a fine local grid around the
    coarse peak, at the cost of two small matrix products instead of a large padded FFT.
    """
    xp = backend.xp
    n_rows, n_cols = spectrum.shape
    fy = xp.asarray(np.fft.fftfreq(n_rows))
    fx = xp.asarray(np.fft.fftfreq(n_cols))
    ev = xp.exp(2j * math.pi * xp.asarray(rows_t)[:, None] * fy[None, :])
    eu = xp.exp(2j * math.pi * fx[:, None] * xp.asarray(cols_t)[None, :])
    return ev @ spectrum @ eu


def _hann(shape, xp):
    """Separable Hann window of ``shape`` (float64): frame edges weigh nothing."""
    rows, cols = (np.hanning(n) for n in shape)
    return xp.asarray(np.outer(rows, cols))


def phase_correlation_shift(reference, moving, backend, upsample: int = 100,
                            normalize: bool = False, window: bool = True,
                            refinements: int = 3) -> tuple[float, float]:
    """Sub-pixel translation of ``moving`` relative to ``reference``.

    The integer peak of the cross-correlation (FFT), refined on a ``1/upsample`` pixel grid
    over ±1.5 pixels around it by a local DFT of the same cross-power spectrum.

    Parameters
    ----------
    reference, moving : ndarray of shape (rows, cols), float
        Images on this backend (mean-subtracted inside).
    backend : Backend
    upsample : int
        Refinement factor, ≥ 1 (accuracy ``1/upsample`` pixel on noise-free data).
    normalize : bool
        Whiten the cross-power spectrum (phase correlation proper); plain cross-correlation
        (False) is more robust to noise on smooth images.
    window : bool
        Taper both images with a Hann window first: without it the frame edges, which do
        not move, pull the peak towards zero shift.
    refinements : int
        Times ``moving`` is shifted back by the estimate (Fourier shift) and the residual
        measured again: the window's own pull towards zero shrinks with the residual.

    Returns
    -------
    (dv, du) : tuple of float
        Pixels such that ``moving(p) ≈ reference(p - (dv, du))``.
    """
    xp = backend.xp
    if reference.shape != moving.shape or reference.ndim != 2:
        raise ValueError(f"need two images of the same 2-D shape, got {reference.shape}, {moving.shape}")
    if not isinstance(upsample, int) or upsample < 1:
        raise ValueError(f"upsample must be an integer >= 1, got {upsample!r}")
    ref = xp.asarray(reference, dtype=xp.float64)
    mov = xp.asarray(moving, dtype=xp.float64)
    ref = ref - ref.mean()
    taper = _hann(ref.shape, xp) if window else None
    reference_spectrum = xp.conj(backend.fft2(ref * taper if window else ref))
    moving_spectrum = backend.fft2(mov)
    fy = xp.asarray(np.fft.fftfreq(ref.shape[0]))[:, None]
    fx = xp.asarray(np.fft.fftfreq(ref.shape[1]))[None, :]
    total = np.zeros(2)
    for _ in range(max(0, int(refinements)) + 1):
        # moving shifted back by the estimate so far (exact for band-limited images)
        back = backend.ifft2(moving_spectrum * xp.exp(2j * math.pi * (fy * total[0] + fx * total[1]))).real
        back = back - back.mean()
        residual = _cross_correlation_peak(backend.fft2(back * taper if window else back)
                                           * reference_spectrum, backend, upsample, normalize)
        total += residual
        if np.abs(residual).max() < 0.5 / upsample:
            break
    return float(total[0]), float(total[1])


def _cross_correlation_peak(cross, backend, upsample: int, normalize: bool) -> np.ndarray:
    """Peak ``(dv, du)`` of the cross-correlation whose spectrum is ``cross``, refined to 1/upsample."""
    xp = backend.xp
    if normalize:
        cross = cross / xp.maximum(xp.abs(cross), 1e-30)
    correlation = xp.abs(backend.ifft2(cross))
    rows, cols = correlation.shape
    peak = int(xp.argmax(correlation))
    coarse = np.array([_peak_offsets(rows, peak // cols), _peak_offsets(cols, peak % cols)], float)
    if upsample == 1:
        return coarse
    # Two passes: ±1.5 px on a 1/10 px grid, then ±0.1 px around its best on the 1/upsample
    # grid. One pass of 1/upsample over ±1.5 px costs (3·upsample)² DFT samples (301² at
    # 100: 0.09 s per call at 96², minutes per live scan at 1024²); the two cost ~1/100 of it.
    # The correlation of images of some pixels' detail is smooth on a 0.1 px scale, so the
    # first pass lands beside the peak and the second finds it.
    best = coarse
    for step, half_width in ((1 / min(10, upsample), 1.5), (1 / upsample, 0.1)):
        if step >= half_width:
            continue
        half = math.ceil(round(half_width / step, 6))
        grid = np.arange(-half, half + 1) * step
        local = xp.abs(_local_dft(cross, best[0] + grid, best[1] + grid, backend))
        k = int(xp.argmax(local))
        best = best + np.array([grid[k // grid.size], grid[k % grid.size]])
    return best


def measure_shifts(intensities, distances_m, pixel_size_m: float, energy_kev: float,
                   delta_beta: float, backend, upsample: int = 100) -> np.ndarray:
    """Offsets of the distances from the reference, measured on their Paganin phases.

    Parameters
    ----------
    intensities : ndarray of shape (n_distances, rows, cols) or (n_angles, n_distances, rows, cols)
        Flat-fielded intensities already scaled to the reference pixel (shifts not applied).
    distances_m : sequence of float
        Effective propagation distance of each distance, metres.
    pixel_size_m : float
        The reference pixel size, metres.
    energy_kev, delta_beta : float
        Photon energy; δ/β of the Paganin filter (only its smoothing matters here).
    backend : Backend
    upsample : int
        Sub-pixel refinement factor of :func:`phase_correlation_shift`.

    Returns
    -------
    ndarray of shape (n_distances, 2), float64
        ``(dv, du)`` in **reference** pixels (row 0 is zero); the median over the angles
        when several are given. Multiply by ``pixel_size_ref / pixel_size_i`` for the
        wire's ``shift_px`` in the distance's own pixels.
    """
    xp = backend.xp
    stack = xp.asarray(intensities, dtype=xp.float32)
    if stack.ndim == 3:
        stack = stack[None]
    distances = [float(z) for z in distances_m]
    if stack.ndim != 4 or stack.shape[1] != len(distances):
        raise ValueError(f"intensities: expected (n_angles, {len(distances)}, rows, cols), got {stack.shape}")
    shape = tuple(stack.shape[-2:])
    filters = [Paganin(shape, pixel_size_m, z, energy_kev, delta_beta, backend) for z in distances]
    shifts = np.zeros((stack.shape[0], len(distances), 2))
    for a in range(stack.shape[0]):
        reference = filters[0](stack[a, 0])
        for i in range(1, len(distances)):
            shifts[a, i] = phase_correlation_shift(reference, filters[i](stack[a, i]), backend, upsample)
    return np.median(shifts, axis=0)
