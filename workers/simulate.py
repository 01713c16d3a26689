"""Simulated near-field holo-tomography scans: what a detector would record of a phantom.

Per projection: exact line integrals of the phantom on a grid ``supersample`` times finer
than the detector → object transmission ``T = exp(-(2π/λ)∫β dl - i(2π/λ)∫δ dl)`` →
Fresnel propagation (:class:`~holostream.workers.fresnel.FresnelPropagator`) on that fine
grid, padded with free space so the periodic FFT does not wrap fringes → intensity
``|ψ|²`` averaged over each detector pixel → multiplied by a smooth beam profile and the
photon count → Poisson noise on top of a dark offset → uint16 counts.

Frames can be made one at a time (:func:`iter_projections`, :func:`reference_frames`) so a
streamer can send them while simulating; :func:`simulate_scan` makes a whole scan. The
random streams of darks, flats and projections are separate children of one seed, so both
ways give identical frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .backend import Backend, get_backend
from .binning import bin_pixels
from .fresnel import FresnelPropagator
from .padding import smooth_size
from .phantom import Phantom
from .physics import wavelength_m

_COUNT_MAX = np.iinfo(np.uint16).max
_FRAME_KINDS = ("dark", "flat", "projection", "flat_after")


@dataclass(frozen=True)
class ScanGeometry:
    """Detector grid and beam of a scan (plane-wave equivalent quantities).

    Attributes
    ----------
    rows, cols : int
        Detector frame shape.
    pixel_size_m : float
        Effective pixel size in metres.
    distance_m : float
        Effective propagation distance in metres.
    energy_kev : float
        Photon energy in keV.
    cor_px : float
        Rotation-axis offset from ``(cols - 1) / 2`` in detector pixels.
    row_shift_px : float
        Detector row of the height ``z = 0`` minus ``(rows - 1) / 2``: a vertical offset of
        the sample's image (multi-distance scans, where the stage moves between distances).
    """

    rows: int
    cols: int
    pixel_size_m: float
    distance_m: float
    energy_kev: float
    cor_px: float = 0.0
    row_shift_px: float = 0.0


@dataclass(frozen=True)
class DetectorModel:
    """Counts model of the detector and beam.

    Attributes
    ----------
    photons : float
        Mean counts above the dark level of a flat pixel at the beam centre.
    dark_level : float
        Mean dark counts (offset and dark current) of every pixel.
    beam_falloff : float
        Relative intensity lost at the frame corners by the Gaussian beam profile.
    beam_tilt : float
        Relative intensity gradient across the columns (left to right).
    bad_columns : tuple of (int, float)
        ``(column, relative gain error)`` of detector columns whose gain during the
        projections differs from the flats' (e.g. ``(40, 0.05)``: 5 % too bright), the
        residual that flat-fielding leaves and that makes rings in the volume.
    """

    photons: float = 2.0e4
    dark_level: float = 100.0
    beam_falloff: float = 0.25
    beam_tilt: float = 0.05
    bad_columns: tuple[tuple[int, float], ...] = ()

    def with_bad_columns(self, counts: np.ndarray) -> np.ndarray:
        """Projection counts as read out through the bad columns' wrong gains.

        The gain acts on the counts above the dark level, after the photon noise, so a scan
        simulated with and without bad columns has the same noise everywhere (the difference
        of the two is the columns' effect alone).

        Parameters
        ----------
        counts : ndarray of shape (..., cols), uint16

        Returns
        -------
        ndarray, uint16, shape of ``counts``
        """
        if not self.bad_columns:
            return counts
        cols = counts.shape[-1]
        gain = np.ones(cols)
        for column, error in self.bad_columns:
            if not 0 <= column < cols or not error > -1.0:
                raise ValueError(f"bad column ({column}, {error}) outside 0…{cols - 1} or gain <= 0")
            gain[column] = 1.0 + error
        signal = (counts.astype(np.float64) - self.dark_level) * gain + self.dark_level
        return np.clip(np.rint(signal), 0, _COUNT_MAX).astype(np.uint16)


@dataclass
class SimulatedScan:
    """A simulated scan: raw frames, geometry and the ground truth to score against.

    Attributes
    ----------
    darks, flats : ndarray of shape (n, rows, cols), uint16
        Dark frames and flats taken before the projections.
    flats_after : ndarray of shape (n, rows, cols), uint16, or None
        Flats taken after the projections.
    projections : ndarray of shape (n_projections, rows, cols), uint16
    angles_deg : ndarray of shape (n_projections,), float64
    geometry : ScanGeometry
    delta_beta : float or None
        The phantom's common δ/β, None when its materials differ.
    binning : int or None
        Pixel binning of ``ground_truth``.
    ground_truth : ndarray of shape (rows // binning, cols // binning, cols // binning), float32
        Voxelised δ on the grid of a reconstruction with ``binning``, ``[z, y, x]``; None
        when not asked for.
    phantom : Phantom
    """

    darks: np.ndarray
    flats: np.ndarray
    flats_after: np.ndarray | None
    projections: np.ndarray
    angles_deg: np.ndarray
    geometry: ScanGeometry
    delta_beta: float | None
    binning: int | None
    ground_truth: np.ndarray | None
    phantom: Phantom


def frame_rng(seed: int, kind: str) -> np.random.Generator:
    """The random generator of one kind of frame (``dark``, ``flat``, ``projection``, ``flat_after``)."""
    if kind not in _FRAME_KINDS:
        raise ValueError(f"kind must be one of {_FRAME_KINDS}, got {kind!r}")
    children = np.random.SeedSequence(seed).spawn(len(_FRAME_KINDS))
    return np.random.default_rng(children[_FRAME_KINDS.index(kind)])


def beam_profile(rows: int, cols: int, falloff: float = 0.25, tilt: float = 0.05) -> np.ndarray:
    """Smooth illumination, 1 at the centre: a wide Gaussian times a linear tilt.

    Returns
    -------
    ndarray of shape (rows, cols), float32
        Relative intensity, ``1 - falloff`` at the corners (before the tilt).
    """
    if not 0 <= falloff < 1 or not 0 <= tilt < 1:
        raise ValueError(f"falloff and tilt must be in [0, 1), got {falloff}, {tilt}")
    v = (np.arange(rows) - (rows - 1) / 2) / max((rows - 1) / 2, 1)
    u = (np.arange(cols) - (cols - 1) / 2) / max((cols - 1) / 2, 1)
    r2 = v[:, None] ** 2 + u[None, :] ** 2  # 2 at the corners
    gauss = (1.0 - falloff) ** (r2 / 2.0)
    return (gauss * (1.0 + tilt * u[None, :])).astype(np.float32)


def expose(intensity: np.ndarray, detector: DetectorModel, profile: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    """Counts recorded for a relative ``intensity`` (1 = flat): Poisson noise on top of the dark.

    Parameters
    ----------
    intensity : ndarray of shape (rows, cols) or (n, rows, cols), float
        Flat-corrected intensity (0 for a dark frame).
    detector : DetectorModel
    profile : ndarray of shape (rows, cols), float32
        Beam profile (:func:`beam_profile`).
    rng : numpy.random.Generator

    Returns
    -------
    ndarray, uint16, shape of ``intensity``
        ``Poisson(dark_level + photons · profile · intensity)``, clipped to 65535.
    """
    mean = detector.dark_level + detector.photons * profile * np.asarray(intensity, np.float64)
    return np.minimum(rng.poisson(mean), _COUNT_MAX).astype(np.uint16)


class HologramSimulator:
    """Noise-free hologram of a phantom at any angle; the propagator is set up once.

    Parameters
    ----------
    phantom : Phantom
    geometry : ScanGeometry
    supersample : int
        Fine grid points per detector pixel edge (intensity averaged over them).
    backend : Backend, optional
        Where the propagation runs (default: CPU).
    """

    def __init__(self, phantom: Phantom, geometry: ScanGeometry, supersample: int = 2,
                 backend: Backend | None = None):
        if supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        self.phantom = phantom
        self.geometry = geometry
        self.supersample = int(supersample)
        self.backend = backend or get_backend("cpu")
        g, ss = geometry, self.supersample
        self.fine_pixel_m = g.pixel_size_m / ss
        self.fine_shape = (g.rows * ss, g.cols * ss)
        lam = wavelength_m(g.energy_kev)
        self.wavenumber = 2.0 * math.pi / lam
        # Fringes of the finest sampled frequency travel λz/(2·pixel) sideways: pad by
        # that much free space (plus a little), at most one frame size.
        reach = math.ceil(lam * g.distance_m / (2.0 * self.fine_pixel_m**2)) + 8
        margin = min(reach, max(self.fine_shape))
        self.padded_shape = tuple(smooth_size(n + 2 * margin) for n in self.fine_shape)
        self.offset = tuple((p - n) // 2 for p, n in zip(self.padded_shape, self.fine_shape))
        self.propagator = FresnelPropagator(
            self.padded_shape, self.fine_pixel_m, g.distance_m, g.energy_kev, self.backend
        )

    def intensity(self, angle_deg: float) -> np.ndarray:
        """Flat-corrected detector intensity at one angle, without noise.

        Returns
        -------
        ndarray of shape (rows, cols), float32
            ``|ψ|²`` averaged over each detector pixel; 1 where there is no object.
        """
        (pr, pc), (top, left) = self.padded_shape, self.offset
        fr, fc = self.fine_shape
        delta_m, beta_m = self.phantom.project(
            math.radians(angle_deg), pr, pc, self.fine_pixel_m,
            cor_px=left + (fc - 1) / 2 - (pc - 1) / 2 + self.geometry.cor_px * self.supersample,
            row_shift_px=(top + (fr - 1) / 2 - (pr - 1) / 2
                          + self.geometry.row_shift_px * self.supersample),
        )
        k = self.wavenumber
        wave = np.exp(-k * beta_m - 1j * k * delta_m).astype(np.complex64)
        xp = self.backend.xp
        field = self.propagator.forward(self.backend.asarray(wave))
        fine = xp.abs(field[top : top + fr, left : left + fc]) ** 2
        return self.backend.to_host(bin_pixels(fine, self.supersample, xp)).astype(np.float32)


def ground_truth(phantom: Phantom, geometry: ScanGeometry, binning: int = 1,
                 supersample: int = 2) -> np.ndarray:
    """Voxelised δ on the grid of a reconstruction with pixel ``binning``.

    Returns
    -------
    ndarray of shape (rows // b, cols // b, cols // b), float32
        ``[z, y, x]``; slice ``k`` at the height of binned detector row ``k``, ``x`` and ``y``
        centred on the rotation axis, voxel edge ``b · pixel_size_m``.
    """
    b, p = int(binning), geometry.pixel_size_m
    # Binned row k averages detector rows k·b … k·b + b - 1 (the rows % b last are cropped).
    z0_m = ((b - 1) / 2 - (geometry.rows - 1) / 2) * p
    return phantom.voxelize(geometry.rows // b, geometry.cols // b, b * p, z0_m, supersample)


def reference_frames(kind: str, n: int, geometry: ScanGeometry, detector: DetectorModel,
                     seed: int = 0) -> np.ndarray:
    """``n`` dark (``kind="dark"``) or flat (``"flat"``, ``"flat_after"``) frames.

    Returns
    -------
    ndarray of shape (n, rows, cols), uint16
    """
    if kind == "projection":
        raise ValueError("reference_frames makes darks and flats; use iter_projections")
    rng = frame_rng(seed, kind)
    profile = beam_profile(geometry.rows, geometry.cols, detector.beam_falloff, detector.beam_tilt)
    level = 0.0 if kind == "dark" else 1.0
    return expose(np.full((n, geometry.rows, geometry.cols), level), detector, profile, rng)


def iter_projections(phantom: Phantom, geometry: ScanGeometry, angles_deg,
                     detector: DetectorModel = DetectorModel(), supersample: int = 2,
                     seed: int = 0, backend: Backend | None = None) -> Iterator[np.ndarray]:
    """Yield the raw projections one by one, in the order of ``angles_deg``.

    Yields
    ------
    ndarray of shape (rows, cols), uint16
        Counts of the projection at ``angles_deg[i]``.
    """
    sim = HologramSimulator(phantom, geometry, supersample, backend)
    profile = beam_profile(geometry.rows, geometry.cols, detector.beam_falloff, detector.beam_tilt)
    rng = frame_rng(seed, "projection")
    for angle in np.asarray(angles_deg, dtype=np.float64):
        yield detector.with_bad_columns(expose(sim.intensity(float(angle)), detector, profile, rng))


def simulate_scan(
    phantom: Phantom,
    *,
    n_projections: int = 180,
    angles_deg=None,
    rows: int = 128,
    cols: int = 128,
    pixel_size_m: float = 1.0e-6,
    distance_m: float = 0.05,
    energy_kev: float = 17.5,
    cor_px: float = 0.0,
    supersample: int = 2,
    detector: DetectorModel = DetectorModel(),
    n_darks: int = 10,
    n_flats: int = 10,
    n_flats_after: int = 0,
    binning: int | None = 1,
    seed: int = 0,
    backend: Backend | None = None,
    progress=None,
) -> SimulatedScan:
    """Simulate a whole scan and voxelise its ground truth.

    Parameters
    ----------
    phantom : Phantom
    n_projections : int
        Projections over 180° (ignored when ``angles_deg`` is given).
    angles_deg : array of float, optional
        Projection angles in degrees (default: ``n_projections`` evenly over [0°, 180°)).
    rows, cols : int
        Detector frame shape.
    pixel_size_m, distance_m, energy_kev : float
        Effective pixel size (m), propagation distance (m), photon energy (keV).
    cor_px : float
        Rotation-axis offset from ``(cols - 1) / 2``, detector pixels.
    supersample : int
        Fine grid points per pixel edge for propagation and for the ground truth.
    detector : DetectorModel
        Photon count, dark level, beam profile.
    n_darks, n_flats, n_flats_after : int
        Reference frames; flats after the projections are optional (0).
    binning : int or None
        Pixel binning of the reconstruction the ground truth is voxelised for; None: no
        ground truth (it costs ``(rows / binning)·(cols / binning)²`` voxels).
    seed : int
        Seed of every random stream (noise only; the phantom is given).
    backend : Backend, optional
        Where the propagation runs (default: CPU).
    progress : callable, optional
        ``progress(done, total)`` after each projection.

    Returns
    -------
    SimulatedScan
    """
    if n_darks < 1 or n_flats < 1:
        raise ValueError(f"need at least one dark and one flat, got {n_darks}, {n_flats}")
    if angles_deg is None:
        angles_deg = np.linspace(0.0, 180.0, n_projections, endpoint=False)
    angles_deg = np.asarray(angles_deg, dtype=np.float64)
    geometry = ScanGeometry(rows, cols, pixel_size_m, distance_m, energy_kev, cor_px)
    projections = []
    for image in iter_projections(phantom, geometry, angles_deg, detector, supersample, seed, backend):
        projections.append(image)
        if progress is not None:
            progress(len(projections), len(angles_deg))
    projections = np.stack(projections)
    flats_after = (reference_frames("flat_after", n_flats_after, geometry, detector, seed)
                   if n_flats_after else None)
    truth = None if binning is None else ground_truth(phantom, geometry, binning, supersample)
    return SimulatedScan(
        darks=reference_frames("dark", n_darks, geometry, detector, seed),
        flats=reference_frames("flat", n_flats, geometry, detector, seed),
        flats_after=flats_after,
        projections=projections,
        angles_deg=angles_deg,
        geometry=geometry,
        delta_beta=phantom.delta_beta,
        binning=binning,
        ground_truth=truth,
        phantom=phantom,
    )
