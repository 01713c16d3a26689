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

from .paganin import FourierFilterRetrieval

#: χ (radians) where the regularisation starts / ends its move from alpha_low to alpha_high.
TRANSITION_CHI = (math.pi / 4, 3 * math.pi / 4)


class CTF(FourierFilterRetrieval):
    """Intensity → phase by the regularised homogeneous CTF inverse; set up once.

    Parameters
    ----------
    shape, pixel_size_m, distance_m, energy_kev, delta_beta, backend, pad_mode, margin
        As for :class:`~holostream.workers.paganin.FourierFilterRetrieval`.
    alpha_low, alpha_high : float
        Tikhonov regularisation below / above the first CTF maximum (see module doc).
        Defaults: 1e-7 biases the scale by ≤ 1 % up to δ/β = 300; 1e-2 bounds the gain at
        the CTF zeros to 2.5 (1e-1 gave the same accuracy on simulated spheres).

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
        if not (alpha_low >= 0 and alpha_high > 0):
            raise ValueError(
                f"need alpha_low >= 0 and alpha_high > 0, got {alpha_low!r}, {alpha_high!r}"
            )
        chi = math.pi * self.lambda_z * self.frequency_squared
        ctf = np.sin(chi) + np.cos(chi) / self.delta_beta
        t = np.clip((chi - TRANSITION_CHI[0]) / (TRANSITION_CHI[1] - TRANSITION_CHI[0]), 0, 1)
        step = t * t * (3.0 - 2.0 * t)
        alpha = alpha_low + (alpha_high - alpha_low) * step
        self.filter = backend.asarray((ctf / (2.0 * (ctf**2 + alpha))).astype(np.float32))

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
