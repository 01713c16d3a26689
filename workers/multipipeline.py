"""Raw frames of one angle at several distances → ramp-filtered projections of δ and β.

The multi-distance counterpart of :class:`workers.pipeline.ProjectionPipeline`, one code
path for offline and live alike::

    raw counts per distance (n_distances, k, rows, cols)
    ─ flat-field with that distance's dark/flat ─ bin b×b ─ mean of the k frames
    ─ scale to the reference pixel and shift (ScaleToReference)
    ─ multi-distance phase retrieval (chain) ─ φ → ∫δ dl / voxel, B → ∫β dl / voxel
    ─ ramp filter → two (rows_b, cols_b) float32 projections

The offsets of the distances are given (the wire's ``shift_px``) or measured once per scan
on a few angles (:meth:`MultiDistancePipeline.measure_shifts`, median over the angles):
per-angle registration would add its noise to every projection, while the stage offsets
it measures are the same for the whole scan.
"""

from __future__ import annotations

import numpy as np

from .backend import Backend
from .fbp import RampFilter
from .flatfield import FlatField
from .multiphasing import MultiDistancePhaseRetrieval
from .physics import phase_to_delta_px
from .registration import ScaleToReference, measure_shifts


class MultiDistancePipeline:
    """Turns the raw frames of one angle at all distances into filtered δ and β projections.

    Parameters
    ----------
    raw_shape : tuple of int
        ``(rows, cols)`` of the detector frames (the same at every distance).
    darks, flats : sequence of arrays of shape (rows, cols)
        Mean dark and mean flat of each distance, counts.
    binning : int
        Pixel binning b.
    chain : tuple of phasing.Step, or str
        Multi-distance chain (:mod:`workers.multiphasing`).
    filter : str
        FBP window of the ramp filter.
    energy_kev : float
    distances_m, pixel_sizes_m : sequence of float
        Effective distance and unbinned effective pixel size of each distance, metres;
        entry 0 is the reference.
    delta_beta : float
        δ/β of the start (the prior of ``ctf_mixed``).
    backend : Backend
    shifts_px : array of shape (n_distances, 2), optional
        ``(dv, du)`` of each distance in its own unbinned pixels; None: zero until
        :meth:`measure_shifts` is called.
    pad_mode : str

    Attributes
    ----------
    binned_shape : tuple of int
    voxel_size_m : float
        Reference pixel size × b.
    shifts_px : ndarray of shape (n_distances, 2)
        The offsets in use, own unbinned pixels.
    """

    def __init__(self, raw_shape, darks, flats, *, binning: int, chain, filter: str,
                 energy_kev: float, distances_m, pixel_sizes_m, delta_beta: float,
                 backend: Backend, shifts_px=None, pad_mode: str = "edge"):
        rows, cols = (int(n) for n in raw_shape)
        b = int(binning)
        n = len(distances_m)
        if not (len(darks) == len(flats) == len(pixel_sizes_m) == n) or n < 1:
            raise ValueError(f"need one dark, flat and pixel size per distance ({n}), got "
                             f"{len(darks)}, {len(flats)}, {len(pixel_sizes_m)}")
        if not 1 <= b <= min(rows, cols):
            raise ValueError(f"binning {b} is too large for frames of {rows}×{cols}")
        self.backend = backend
        self.raw_shape = (rows, cols)
        self.binning = b
        self.binned_shape = (rows // b, cols // b)
        self.n_distances = n
        self.distances_m = tuple(float(z) for z in distances_m)
        self.pixel_sizes_m = tuple(float(p) for p in pixel_sizes_m)
        self.voxel_size_m = self.pixel_sizes_m[0] * b
        self.energy_kev = float(energy_kev)
        self.delta_beta = float(delta_beta)
        self.flatfields = [FlatField(d, f, backend) for d, f in zip(darks, flats)]
        self.phase = MultiDistancePhaseRetrieval(chain, self.binned_shape, self.voxel_size_m,
                                                 self.distances_m, energy_kev, delta_beta,
                                                 backend, pad_mode)
        self.ramp = RampFilter(self.binned_shape[1], backend, window=filter)
        self.set_shifts(np.zeros((n, 2)) if shifts_px is None else shifts_px)

    def set_shifts(self, shifts_px) -> None:
        """Use ``shifts_px`` (n_distances, 2), own unbinned pixels, from now on."""
        shifts = np.array(shifts_px, dtype=np.float64)
        self.scale = ScaleToReference(self.binned_shape, [p * self.binning for p in self.pixel_sizes_m],
                                      self.backend, shifts / self.binning)
        self.shifts_px = self.scale.shifts_px * self.binning

    def transmission(self, raws):
        """Flat-fielded, binned, frame-averaged transmission of each distance (not scaled).

        Parameters
        ----------
        raws : sequence of n_distances arrays of shape (k, rows, cols) or (rows, cols)
            Raw counts of one angle (group) at each distance.

        Returns
        -------
        array of shape (n_distances, rows_b, cols_b), float32, on the backend
        """
        xp = self.backend.xp
        if len(raws) != self.n_distances:
            raise ValueError(f"expected frames of {self.n_distances} distances, got {len(raws)}")
        out = []
        for flatfield, raw in zip(self.flatfields, raws):
            raw = xp.asarray(raw)
            raw = raw[None] if raw.ndim == 2 else raw
            if raw.ndim != 3 or tuple(raw.shape[1:]) != self.raw_shape:
                raise ValueError(f"raw shape: expected (k, *{self.raw_shape}), got {raw.shape}")
            out.append(flatfield.binned(raw, self.binning).mean(axis=0, dtype=xp.float32))
        return xp.stack(out)

    def measure_shifts(self, transmissions, upsample: int = 100) -> np.ndarray:
        """Measure the offsets on a few angles, use them from now on and return them.

        Parameters
        ----------
        transmissions : array of shape (n_angles, n_distances, rows_b, cols_b)
            :meth:`transmission` of some angles.

        Returns
        -------
        ndarray of shape (n_distances, 2)
            ``(dv, du)`` in each distance's own unbinned pixels (the wire's ``shift_px``).
        """
        xp = self.backend.xp
        unshifted = ScaleToReference(self.binned_shape, self.scale.scales ** -1, self.backend)
        scaled = unshifted(xp.asarray(transmissions, dtype=xp.float32))
        reference_px = measure_shifts(scaled, self.distances_m, self.voxel_size_m, self.energy_kev,
                                      self.delta_beta, self.backend, upsample)
        # Reference pixels → own pixels (× p_ref / p_i), binned → unbinned (× b).
        own = reference_px * self.scale.scales[:, None] * self.binning
        self.set_shifts(own)
        return self.shifts_px.copy()

    def filtered_from_transmission(self, stack):
        """Filtered δ and β projections of a stack of per-distance transmissions.

        Parameters
        ----------
        stack : array of shape (n, n_distances, rows_b, cols_b) or (n_distances, rows_b, cols_b)

        Returns
        -------
        delta, beta : arrays of shape (n, rows_b, cols_b) (or (rows_b, cols_b)), float32
            Ramp-filtered ``∫δ dl / voxel_size_m`` and ``∫β dl / voxel_size_m``.
        """
        aligned = self.scale(stack)
        phase, attenuation = self.phase(aligned)
        delta = phase_to_delta_px(phase, self.energy_kev, self.voxel_size_m)
        # B = (2π/λ)∫β dl has the form of -φ: the same conversion with the sign flipped.
        beta = phase_to_delta_px(-attenuation, self.energy_kev, self.voxel_size_m)
        return self.ramp(delta), self.ramp(beta)

    def process(self, raws):
        """Filtered δ and β projections of one angle: :meth:`transmission` then the rest."""
        return self.filtered_from_transmission(self.transmission(raws))


def reconstruct_volumes(pipeline: MultiDistancePipeline, projections, angles_deg, cor_px: float,
                        batch: int = 16):
    """δ and β volumes of a whole multi-distance scan held in memory (offline, tests).

    Parameters
    ----------
    pipeline : MultiDistancePipeline
        Shifts already set (given or measured).
    projections : sequence of n_distances arrays of shape (n_angles, rows, cols)
        Raw counts of every angle at each distance, the same angles in the same order.
    angles_deg : array of shape (n_angles,)
    cor_px : float
        Rotation-axis offset from ``(cols - 1) / 2`` in unbinned reference pixels.
    batch : int
        Angles phase-retrieved together.

    Returns
    -------
    delta, beta : ndarray of shape (rows_b, cols_b, cols_b), float32 (numpy)
        ``[z, y, x]`` volumes of δ and β.
    """
    from .binning import binned_center_px
    from .fbp import angle_weights, backproject

    xp = pipeline.backend.xp
    angles = np.radians(np.asarray(angles_deg, dtype=np.float64).ravel())
    weights = angle_weights(angles)
    rows_b, cols_b = pipeline.binned_shape
    center = binned_center_px(pipeline.raw_shape[1], pipeline.binning, cor_px)
    volumes = [xp.zeros((rows_b, cols_b, cols_b), xp.float32) for _ in range(2)]
    for start in range(0, angles.size, batch):
        part = slice(start, min(start + batch, angles.size))
        stack = xp.stack([pipeline.transmission([p[a] for p in projections])
                          for a in range(part.start, part.stop)])
        for volume, filtered in zip(volumes, pipeline.filtered_from_transmission(stack)):
            backproject(volume, filtered, angles[part], weights[part], center, pipeline.backend)
    return tuple(pipeline.backend.to_host(v) for v in volumes)
