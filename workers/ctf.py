"""Single-distance contrast-transfer-function (CTF) phase retrieval, homogeneous object.

For a weak object ``T ≈ 1 - B + iφ`` with ``B = -(β/δ)φ``, Fresnel propagation gives
(f in cycles/m, ``χ = πλz|f|²``)::

    Î(f) - δ_D(f) = 2 φ̂(f) · A(f),   A = sin χ + (β/δ) cos χ

The Tikhonov-regularised inverse is ``φ̂ = A·(Î - δ_D) / (2 (A² + α(f)))``.

Regularisation split: the homogeneous CTF is well conditioned at low frequencies
(``A → β/δ`` at ``f = 0``, the same gain ``δ/(2β)`` as Paganin), but has zeros near
``χ = kπ`` above the first maximum ``χ = π/2``. So ``α(f)`` moves smoothly from
``alpha_low`` (below the first maximum) to ``alpha_high`` (above it)::

    α = alpha_low + (alpha_high - alpha_low) · s(χ)

with ``s`` the cubic smoothstep from 0 at ``χ = π/4`` to 1 at ``χ = 3π/4``: exactly
``alpha_low`` near ``f = 0``, where even a 1e-6 leak of ``alpha_high`` would bias the scale.

``alpha_low`` must stay well below ``(β/δ)²`` (2.5e-5 at δ/β = 200) or it shrinks the
low frequencies, i.e. the scale of the phase; ``alpha_high`` bounds the gain at the CTF
zeros to ``1 / (4 sqrt(alpha_high))``.
"""

from __future__ import annotations

import math

import numpy as np

from .fresnel import frequency_squared
from .paganin import FourierFilterRetrieval
from .physics import wavelength_m

#: χ (radians) where the regularisation starts / ends its move from alpha_low to alpha_high.
TRANSITION_CHI = (math.pi / 4, 3 * math.pi / 4)


def ctf_filter(chi, delta_beta: float, alpha_low: float, alpha_high: float) -> np.ndarray:
    """The regularised inverse ``A / (2 (A² + α(χ)))`` of the homogeneous CTF (module doc).

    Parameters
    ----------
    chi : ndarray, float
        Fresnel phase ``χ = πλz|f|²`` in radians, on whatever frequency grid the filter is
        applied (numpy).
    delta_beta : float
        δ/β of the material, > 0.
    alpha_low, alpha_high : float
        Regularisation below / above the first CTF maximum, ≥ 0 and > 0.

    Returns
    -------
    ndarray of the shape of ``chi``, float32 (numpy)

    Raises
    ------
    ValueError
        For δ/β ≤ 0, ``alpha_low < 0`` or ``alpha_high ≤ 0`` (NaN included).
    """
    if not delta_beta > 0:
        raise ValueError(f"delta_beta must be > 0, got {delta_beta!r}")
    if not (alpha_low >= 0 and alpha_high > 0):
        raise ValueError(
            f"need alpha_low >= 0 and alpha_high > 0, got {alpha_low!r}, {alpha_high!r}"
        )
    ctf = np.sin(chi) + np.cos(chi) / delta_beta
    t = np.clip((chi - TRANSITION_CHI[0]) / (TRANSITION_CHI[1] - TRANSITION_CHI[0]), 0, 1)
    alpha = alpha_low + (alpha_high - alpha_low) * (t * t * (3.0 - 2.0 * t))
    return (ctf / (2.0 * (ctf**2 + alpha))).astype(np.float32)


class CTF(FourierFilterRetrieval):
    """Intensity → phase by the regularised homogeneous CTF inverse; set up once.

    Parameters
    ----------
    shape, pixel_size_m, distance_m, energy_kev, delta_beta, backend, pad_mode, margin
        As for :class:`~holostream.workers.paganin.FourierFilterRetrieval`.
    alpha_low, alpha_high : float
        Tikhonov regularisation below / above the first CTF maximum (see module doc).
        Defaults: 1e-7 biases the scale by ≤ 1 % up to δ/β = 300; 1e-2 bounds the gain at
        the CTF zeros to 2.5. Larger ``alpha_high`` helps thick objects, where the linear
        model fails (bench.phase single material, 0.5 m: relative error 0.193 at 1e-2, 0.162
        at 0.3, 0.159 at 1), but costs weak ones, where it holds (tests/unit/test_ctf.py's
        δ = 1e-7 spheres: 0.018 → 0.025 / 0.034 at 0.2 m, 0.031 → 0.046 / 0.060 at 0.5 m);
        thick objects are better served by ``newton`` steps (workers/phasing.py).

    Attributes
    ----------
    padding : Padding
    filter : ndarray of shape (padded_rows, padded_cols // 2 + 1), float32
        ``A / (2 (A² + α))`` on the ``rfft2`` half grid.
    """

    def __init__(self, shape, pixel_size_m: float, distance_m: float, energy_kev: float,
                 delta_beta: float, backend, pad_mode: str = "edge", alpha_low: float = 1e-7,
                 alpha_high: float = 1e-2, margin: float = 0.5):
        super().__init__(shape, pixel_size_m, distance_m, energy_kev, delta_beta, backend, pad_mode, margin)
        chi = math.pi * self.lambda_z * self.frequency_squared
        self.filter = backend.asarray(ctf_filter(chi, self.delta_beta, alpha_low, alpha_high))

    def phase_padded(self, padded_intensity):
        """Phase on the padded grid, for iterative methods that continue from it.

        Parameters
        ----------
        padded_intensity : ndarray of shape (..., padded_rows, padded_cols), float32
            Output of ``self.padding.pad``; not modified.

        Returns
        -------
        ndarray of shape (..., padded_rows, padded_cols), float32
        """
        # The constant 1 only feeds the zero frequency: subtract it there, in Fourier space,
        # instead of making a shifted copy of the image.
        spectrum = self.backend.rfft2(padded_intensity)
        spectrum[..., 0, 0] -= np.float32(padded_intensity.shape[-1] * padded_intensity.shape[-2])
        spectrum *= self.filter
        return self.backend.irfft2(spectrum, s=self.padding.padded_shape)


class NewtonRefinement:
    """Quasi-Newton refinement of a homogeneous object's phase, the CTF inverse as preconditioner.

    One step corrects the phase by the regularised CTF inverse of the intensity residual on
    the detector area::

        φ ← φ + CTF⁻¹_α[ mask · (I − |D exp((i + β/δ)φ)|²) ]

    with ``D`` the Fresnel propagator and ``mask`` 1 on the measured pixels, 0 on the padding
    margin (not data). It is Newton's method on the homogeneous-object forward model with the
    Jacobian frozen at φ = 0 (where it is the CTF), the idea behind HoToPy's nonlinear
    Tikhonov solver without its adjoint and line search. A frozen Jacobian can overshoot far
    from φ = 0 (large z, thick objects), so each projection keeps the iterate with the
    smallest masked residual ``‖mask · (I − |Dψ|²)‖²`` and stops at the first step that does
    not lower it.

    Parameters
    ----------
    propagator : FresnelPropagator
        On the padded grid ``(padded_rows, padded_cols)``.
    data_region : tuple of slice
        Rows and columns of the measured pixels in the padded grid.
    delta_beta : float
        δ/β of the material (> 0): the object is ``exp((i + β/δ)φ)``.
    alpha_low, alpha_high : float
        CTF regularisation (see :func:`ctf_filter`). ``alpha_high`` around 1–3 (gain at the
        CTF zeros ≤ 0.25–0.14) damps the steps where the linear model is least reliable.

    Attributes
    ----------
    filter : ndarray of shape (padded_rows, padded_cols // 2 + 1), float32
        :func:`ctf_filter` on the ``rfft2`` half grid.
    mask : ndarray of shape (padded_rows, padded_cols), float32
    """

    def __init__(self, propagator, data_region, delta_beta: float, alpha_low: float = 1e-7,
                 alpha_high: float = 3.0):
        backend = propagator.backend
        self.backend = backend
        self.propagator = propagator
        self.padded_shape = propagator.shape
        lambda_z = wavelength_m(propagator.energy_kev) * propagator.distance_m
        chi = math.pi * lambda_z * frequency_squared(self.padded_shape, propagator.pixel_size_m,
                                                     half=True)
        self.filter = backend.asarray(ctf_filter(chi, delta_beta, alpha_low, alpha_high))
        self.beta_delta = np.float32(1.0 / delta_beta)
        mask = np.zeros(self.padded_shape, np.float32)
        mask[data_region] = 1.0
        self.mask = backend.asarray(mask)

    def residual(self, padded_intensity, phase):
        """Masked residual ``mask · (I − |D exp((i + β/δ)φ)|²)``, float32, shape of ``phase``."""
        xp = self.backend.xp
        modulus = xp.exp(phase * self.beta_delta)
        wave = self.propagator.forward(modulus * xp.cos(phase)
                                       + (modulus * xp.sin(phase)) * np.complex64(1j))
        residual = padded_intensity - (wave.real**2 + wave.imag**2)
        residual *= self.mask
        return residual

    def __call__(self, padded_intensity, phase, steps: int):
        """Up to ``steps`` Newton steps from ``phase``; the best iterate of each projection.

        Parameters
        ----------
        padded_intensity : ndarray of shape (..., padded_rows, padded_cols), float32
            Flat-corrected intensity on the padded grid (the margin is ignored).
        phase : ndarray of the same shape, float32
            Start phase in radians; not modified.
        steps : int
            Newton steps, ≥ 0 (``steps + 1`` forward propagations at most).

        Returns
        -------
        ndarray of the same shape, float32
            Per projection, the iterate with the smallest masked residual.

        Raises
        ------
        ValueError
            For a negative or non-integer ``steps``.
        """
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
        xp = self.backend.xp
        best, best_norm, active = phase, None, None
        for step in range(steps + 1):
            residual = self.residual(padded_intensity, phase)
            norm = xp.sum(residual * residual, axis=(-2, -1))
            if best_norm is None:
                best_norm, active = norm, xp.ones(norm.shape, dtype=bool)
            else:
                improved = norm < best_norm
                active &= improved
                best = xp.where(active[..., None, None], phase, best)
                best_norm = xp.where(active, norm, best_norm)
            if step == steps or not bool(active.any()):
                break
            correction = self.backend.rfft2(residual)
            correction *= self.filter
            correction = self.backend.irfft2(correction, s=self.padded_shape)
            phase = best + correction * active[..., None, None].astype(np.float32)
        return best
