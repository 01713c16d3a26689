"""Fresnel (paraxial, plane-wave) free-space propagation by its transfer function.

``ψ_z = F⁻¹[H · F(ψ_0)]`` with ``H(f) = exp(-iπλz(fx² + fy²))``, ``f`` in cycles per metre
on the FFT grid (``fftfreq(n, d=pixel_size_m)``). ``|H| = 1``, so propagation is unitary
and :meth:`FresnelPropagator.backward` (multiplication by ``conj(H)``) is its exact
inverse. The grid is periodic: callers pad (``workers.padding``) before propagating.
"""

from __future__ import annotations

import math

import numpy as np

from .physics import wavelength_m


def fresnel_number(pixel_size_m: float, distance_m: float, energy_kev: float) -> float:
    """Fresnel number of one pixel, ``pixel_size_m² / (λ·distance_m)`` (dimensionless).

    Small values (≪ 1) mean strong fringes spread over many pixels; the transfer
    function only depends on ``z`` through ``λz / pixel²``, i.e. on this number.
    """
    if not distance_m > 0:
        raise ValueError(f"distance_m must be > 0, got {distance_m!r}")
    return pixel_size_m**2 / (wavelength_m(energy_kev) * distance_m)


def frequency_squared(shape: tuple[int, int], pixel_size_m: float, half: bool = False):
    """``fx² + fy²`` in (cycles/m)² on the FFT grid of ``shape``, float64 numpy.

    Parameters
    ----------
    shape : tuple of int
        ``(rows, cols)`` of the (padded) real-space grid.
    pixel_size_m : float
        Sampling step in metres.
    half : bool
        If True, the last axis is the ``rfft`` half grid (``cols // 2 + 1`` columns).

    Returns
    -------
    ndarray of shape (rows, cols) or (rows, cols // 2 + 1), float64
    """
    rows, cols = shape
    fy = np.fft.fftfreq(rows, d=pixel_size_m)
    fx = np.fft.rfftfreq(cols, d=pixel_size_m) if half else np.fft.fftfreq(cols, d=pixel_size_m)
    return np.add.outer(fy**2, fx**2)


class FresnelPropagator:
    """Propagate complex wave fields over a fixed distance; kernel computed once.

    Parameters
    ----------
    shape : tuple of int
        ``(rows, cols)`` of the (already padded) grid.
    pixel_size_m : float
        Sampling step in metres.
    distance_m : float
        Propagation distance in metres (> 0 downstream).
    energy_kev : float
        Photon energy in keV.
    backend : Backend

    Attributes
    ----------
    chi : ndarray of shape (rows, cols), float32
        ``χ = πλz(fx² + fy²)`` in radians, the Fresnel phase (used by the CTF).
    kernel : ndarray of shape (rows, cols), complex64
        ``H = exp(-iχ)``.
    """

    def __init__(self, shape, pixel_size_m: float, distance_m: float, energy_kev: float, backend):
        fresnel_number(pixel_size_m, distance_m, energy_kev)  # validates the three numbers
        self.shape = (int(shape[0]), int(shape[1]))
        self.pixel_size_m = float(pixel_size_m)
        self.distance_m = float(distance_m)
        self.energy_kev = float(energy_kev)
        self.backend = backend
        # float64 on the host: χ reaches tens of radians at Nyquist, and numpy and cupy
        # then start from identical kernels.
        chi = math.pi * wavelength_m(energy_kev) * distance_m * frequency_squared(
            self.shape, pixel_size_m
        )
        self.chi = backend.asarray(chi.astype(np.float32))
        self.kernel = backend.asarray(np.exp(-1j * chi).astype(np.complex64))
        self._kernel_conj = backend.asarray(np.exp(1j * chi).astype(np.complex64))

    def forward(self, psi):
        """Propagate ``psi`` downstream over ``distance_m``.

        Parameters
        ----------
        psi : ndarray of shape (..., rows, cols), complex64
            Wave field(s) on this backend; not modified.

        Returns
        -------
        ndarray of shape (..., rows, cols), complex64
        """
        return self._apply(psi, self.kernel)

    def backward(self, psi):
        """Propagate ``psi`` upstream over ``distance_m``; exact inverse of :meth:`forward`.

        Parameters
        ----------
        psi : ndarray of shape (..., rows, cols), complex64

        Returns
        -------
        ndarray of shape (..., rows, cols), complex64
        """
        return self._apply(psi, self._kernel_conj)

    def _apply(self, psi, kernel):
        if tuple(psi.shape[-2:]) != self.shape:
            raise ValueError(
                f"propagator grid is {self.shape}, got field of shape {tuple(psi.shape)}"
            )
        spectrum = self.backend.fft2(psi.astype(np.complex64, copy=False))
        spectrum *= kernel
        return self.backend.ifft2(spectrum, overwrite_x=True)
