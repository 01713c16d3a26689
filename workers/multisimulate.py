"""Simulated multi-distance holo-tomography in a magnified cone beam, as ID16A/B record it.

The focus (source) and the detector stay put; the sample moves along the beam between
distances, so each distance ``i`` has its own source–sample distance ``z₁ᵢ`` and
sample–detector distance ``z₂ᵢ = D - z₁ᵢ``. By the Fresnel scaling theorem
(:func:`~holostream.workers.physics.fresnel_scaling`) each is a plane-wave hologram at the
effective distance ``z₁ᵢz₂ᵢ/D`` sampled at ``detector_pixel / Mᵢ``, ``Mᵢ = D / z₁ᵢ``. Each
distance is simulated on its own effective grid (:class:`workers.simulate.HologramSimulator`)
with the rotation axis and a lateral stage offset ``shift_px = (dv, du)`` placed as the
wire's convention says (:mod:`workers.registration`): the reference's pixel ``(v, u)`` is
seen at ``(cv + (v - cv)·s + dv, cu + (u - cu)·s + du)`` with ``s = pᵣₑ𝒻 / pᵢ``.

The random streams of each distance are children of one seed (``seed`` for distance 0, so
a one-distance scan is the plain :func:`workers.simulate.simulate_scan`'s noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backend import Backend
from .phantom import Phantom
from .physics import fresnel_scaling
from .simulate import (DetectorModel, ScanGeometry, SimulatedScan, iter_projections,
                       reference_frames)


@dataclass(frozen=True)
class ConeBeamDistance:
    """One propagation distance of a cone-beam scan (the wire's three cone-beam fields).

    Attributes
    ----------
    source_distance_m : float
        z₁, focus → sample, metres.
    detector_distance_m : float
        z₂, sample → detector, metres.
    detector_pixel_size_m : float
        Detector pixel, metres.
    shift_px : tuple of float
        ``(dv, du)`` offset from the reference in this distance's own pixels.
    """

    source_distance_m: float
    detector_distance_m: float
    detector_pixel_size_m: float
    shift_px: tuple[float, float] = (0.0, 0.0)

    def effective(self) -> tuple[float, float, float]:
        """``(magnification, distance_m, pixel_size_m)`` of the plane-wave equivalent."""
        return fresnel_scaling(self.source_distance_m, self.detector_distance_m,
                               self.detector_pixel_size_m)


def cone_beam_distances(focus_detector_m: float, source_distances_m, detector_pixel_size_m: float,
                        shifts_px=None) -> tuple[ConeBeamDistance, ...]:
    """The distances of a scan with fixed focus and detector (ID16 style).

    Parameters
    ----------
    focus_detector_m : float
        D = z₁ + z₂, metres.
    source_distances_m : sequence of float
        z₁ of each distance, metres, in (0, D); the first is the reference.
    detector_pixel_size_m : float
    shifts_px : array of shape (n, 2), optional
        ``(dv, du)`` stage offset of each distance in its own pixels (row 0 should be 0).

    Returns
    -------
    tuple of ConeBeamDistance
    """
    z1s = [float(z) for z in source_distances_m]
    if not all(0 < z < focus_detector_m for z in z1s):
        raise ValueError(f"source distances must lie in (0, {focus_detector_m}), got {z1s}")
    shifts = np.zeros((len(z1s), 2)) if shifts_px is None else np.asarray(shifts_px, float)
    if shifts.shape != (len(z1s), 2):
        raise ValueError(f"shifts_px: expected shape ({len(z1s)}, 2), got {shifts.shape}")
    return tuple(ConeBeamDistance(z1, focus_detector_m - z1, detector_pixel_size_m,
                                  (float(s[0]), float(s[1])))
                 for z1, s in zip(z1s, shifts))


@dataclass
class MultiDistanceScan:
    """A simulated multi-distance scan: one single-distance scan per distance, and the truth.

    Attributes
    ----------
    scans : list of SimulatedScan
        Per distance: raw darks, flats, projections and the effective ``geometry`` (pixel
        size, distance, axis offset, row offset in its own pixels); no ground truth.
    distances : tuple of ConeBeamDistance
    truth_delta, truth_beta : ndarray of shape (rows // b, cols // b, cols // b), float32
        Voxelised δ and β on the reference grid with binning ``binning``; None if not asked.
    binning : int or None
    phantom : Phantom
    """

    scans: list[SimulatedScan]
    distances: tuple[ConeBeamDistance, ...]
    truth_delta: np.ndarray | None
    truth_beta: np.ndarray | None
    binning: int | None
    phantom: Phantom

    @property
    def effective(self) -> list[tuple[float, float, float]]:
        """``(magnification, distance_m, pixel_size_m)`` of each distance."""
        return [d.effective() for d in self.distances]


def simulate_multidistance(
    phantom: Phantom,
    distances,
    *,
    n_projections: int = 180,
    rows: int = 128,
    cols: int = 128,
    energy_kev: float = 17.5,
    cor_px: float = 0.0,
    supersample: int = 2,
    detector: DetectorModel = DetectorModel(),
    n_darks: int = 10,
    n_flats: int = 10,
    binning: int | None = 1,
    seed: int = 0,
    backend: Backend | None = None,
) -> MultiDistanceScan:
    """Simulate the projections of every distance of a cone-beam scan, and the truth.

    Parameters
    ----------
    phantom : Phantom
    distances : sequence of ConeBeamDistance
        The first is the reference (:func:`cone_beam_distances`).
    n_projections : int
        Projections over 180°, the same angles at every distance.
    rows, cols : int
        Detector frame shape.
    energy_kev : float
    cor_px : float
        Rotation-axis offset from ``(cols - 1) / 2`` in the reference's pixels.
    supersample, detector, n_darks, n_flats, backend
        As for :func:`workers.simulate.simulate_scan`.
    binning : int or None
        Binning of the reconstruction the truths are voxelised for (None: no truth).
    seed : int
        Noise seed.

    Returns
    -------
    MultiDistanceScan
    """
    distances = tuple(distances)
    if not distances:
        raise ValueError("need at least one distance")
    angles = np.linspace(0.0, 180.0, n_projections, endpoint=False)
    reference_pixel_m = distances[0].effective()[2]
    children = np.random.SeedSequence(seed).spawn(len(distances) - 1)
    seeds = [seed] + [int(child.generate_state(1)[0]) for child in children]
    scans = []
    for d, noise_seed in zip(distances, seeds):
        _, distance_m, pixel_size_m = d.effective()
        s = reference_pixel_m / pixel_size_m
        geometry = ScanGeometry(rows, cols, pixel_size_m, distance_m, energy_kev,
                                cor_px=cor_px * s + d.shift_px[1], row_shift_px=d.shift_px[0])
        projections = np.stack(list(iter_projections(phantom, geometry, angles, detector,
                                                     supersample, noise_seed, backend)))
        scans.append(SimulatedScan(
            darks=reference_frames("dark", n_darks, geometry, detector, noise_seed),
            flats=reference_frames("flat", n_flats, geometry, detector, noise_seed),
            flats_after=None, projections=projections, angles_deg=angles, geometry=geometry,
            delta_beta=phantom.delta_beta, binning=None, ground_truth=None, phantom=phantom))
    truth_delta = truth_beta = None
    if binning is not None:
        b = int(binning)
        z0_m = ((b - 1) / 2 - (rows - 1) / 2) * reference_pixel_m
        truth_delta, truth_beta = (
            phantom.voxelize(rows // b, cols // b, b * reference_pixel_m, z0_m, supersample, quantity=q)
            for q in ("delta", "beta"))
    return MultiDistanceScan(scans, distances, truth_delta, truth_beta,
                             None if binning is None else int(binning), phantom)
