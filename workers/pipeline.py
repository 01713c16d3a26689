"""Raw frames of one angle group → one ramp-filtered projection of δ: the one code path.

Offline ``holostream reconstruct`` and the live workers both run
:class:`ProjectionPipeline`, so a scan reconstructs to the same volume either way:

    raw counts (k, rows, cols) ─ flat-field ─ bin b×b ─ mean of the k frames (angle binning)
    ─ phase retrieval (chain) ─ φ → ∫δ dl / voxel ─ ramp filter → (rows_b, cols_b) float32

:meth:`ProjectionPipeline.transmission` is the part before the phase retrieval and
:meth:`ProjectionPipeline.filtered_from_transmission` the part from it on, so the live
service can run them in different processes (CPU workers, one GPU process).

The result goes to :class:`~holostream.workers.fbp.VolumeAccumulator` (or
:func:`~holostream.workers.fbp.backproject`) with the group's mean angle and the weight
from :func:`plan_groups`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from . import phasing
from .backend import Backend
from .binning import angle_groups, binned_center_px
from .fbp import RampFilter, angle_weights
from .flatfield import FlatField
from .physics import phase_to_delta_px


def plan_groups(n_projections: int, angle_binning: int,
                angles_deg) -> tuple[list[range], np.ndarray, np.ndarray]:
    """Angle groups of a scan, their mean angles and FBP weights (offline and live alike).

    Parameters
    ----------
    n_projections : int
        Projections in the scan.
    angle_binning : int
        Consecutive projections per group (the last group may be shorter).
    angles_deg : array of shape (n_projections,)
        Angle of each projection, degrees, in acquisition order.

    Returns
    -------
    groups : list of range
        Projection indices of each group.
    group_angles_deg : ndarray of shape (n_groups,), float64
        Mean angle of each group, degrees.
    weights : ndarray of shape (n_groups,), float64
        FBP weight of each group, radians (sum π; :func:`fbp.angle_weights`).
    """
    angles = np.asarray(angles_deg, dtype=np.float64).ravel()
    if angles.size != n_projections:
        raise ValueError(f"angles_deg: expected {n_projections} angles, got {angles.size}")
    groups = angle_groups(n_projections, angle_binning)
    group_angles = np.array([angles[g.start : g.stop].mean() for g in groups])
    return groups, group_angles, angle_weights(np.radians(group_angles))


class ProjectionPipeline:
    """Turns the raw frames of angle groups into ramp-filtered δ projections; set up per scan.

    Parameters
    ----------
    raw_shape : tuple of int
        ``(rows, cols)`` of the detector frames.
    dark, flat : array of shape (rows, cols)
        Mean dark and mean flat (before the scan), counts.
    binning : int
        Pixel binning b (voxel size = b × pixel size).
    chain : tuple of phasing.Step
        Phase retrieval steps (``phasing.default_chain(settings.phase, iterations, δ/β)``).
    filter : str
        FBP window of the ramp filter.
    energy_kev, distance_m, pixel_size_m : float
        Photon energy (keV), effective distance (m), effective unbinned pixel size (m).
    delta_beta : float
        δ/β of the sample.
    backend : Backend
    pad_mode : str
        Padding of the phase retrieval's Fourier filters.
    flat_after : array of shape (rows, cols), optional
        Mean flat after the scan; then ``n_projections`` is needed to interpolate.
    n_projections : int, optional
        Projections in the scan (acquisition order of the indices).
    column_weights : array of shape (cols_b,), optional
        Weights of the detector columns applied to the δ projections before the ramp filter
        (a 360° offset-axis scan: :func:`holostream.workers.halfacq.detector_weights`).

    Attributes
    ----------
    binned_shape : tuple of int
        ``(rows // b, cols // b)``, the shape of every output.
    voxel_size_m : float
        Pixel size after binning, metres (the voxel edge).
    """

    def __init__(self, raw_shape, dark, flat, *, binning: int, chain, filter: str,
                 energy_kev: float, distance_m: float, pixel_size_m: float, delta_beta: float,
                 backend: Backend, pad_mode: str = "edge", flat_after=None,
                 n_projections: int | None = None, column_weights=None):
        rows, cols = (int(n) for n in raw_shape)
        b = int(binning)
        if not 1 <= b <= min(rows, cols):
            raise ValueError(f"binning {b} is too large for frames of {rows}×{cols}")
        if flat_after is not None and not n_projections:
            raise ValueError("flat_after needs n_projections to interpolate the flat")
        self.backend = backend
        self.raw_shape = (rows, cols)
        self.binning = b
        self.binned_shape = (rows // b, cols // b)
        self.voxel_size_m = float(pixel_size_m) * b
        self.energy_kev = float(energy_kev)
        self.n_projections = n_projections
        self.flatfield = FlatField(dark, flat, backend, flat_after=flat_after)
        self.phase = phasing.PhaseRetrieval(
            tuple(chain), self.binned_shape, self.voxel_size_m, distance_m, energy_kev,
            delta_beta, backend, pad_mode,
        )
        self.ramp = RampFilter(self.binned_shape[1], backend, window=filter)
        self.column_weights = None
        if column_weights is not None:
            if np.shape(column_weights) != (self.binned_shape[1],):
                raise ValueError(f"column_weights: expected ({self.binned_shape[1]},), got "
                                 f"{np.shape(column_weights)}")
            self.column_weights = backend.asarray(column_weights, dtype=backend.xp.float32)

    def center_px(self, cor_px: float) -> float:
        """Axis offset in binned pixels from ``(cols_b - 1) / 2`` for ``cor_px`` unbinned."""
        return binned_center_px(self.raw_shape[1], self.binning, cor_px)

    def transmission(self, raw, indices):
        """Flat-fielded, binned, group-averaged transmission of one angle group.

        Parameters
        ----------
        raw : array of shape (k, rows, cols)
            Raw counts of the group's projections (any real dtype, numpy or backend).
        indices : array of int of shape (k,)
            Their projection indices in acquisition order.

        Returns
        -------
        array of shape (rows_b, cols_b), float32, on the backend
        """
        xp = self.backend.xp
        raw = xp.asarray(raw)
        if raw.ndim == 2:
            raw = raw[None]
        if raw.ndim != 3 or tuple(raw.shape[1:]) != self.raw_shape:
            raise ValueError(f"raw group shape: expected (k, *{self.raw_shape}), got {raw.shape}")
        idx = np.asarray(indices).reshape(-1)
        if idx.size != raw.shape[0]:
            raise ValueError(f"indices: expected {raw.shape[0]} values, got {idx.size}")
        binned = self.flatfield.binned(raw, self.binning, idx, self.n_projections)
        return binned.mean(axis=0, dtype=xp.float32)

    def process_batch(self, raws: Sequence, indices: Sequence):
        """Filtered δ projections of several angle groups, phase-retrieved as one stack.

        Parameters
        ----------
        raws : sequence of arrays of shape (k_i, rows, cols)
            Raw counts of each group (group sizes may differ).
        indices : sequence of arrays of int of shape (k_i,)
            Projection indices of each group.

        Returns
        -------
        array of shape (n_groups, rows_b, cols_b), float32, on the backend
            Ramp-filtered ``∫δ dl / voxel_size_m``, ready for back-projection.
        """
        if len(raws) != len(indices) or len(raws) == 0:
            raise ValueError(f"need one index array per group, got {len(raws)} and {len(indices)}")
        return self.filtered_from_transmission(self.transmissions(raws, indices))

    def transmissions(self, raws: Sequence, indices: Sequence):
        """Stack of :meth:`transmission` of several angle groups, ``(n_groups, rows_b, cols_b)``."""
        if len(raws) != len(indices) or len(raws) == 0:
            raise ValueError(f"need one index array per group, got {len(raws)} and {len(indices)}")
        return self.backend.xp.stack([self.transmission(r, i) for r, i in zip(raws, indices)])

    def filtered_from_transmission(self, stack):
        """Filtered δ projections of a stack of binned transmissions, in one call.

        The second half of the pipeline: phase retrieval, φ → ∫δ dl / voxel, ramp filter.
        The live service's split mode runs it in the process that owns the GPU, on
        batches of groups whose :meth:`transmission` the CPU workers computed.

        Parameters
        ----------
        stack : array of shape (n, rows_b, cols_b) or (rows_b, cols_b)
            Flat-fielded, binned, group-averaged transmissions (:meth:`transmission`),
            numpy or backend.

        Returns
        -------
        array of shape (n, rows_b, cols_b) (or (rows_b, cols_b) for one), float32, on the backend
            Ramp-filtered ``∫δ dl / voxel_size_m``, ready for back-projection.
        """
        delta = self.delta_from_transmission(stack)
        if self.column_weights is not None:
            delta *= self.column_weights
        return self.ramp(delta)

    def delta_from_transmission(self, stack):
        """Projected δ (before the ramp filter) of a stack of binned transmissions.

        The ring filter (:mod:`~holostream.workers.ring`) measures its stripes on these;
        :meth:`filtered_from_transmission` is ``self.ramp`` of them.

        Parameters
        ----------
        stack : array of shape (n, rows_b, cols_b) or (rows_b, cols_b)
            Flat-fielded, binned, group-averaged transmissions, numpy or backend.

        Returns
        -------
        array of the same shape, float32, on the backend
            ``∫δ dl / voxel_size_m``.
        """
        xp = self.backend.xp
        stack = xp.asarray(stack, dtype=xp.float32)
        if stack.ndim not in (2, 3) or tuple(stack.shape[-2:]) != self.binned_shape:
            raise ValueError(f"transmission stack shape: expected (n, *{self.binned_shape}), "
                             f"got {stack.shape}")
        phase = self.phase(stack)
        return phase_to_delta_px(phase, self.energy_kev, self.voxel_size_m)

    def process(self, raw, indices):
        """Filtered δ projection of one angle group.

        Parameters
        ----------
        raw : array of shape (k, rows, cols)
            Raw counts of the group's ``k`` projections.
        indices : array of int of shape (k,)
            Their projection indices.

        Returns
        -------
        array of shape (rows_b, cols_b), float32, on the backend
        """
        return self.process_batch([raw], [indices])[0]

