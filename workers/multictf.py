"""Multi-distance contrast-transfer-function (CTF) phase retrieval, with or without one material.

For a weak object ``T ≈ 1 - B + iφ`` recorded at effective distances ``z_i`` (all images on
one grid, :mod:`workers.registration`), Fresnel propagation gives per distance
(``χ_i = πλz_i|f|²``, ``s_i = sin χ_i``, ``c_i = cos χ_i``, ``g_i = I_i - 1``)::

    ĝ_i = 2 s_i φ̂ - 2 c_i B̂

**Homogeneous** (``B = -(β/δ)φ``, :class:`MultiDistanceCTF` with ``mixed=False``): with
``A_i = s_i + (β/δ) c_i`` the least-squares solution over the distances is::

    φ̂ = Σ A_i ĝ_i / (2 (Σ A_i² + n α(f)))

``α(f)`` moves from ``alpha_low`` to ``alpha_high`` as in :func:`workers.ctf.ctf_filter`, on
the χ of the largest distance (its CTF has the first zeros); the other distances fill those
zeros, so a much smaller ``alpha_high`` than the single-distance one serves.

**Two materials or more** (``mixed=True``): φ and B are independent unknowns, solved per
frequency by regularised least squares (a 2×2 system)::

    min Σ_i |2 s_i φ̂ - 2 c_i B̂ - ĝ_i|² + n α_mix |κ φ̂ + B̂|² + n α(f) (|φ̂|² + |B̂|²)

``κ = β/δ`` of a prior material. At low frequencies all ``s_i → 0`` and the data cannot
tell phase from absorption: there the ``α_mix`` term takes over and the solution falls back
to the homogeneous one; where the distances' sines and cosines differ (higher
frequencies) the data decide, and δ and β come out independently. ``α_mix = 0`` is the
pure two-unknown least squares (noisy at low frequencies).
"""

from __future__ import annotations

import math

import numpy as np

from .ctf import TRANSITION_CHI
from .fresnel import frequency_squared
from .padding import Padding
from .physics import wavelength_m

#: Default weight of the homogeneous prior of the mixed CTF. On the simulated mixed-material
#: phantom (tests/unit/test_multidistance_volume.py's, 64² pixels, 90 angles, 2·10⁴ photons)
#: the volumes' correlations with the true (δ, β) are (0.952, 0.36) at 0.01, (0.973, 0.30) at
#: 1, (0.971, 0.54) at 30, (0.971, 0.74) at 100, (0.971, 0.80) at 1000 = the homogeneous CTF:
#: with detector noise the data pin β down only where its prior helps (docs/multi-distance.md).
ALPHA_MIX = 100.0


def _alpha(chi, alpha_low: float, alpha_high: float):
    """Regularisation ``alpha_low → alpha_high`` by a smoothstep in χ (workers/ctf.py)."""
    t = np.clip((chi - TRANSITION_CHI[0]) / (TRANSITION_CHI[1] - TRANSITION_CHI[0]), 0, 1)
    return alpha_low + (alpha_high - alpha_low) * (t * t * (3.0 - 2.0 * t))


def multi_ctf_filters(chis, delta_beta: float, alpha_low: float, alpha_high: float,
                      mixed: bool = False, alpha_mix: float = ALPHA_MIX):
    """Per-distance filters ``F_φ,i`` (and ``F_B,i``) with ``φ̂ = Σ F_φ,i ĝ_i`` (module doc).

    Parameters
    ----------
    chis : ndarray of shape (n_distances, ...), float64
        Fresnel phase ``χ_i = πλz_i|f|²`` of each distance on one frequency grid, radians.
    delta_beta : float
        δ/β of the (prior) material, > 0.
    alpha_low, alpha_high : float
        Regularisation below / above the first CTF maximum of the largest distance.
    mixed : bool
        Solve for φ and B independently (True) or with ``B = -(β/δ)φ`` (False).
    alpha_mix : float
        Weight of the homogeneous prior ``|κφ + B|²`` when ``mixed``, ≥ 0.

    Returns
    -------
    phase_filters : ndarray of shape (n_distances, ...), float32
    attenuation_filters : ndarray of shape (n_distances, ...), float32, or None
        None when not ``mixed`` (then ``B = -(β/δ)φ``).

    Raises
    ------
    ValueError
        For δ/β ≤ 0, negative or NaN regularisation, or no distance.
    """
    chis = np.asarray(chis, dtype=np.float64)
    if chis.ndim < 1 or chis.shape[0] < 1:
        raise ValueError("need the χ of at least one distance")
    if not delta_beta > 0:
        raise ValueError(f"delta_beta must be > 0, got {delta_beta!r}")
    if not (alpha_low >= 0 and alpha_high > 0 and alpha_mix >= 0):
        raise ValueError(f"need alpha_low >= 0, alpha_high > 0, alpha_mix >= 0, got "
                         f"{alpha_low!r}, {alpha_high!r}, {alpha_mix!r}")
    n = chis.shape[0]
    kappa = 1.0 / delta_beta
    alpha = n * _alpha(chis.max(axis=0), alpha_low, alpha_high)
    sin, cos = np.sin(chis), np.cos(chis)
    if not mixed:
        ctf = sin + kappa * cos
        return (ctf / (2.0 * ((ctf**2).sum(axis=0) + alpha))).astype(np.float32), None
    # Normal equations of the rows (2 s_i, -2 c_i) plus both penalties: [[p, q], [q, r]].
    p = 4.0 * (sin**2).sum(axis=0) + n * alpha_mix * kappa**2 + alpha
    q = -4.0 * (sin * cos).sum(axis=0) + n * alpha_mix * kappa
    r = 4.0 * (cos**2).sum(axis=0) + n * alpha_mix + alpha
    det = p * r - q * q
    phase = (r * 2.0 * sin + q * 2.0 * cos) / det
    attenuation = (-q * 2.0 * sin - p * 2.0 * cos) / det
    return phase.astype(np.float32), attenuation.astype(np.float32)


class MultiDistanceCTF:
    """Intensities of several distances → phase (and attenuation); filters set up once.

    Parameters
    ----------
    shape : tuple of int
        ``(rows, cols)`` of the images, all on the reference grid.
    pixel_size_m : float
        Reference pixel size, metres.
    distances_m : sequence of float
        Effective propagation distance of each image, metres (2 or more).
    energy_kev : float
    delta_beta : float
        δ/β of the material (homogeneous) or of the prior (mixed).
    backend : Backend
    mixed : bool
        Retrieve B independently of φ (module doc).
    alpha_low, alpha_high, alpha_mix : float
        Regularisation (module doc).
    pad_mode : str
    margin : float
        As for :class:`workers.padding.Padding`.

    Attributes
    ----------
    padding : Padding
    phase_filters : ndarray of shape (n_distances, padded_rows, padded_cols // 2 + 1), float32
    attenuation_filters : same shape, float32, or None when not ``mixed``
    """

    def __init__(self, shape, pixel_size_m: float, distances_m, energy_kev: float,
                 delta_beta: float, backend, mixed: bool = False, alpha_low: float = 1e-7,
                 alpha_high: float = 1e-3, alpha_mix: float = ALPHA_MIX, pad_mode: str = "edge",
                 margin: float = 0.5):
        distances = np.asarray(distances_m, dtype=np.float64).ravel()
        if distances.size < 1 or not np.all(np.isfinite(distances) & (distances > 0)):
            raise ValueError(f"distances_m must be positive numbers, got {distances_m!r}")
        self.backend = backend
        self.delta_beta = float(delta_beta)
        self.n_distances = int(distances.size)
        self.mixed = bool(mixed)
        self.padding = Padding(shape, backend, mode=pad_mode, margin=margin)
        f2 = frequency_squared(self.padding.padded_shape, pixel_size_m, half=True)
        chis = math.pi * wavelength_m(energy_kev) * distances[:, None, None] * f2[None]
        phase, attenuation = multi_ctf_filters(chis, delta_beta, alpha_low, alpha_high, mixed, alpha_mix)
        self.phase_filters = backend.asarray(phase)
        self.attenuation_filters = None if attenuation is None else backend.asarray(attenuation)

    def retrieve_padded(self, padded_intensities):
        """Phase and attenuation on the padded grid.

        Parameters
        ----------
        padded_intensities : ndarray of shape (..., n_distances, padded_rows, padded_cols), float32

        Returns
        -------
        phase, attenuation : ndarray of shape (..., padded_rows, padded_cols), float32
            φ (radians, negative in matter) and ``B`` (``|T| = exp(-B)``, ≥ 0 in matter).
        """
        shape = self.padding.padded_shape
        if padded_intensities.ndim < 3 or padded_intensities.shape[-3] != self.n_distances:
            raise ValueError(f"expected (..., {self.n_distances}, *{shape}), got {padded_intensities.shape}")
        spectra = self.backend.rfft2(padded_intensities)
        # g = I - 1: the constant only feeds the zero frequency.
        spectra[..., 0, 0] -= np.float32(shape[0] * shape[1])
        phase = self.backend.irfft2((spectra * self.phase_filters).sum(axis=-3), s=shape)
        if self.attenuation_filters is None:
            attenuation = phase * np.float32(-1.0 / self.delta_beta)
        else:
            attenuation = self.backend.irfft2((spectra * self.attenuation_filters).sum(axis=-3), s=shape)
        return phase, attenuation

    def __call__(self, intensities):
        """Phase and attenuation of flat-fielded intensities of all distances.

        Parameters
        ----------
        intensities : ndarray of shape (..., n_distances, rows, cols), float32
            On the reference grid, ≈ 1 where there is no object, on this backend.

        Returns
        -------
        phase, attenuation : ndarray of shape (..., rows, cols), float32
        """
        padded = self.padding.pad(intensities.astype(np.float32, copy=False))
        phase, attenuation = self.retrieve_padded(padded)
        return self.padding.crop(phase).copy(), self.padding.crop(attenuation).copy()
