"""Paganin single-distance phase retrieval for a homogeneous object.

Transport of intensity for ``T = exp(-B + iφ)`` with ``B = -(β/δ)φ`` gives (Paganin et
al., J. Microsc. 206, 2002)::

    I_z = F⁻¹[ F(I_0) · (1 + πλz(δ/β)|f|²) ],   I_0 = exp(2(β/δ)φ)

so ``φ = (δ/β)/2 · ln F⁻¹[ F(I_z) / (1 + πλz(δ/β)|f|²) ]`` (f in cycles/m), negative in
matter. The filter is real and even, so real FFTs over the padded grid suffice.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np

from .fresnel import fresnel_number, frequency_squared
from .padding import Padding
from .physics import wavelength_m

#: Filtered intensities below this are clipped before the logarithm (noise, dead pixels).
MIN_INTENSITY = 1e-6


class FourierFilterRetrieval(ABC):
    """Shared set-up of the single-distance Fourier filters (Paganin, CTF).

    Validates the geometry, plans the padding and keeps ``|f|²`` (cycles²/m²) on the
    ``rfft2`` half grid of the padded shape and ``λz`` (m²); a subclass builds its filter
    from them and implements :meth:`phase_padded`.

    Parameters
    ----------
    shape : tuple of int
        ``(rows, cols)`` of the input images.
    pixel_size_m : float
        Pixel size in metres.
    distance_m : float
        Sample–detector (effective, plane-wave) distance in metres.
    energy_kev : float
        Photon energy in keV.
    delta_beta : float
        δ/β of the (single) material, > 0.
    backend : Backend
    pad_mode : {"edge", "reflect", "constant1"}
        See :class:`workers.padding.Padding`.
    margin : float
        Padding fraction, see :class:`workers.padding.Padding`.
    """

    def __init__(self, shape, pixel_size_m: float, distance_m: float, energy_kev: float,
                 delta_beta: float, backend, pad_mode: str = "edge", margin: float = 0.5):
        fresnel_number(pixel_size_m, distance_m, energy_kev)  # validates the three numbers
        if not delta_beta > 0:
            raise ValueError(f"delta_beta must be > 0, got {delta_beta!r}")
        self.backend = backend
        self.delta_beta = float(delta_beta)
        self.padding = Padding(shape, backend, mode=pad_mode, margin=margin)
        self.frequency_squared = frequency_squared(self.padding.padded_shape, pixel_size_m, half=True)
        self.lambda_z = wavelength_m(energy_kev) * distance_m

    def __call__(self, intensity):
        """Phase from flat-corrected intensity.

        Parameters
        ----------
        intensity : ndarray of shape (..., rows, cols), float32
            Flat-corrected intensity (≈ 1 where there is no object), on this backend.

        Returns
        -------
        ndarray of shape (..., rows, cols), float32
            Phase φ in radians (negative in matter).
        """
        padded = self.padding.pad(intensity.astype(np.float32, copy=False))
        return self.padding.crop(self.phase_padded(padded)).copy()

    @abstractmethod
    def phase_padded(self, padded_intensity):
        """Phase on the padded grid (``self.padding.padded_shape``); see subclasses."""


class Paganin(FourierFilterRetrieval):
    """Intensity → phase by the Paganin filter; filter and padding set up once.

    Parameters
    ----------
    shape, pixel_size_m, distance_m, energy_kev, delta_beta, backend, pad_mode, margin
        As for :class:`FourierFilterRetrieval`; ``delta_beta`` is that of the single material.

    Attributes
    ----------
    padding : Padding
    filter : ndarray of shape (padded_rows, padded_cols // 2 + 1), float32
        ``1 / (1 + πλz(δ/β)|f|²)`` on the ``rfft2`` half grid.
    """

    def __init__(self, shape, pixel_size_m: float, distance_m: float, energy_kev: float,
                 delta_beta: float, backend, pad_mode: str = "edge", margin: float = 0.5):
        super().__init__(shape, pixel_size_m, distance_m, energy_kev, delta_beta, backend, pad_mode, margin)
        length2 = math.pi * self.lambda_z * self.delta_beta
        self.filter = backend.asarray((1.0 / (1.0 + length2 * self.frequency_squared)).astype(np.float32))

    def phase_padded(self, padded_intensity):
        """Phase on the padded grid, for iterative methods that continue from it.

        Parameters
        ----------
        padded_intensity : ndarray of shape (..., padded_rows, padded_cols), float32
            Output of ``self.padding.pad``.

        Returns
        -------
        ndarray of shape (..., padded_rows, padded_cols), float32
        """
        xp = self.backend.xp
        spectrum = self.backend.rfft2(padded_intensity)
        spectrum *= self.filter
        filtered = self.backend.irfft2(spectrum, s=self.padding.padded_shape)
        xp.maximum(filtered, MIN_INTENSITY, out=filtered)
        xp.log(filtered, out=filtered)
        filtered *= np.float32(0.5 * self.delta_beta)
        return filtered
