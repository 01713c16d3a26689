"""Phase-retrieval chains on images of several propagation distances.

The chain text is the one of :mod:`workers.phasing` (:func:`~workers.phasing.parse_chain`),
with the meaning of each step extended to all distances at once:

- ``paganin``: the mean of each distance's Paganin phase (its own distance, one δ/β).
- ``ctf``: the homogeneous multi-distance CTF (:class:`workers.multictf.MultiDistanceCTF`);
  parameters ``delta_beta``, ``alpha_low``, ``alpha_high``.
- ``ctf_mixed``: δ and β retrieved independently by the two-unknown multi-distance CTF,
  regularised towards ``delta_beta`` at low frequencies only (``alpha_mix``).
- ``ap**k`` / ``raar**k``: iterations whose detector projection enforces the measured
  modulus at **every** distance and averages the results (the multi-plane alternating
  projection): ``P_d ψ = (1/n) Σ_i D_i⁻¹[√I_i · D_iψ / |D_iψ|]``, ``D_i`` the Fresnel
  propagator over ``z_i``. The object projection is that of the single-distance chains
  (:func:`workers.phasing.object_projection`); without ``delta_beta`` the modulus is free
  (≤ 1), so the attenuation is retrieved independently of the phase.
- ``newton`` is single-distance only and is rejected here with that reason.

:class:`MultiDistancePhaseRetrieval` returns the phase and the attenuation ``B``
(``|T| = exp(-B)``), both needed for δ and β volumes.
"""

from __future__ import annotations

import math

import numpy as np

from .fresnel import frequency_squared
from .multictf import MultiDistanceCTF
from .paganin import Paganin
from .padding import Padding
from .phasing import RAAR_BETA, _check_order, object_projection, parse_chain, polar
from .physics import wavelength_m

#: Iteration steps the multi-distance chains accept.
MULTI_ITERATION_STEPS = ("ap", "raar")


class MultiDistancePhaseRetrieval:
    """Run a chain on flat-fielded intensities of several distances; set up once per scan.

    Parameters
    ----------
    chain : tuple of Step, or str
        Steps or their text (module doc); must start with ``paganin``, ``ctf`` or ``ctf_mixed``.
    shape : tuple of int
        ``(rows, cols)`` of the images, all on the reference grid.
    pixel_size_m : float
        Reference pixel size, metres.
    distances_m : sequence of float
        Effective propagation distance of each image, metres.
    energy_kev : float
    delta_beta : float
        δ/β of the start (and of the prior of ``ctf_mixed``) unless the step sets it.
    backend : Backend
    pad_mode : str
    margin : float
        As for :class:`workers.padding.Padding`.

    Raises
    ------
    ValueError
        Empty chain, a ``newton`` step, fewer than one distance, bad geometry.
    """

    def __init__(self, chain, shape, pixel_size_m: float, distances_m, energy_kev: float,
                 delta_beta: float, backend, pad_mode: str = "edge", margin: float = 0.5):
        self.chain = parse_chain(chain) if isinstance(chain, str) else tuple(chain)
        _check_order(self.chain)
        if not self.chain:
            raise ValueError("a multi-distance chain needs a start step: paganin, ctf or ctf_mixed")
        for step in self.chain[1:]:
            if step.name not in MULTI_ITERATION_STEPS:
                raise ValueError(f"step {step.name!r} is single-distance only; with several "
                                 f"distances use {', '.join(MULTI_ITERATION_STEPS)}")
        if not delta_beta > 0:
            raise ValueError(f"delta_beta must be > 0, got {delta_beta!r}")
        self.distances_m = tuple(float(z) for z in distances_m)
        if not self.distances_m:
            raise ValueError("need at least one distance")
        self.backend = backend
        self.delta_beta = float(delta_beta)
        self.padding = Padding(shape, backend, mode=pad_mode, margin=margin)
        start = self.chain[0]
        self._start_delta_beta = start.param("delta_beta", self.delta_beta)
        if start.name == "paganin":
            self._paganins = [Paganin(shape, pixel_size_m, z, energy_kev, self._start_delta_beta,
                                      backend, pad_mode, margin) for z in self.distances_m]
            self._ctf = None
        else:
            params = {k: v for k, v in start.params if k.startswith("alpha")}
            self._ctf = MultiDistanceCTF(shape, pixel_size_m, self.distances_m, energy_kev,
                                         self._start_delta_beta, backend,
                                         mixed=start.name == "ctf_mixed", pad_mode=pad_mode,
                                         margin=margin, **params)
        self._kernels = None
        if len(self.chain) > 1:
            f2 = frequency_squared(self.padding.padded_shape, pixel_size_m)
            chis = [math.pi * wavelength_m(energy_kev) * z * f2 for z in self.distances_m]
            self._kernels = backend.asarray(np.stack([np.exp(-1j * c) for c in chis]).astype(np.complex64))
            self._kernels_conj = backend.xp.conj(self._kernels)

    def __call__(self, intensities):
        """Phase and attenuation from the intensities of all distances.

        Parameters
        ----------
        intensities : ndarray of shape (n_distances, rows, cols) or (batch, n_distances, rows, cols)
            Flat-fielded, on the reference grid (:class:`workers.registration.ScaleToReference`),
            float32, on this backend.

        Returns
        -------
        phase, attenuation : ndarray of shape (rows, cols) or (batch, rows, cols), float32
            φ in radians (negative in matter) and ``B`` (``|T| = exp(-B)``).
        """
        xp = self.backend.xp
        intensities = xp.asarray(intensities, dtype=xp.float32)
        n = len(self.distances_m)
        if intensities.ndim not in (3, 4) or intensities.shape[-3] != n:
            raise ValueError(f"intensities: expected ([batch,] {n}, rows, cols), got {intensities.shape}")
        padded = self.padding.pad(intensities)
        if self._ctf is not None:
            phase, attenuation = self._ctf.retrieve_padded(padded)
        else:
            phase = sum(p.phase_padded(padded[..., i, :, :]) for i, p in enumerate(self._paganins))
            phase = phase * np.float32(1.0 / n)
            attenuation = phase * np.float32(-1.0 / self._start_delta_beta)
        if self._kernels is not None:
            phase, attenuation = self._iterate(padded, phase, attenuation)
        return self.padding.crop(phase).copy(), self.padding.crop(attenuation).copy()

    def _iterate(self, padded_intensities, phase, attenuation):
        xp = self.backend.xp
        measured = xp.sqrt(xp.maximum(padded_intensities, np.float32(0)))
        # |ψ| ≤ 1: a start with negative B (noise, or φ > 0) is clipped like the constraint.
        psi = polar(xp.minimum(xp.exp(-attenuation), np.float32(1)), phase, xp)
        for step in self.chain[1:]:
            beta = np.float32(step.param("beta", RAAR_BETA))
            for _ in range(step.count):
                detector = self._detector_projection(psi, measured)
                if step.name == "ap":
                    psi, phase = object_projection(detector, psi, phase, step, xp)
                else:
                    reflected = detector * np.float32(2) - psi
                    obj, _ = object_projection(reflected, psi, phase, step, xp)
                    new = (psi + obj) * beta + detector * (np.float32(1) - 2 * beta)
                    phase = phase + xp.angle(new * xp.conj(psi))
                    psi = new
        attenuation = -xp.log(xp.maximum(xp.abs(psi), np.float32(1e-6)))
        return phase, attenuation.astype(np.float32, copy=False)

    def _detector_projection(self, psi, measured):
        """Enforce the measured modulus at every distance; the mean of the back-propagated waves."""
        xp, backend = self.backend.xp, self.backend
        spectrum = backend.fft2(psi)[..., None, :, :]
        waves = backend.ifft2(spectrum * self._kernels, overwrite_x=True)
        waves *= measured / xp.maximum(xp.abs(waves), np.float32(1e-12))
        back = backend.fft2(waves, overwrite_x=True)
        back *= self._kernels_conj
        return backend.ifft2(back.mean(axis=-3, dtype=xp.complex64), overwrite_x=True)
