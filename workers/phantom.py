"""Analytic 3-D phantoms of ellipsoids (spheres included) with refractive index δ and β.

Coordinates are metres, in the frame of the protocol's geometry (PROTOCOL.md):

- ``x``, ``y`` horizontal, relative to the rotation axis; at angle θ a point projects onto
  the detector position ``s = x·cos θ + y·sin θ`` (metres from the axis column), i.e.
  column ``u = c0 + s / pixel_size_m`` with ``c0 = (cols - 1) / 2 + cor_px``; the rays run
  along ``(-sin θ, cos θ, 0)``.
- ``z`` vertical, measured along the detector rows **in the direction of increasing row
  index** (top row first), zero at the detector's middle row. A volume slice ``volume[k]``
  therefore lies at the height of detector row ``k``.

Projections are exact line integrals (analytic chord lengths), not sums over voxels;
the voxelised volume is only the ground truth to compare reconstructions with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ellipsoid:
    """One homogeneous ellipsoid.

    Attributes
    ----------
    center_m : tuple of float
        ``(x, y, z)`` of the centre in metres (see the module docstring for the frame).
    semi_axes_m : tuple of float
        Semi-axes ``(a, b, c)`` in metres: ``a``, ``b`` in the horizontal plane before the
        rotation by ``psi_rad``, ``c`` vertical.
    delta, beta : float
        Refractive-index decrement and absorption index (dimensionless, ≥ 0); where
        ellipsoids overlap their values add.
    psi_rad : float
        Rotation of the ellipsoid about the vertical axis, radians.
    """

    center_m: tuple[float, float, float]
    semi_axes_m: tuple[float, float, float]
    delta: float
    beta: float
    psi_rad: float = 0.0

    def __post_init__(self):
        if len(self.center_m) != 3 or len(self.semi_axes_m) != 3:
            raise ValueError("center_m and semi_axes_m need three values (x, y, z)")
        if not all(a > 0 for a in self.semi_axes_m):
            raise ValueError(f"semi-axes must be > 0, got {self.semi_axes_m}")
        if self.delta < 0 or self.beta < 0:
            raise ValueError(f"delta and beta must be >= 0, got {self.delta}, {self.beta}")

    @property
    def bounding_radius_m(self) -> float:
        """Radius of a sphere around the centre that contains the ellipsoid (m)."""
        return max(self.semi_axes_m)


def sphere(center_m, radius_m: float, delta: float, beta: float) -> Ellipsoid:
    """A sphere of ``radius_m`` metres at ``center_m = (x, y, z)`` metres."""
    return Ellipsoid(tuple(center_m), (radius_m, radius_m, radius_m), delta, beta)


@dataclass(frozen=True)
class Phantom:
    """A set of ellipsoids; projects exactly and voxelises for ground truth.

    Attributes
    ----------
    objects : tuple of Ellipsoid
    """

    objects: tuple[Ellipsoid, ...]

    @property
    def delta_beta(self) -> float | None:
        """The common δ/β of all objects, or None when the materials differ."""
        ratios = {round(o.delta / o.beta, 9) for o in self.objects if o.beta > 0}
        if len(ratios) == 1 and all(o.beta > 0 for o in self.objects):
            return ratios.pop()
        return None

    def project(
        self,
        angle_rad: float,
        rows: int,
        cols: int,
        pixel_size_m: float,
        cor_px: float = 0.0,
        row_shift_px: float = 0.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact projected line integrals ``∫δ dl`` and ``∫β dl`` at one angle.

        Parameters
        ----------
        angle_rad : float
            Rotation angle θ in radians.
        rows, cols : int
            Detector grid; pixel ``(v, u)`` is sampled at its centre.
        pixel_size_m : float
            Pixel size in metres (pass the fine pitch for a supersampled grid).
        cor_px : float
            Rotation-axis offset from ``(cols - 1) / 2`` in pixels of this grid.
        row_shift_px : float
            Row of ``z = 0`` minus ``(rows - 1) / 2``, in pixels of this grid (non-zero when
            this grid is a detector frame padded unevenly).

        Returns
        -------
        delta_m, beta_m : ndarray of shape (rows, cols), float64
            Line integrals in metres.
        """
        s = (np.arange(cols) - ((cols - 1) / 2 + cor_px)) * pixel_size_m
        z = (np.arange(rows) - ((rows - 1) / 2 + row_shift_px)) * pixel_size_m
        cos_t, sin_t = math.cos(angle_rad), math.sin(angle_rad)
        delta_m = np.zeros((rows, cols))
        beta_m = np.zeros((rows, cols))
        for obj in self.objects:
            a, b, c = obj.semi_axes_m
            cx, cy, cz = obj.center_m
            cos_p, sin_p = math.cos(obj.psi_rad), math.sin(obj.psi_rad)
            # Ray p(t) = (s cosθ, s sinθ, z) + t(-sinθ, cosθ, 0) in the ellipsoid's frame,
            # scaled to the unit sphere: |q + t d|² = 1; chord = 2√(B² - A·C) / A.
            qx, qy = s * cos_t - cx, s * sin_t - cy
            qx, qy = (cos_p * qx + sin_p * qy) / a, (-sin_p * qx + cos_p * qy) / b
            dx = (-cos_p * sin_t + sin_p * cos_t) / a
            dy = (sin_p * sin_t + cos_p * cos_t) / b
            big_a = dx * dx + dy * dy
            big_b = qx * dx + qy * dy
            c_s = qx * qx + qy * qy - 1.0
            c_z = ((z - cz) / c) ** 2
            rows_hit = np.nonzero(c_z < 1.0)[0]
            if rows_hit.size == 0:
                continue
            disc = big_b[None, :] ** 2 - big_a * (c_s[None, :] + c_z[rows_hit, None])
            chord = 2.0 * np.sqrt(np.maximum(disc, 0.0)) / big_a
            delta_m[rows_hit] += obj.delta * chord
            beta_m[rows_hit] += obj.beta * chord
        return delta_m, beta_m

    def voxelize(
        self,
        n_z: int,
        n_xy: int,
        voxel_size_m: float,
        z0_m: float | None = None,
        supersample: int = 2,
        quantity: str = "delta",
    ) -> np.ndarray:
        """Voxelised δ (or β): the mean over ``supersample³`` points in each voxel.

        Parameters
        ----------
        n_z, n_xy : int
            Volume shape ``(n_z, n_xy, n_xy)``, indexed ``[z, y, x]``; ``x`` and ``y`` of
            index ``i`` lie at ``(i - (n_xy - 1) / 2) · voxel_size_m`` from the axis.
        voxel_size_m : float
            Voxel edge in metres.
        z0_m : float, optional
            ``z`` of the centre of slice 0; default centres the slices on ``z = 0``.
        supersample : int
            Sample points per voxel edge.
        quantity : {"delta", "beta"}

        Returns
        -------
        ndarray of shape (n_z, n_xy, n_xy), float32
        """
        if quantity not in ("delta", "beta"):
            raise ValueError(f"quantity must be 'delta' or 'beta', got {quantity!r}")
        ss = int(supersample)
        if ss < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        if z0_m is None:
            z0_m = -(n_z - 1) / 2 * voxel_size_m
        sub = ((np.arange(ss) + 0.5) / ss - 0.5) * voxel_size_m
        xy = ((np.arange(n_xy) - (n_xy - 1) / 2) * voxel_size_m)[:, None] + sub
        zs = (z0_m + np.arange(n_z) * voxel_size_m)[:, None] + sub
        xy, zs = xy.ravel(), zs.ravel()  # fine coordinates, voxel-major
        out = np.empty((n_z, n_xy, n_xy), np.float32)
        # Slabs of whole voxels keep the fine grid to ~64 MiB whatever the volume size.
        slab = max(1, (1 << 24) // (ss * (n_xy * ss) ** 2))
        for k0 in range(0, n_z, slab):
            k1 = min(k0 + slab, n_z)
            fine = self._fill(xy, zs[k0 * ss : k1 * ss], quantity)
            out[k0:k1] = fine.reshape(k1 - k0, ss, n_xy, ss, n_xy, ss).mean(
                axis=(1, 3, 5), dtype=np.float32)
        return out

    def _fill(self, xy: np.ndarray, zs: np.ndarray, quantity: str) -> np.ndarray:
        """δ or β at the points ``(zs, xy, xy)`` (sorted fine coordinates, metres)."""
        fine = np.zeros((zs.size, xy.size, xy.size), np.float32)
        for obj in self.objects:
            value = obj.delta if quantity == "delta" else obj.beta
            a, b, c = obj.semi_axes_m
            cx, cy, cz = obj.center_m
            r = obj.bounding_radius_m
            kz = np.nonzero(np.abs(zs - cz) <= c)[0]
            ky = np.nonzero(np.abs(xy - cy) <= r)[0]
            kx = np.nonzero(np.abs(xy - cx) <= r)[0]
            if kz.size == 0 or ky.size == 0 or kx.size == 0:
                continue
            cos_p, sin_p = math.cos(obj.psi_rad), math.sin(obj.psi_rad)
            px, py = xy[kx][None, :] - cx, xy[ky][:, None] - cy
            u = (cos_p * px + sin_p * py) / a
            w = (-sin_p * px + cos_p * py) / b
            in_plane = u * u + w * w
            height = ((zs[kz] - cz) / c) ** 2
            inside = in_plane[None, :, :] + height[:, None, None] <= 1.0
            box = fine[kz[0] : kz[-1] + 1, ky[0] : ky[-1] + 1, kx[0] : kx[-1] + 1]
            box += np.float32(value) * inside
        return fine


def with_body(phantom: Phantom, semi_axes_m, delta: float, beta: float,
              center_m=(0.0, 0.0, 0.0), psi_rad: float = 0.0) -> Phantom:
    """``phantom`` inside a homogeneous body, e.g. one wider than the field of view.

    The body is one more ellipsoid (its δ and β add to the objects' where they overlap),
    listed first. With semi-axes beyond the detector half-width it makes the usual case of
    matter cut by the image edge on every projection.

    Parameters
    ----------
    phantom : Phantom
    semi_axes_m : tuple of float
        ``(a, b, c)`` of the body in metres.
    delta, beta : float
        The body's refractive-index decrement and absorption index.
    center_m : tuple of float
        ``(x, y, z)`` of its centre in metres.
    psi_rad : float
        Rotation about the vertical axis, radians.

    Returns
    -------
    Phantom
    """
    body = Ellipsoid(tuple(center_m), tuple(semi_axes_m), delta, beta, psi_rad)
    return Phantom((body,) + tuple(phantom.objects))


def random_phantom(
    seed: int,
    radius_m: float,
    height_m: float,
    n_objects: int = 10,
    size_range: tuple[float, float] = (0.08, 0.25),
    materials: tuple[tuple[float, float], ...] = ((1.0e-6, 5.0e-9),),
    ellipsoid_fraction: float = 0.5,
    max_tries: int = 2000,
) -> Phantom:
    """A reproducible random phantom of non-overlapping spheres and ellipsoids.

    Parameters
    ----------
    seed : int
        Seed of ``numpy.random.default_rng``.
    radius_m : float
        Radius in metres of the cylinder (around the rotation axis) that contains every
        object; use less than the detector half-width.
    height_m : float
        Height in metres of the slab, centred on ``z = 0``, that contains every object.
    n_objects : int
        Objects to place (fewer if they do not fit within ``max_tries`` attempts).
    size_range : tuple of float
        Bounding radii, as fractions of ``radius_m``, drawn uniformly.
    materials : tuple of (delta, beta)
        Objects take materials in turn (object ``i`` gets ``materials[i % len]``).
    ellipsoid_fraction : float
        Probability that an object is an ellipsoid (else a sphere).
    max_tries : int
        Placement attempts before giving up on further objects.

    Returns
    -------
    Phantom
    """
    if not materials:
        raise ValueError("materials must hold at least one (delta, beta) pair")
    rng = np.random.default_rng(seed)
    placed: list[Ellipsoid] = []
    for _ in range(max_tries):
        if len(placed) == n_objects:
            break
        r = rng.uniform(*size_range) * radius_m
        if r >= radius_m or 2 * r >= height_m:
            continue
        rho = radius_m * math.sqrt(rng.uniform()) * (1 - r / radius_m)
        phi = rng.uniform(0, 2 * math.pi)
        center = (rho * math.cos(phi), rho * math.sin(phi), rng.uniform(-1, 1) * (height_m / 2 - r))
        if any(
            math.dist(center, o.center_m) < r + o.bounding_radius_m for o in placed
        ):
            continue
        delta, beta = materials[len(placed) % len(materials)]
        if rng.uniform() < ellipsoid_fraction:
            axes = (r, r * rng.uniform(0.5, 1.0), r * rng.uniform(0.5, 1.0))
            psi = rng.uniform(0, math.pi)
        else:
            axes, psi = (r, r, r), 0.0
        placed.append(Ellipsoid(center, axes, delta, beta, psi))
    return Phantom(tuple(placed))


def mixed_material_phantom(
    seed: int,
    radius_m: float,
    height_m: float,
    n_objects: int = 10,
    delta_range: tuple[float, float] = (3.0e-7, 1.0e-6),
    delta_beta_range: tuple[float, float] = (30.0, 1000.0),
    **placement,
) -> Phantom:
    """A random phantom whose objects are each of their own material.

    δ is drawn uniformly in ``delta_range`` and δ/β log-uniformly in ``delta_beta_range``
    per object (so no single δ/β describes the sample, as in the multi-distance scans of
    PROTOCOL.md); the placement is :func:`random_phantom`'s with the same ``seed``.

    Parameters
    ----------
    seed, radius_m, height_m, n_objects
        As for :func:`random_phantom`.
    delta_range : tuple of float
        Bounds of δ, > 0.
    delta_beta_range : tuple of float
        Bounds of δ/β, > 0.
    **placement
        Further keywords of :func:`random_phantom` (``size_range``, ``ellipsoid_fraction``, ...).

    Returns
    -------
    Phantom
    """
    (d0, d1), (r0, r1) = delta_range, delta_beta_range
    if not (0 < d0 <= d1 and 0 < r0 <= r1):
        raise ValueError(f"need 0 < low <= high for delta_range {delta_range} and "
                         f"delta_beta_range {delta_beta_range}")
    rng = np.random.default_rng([seed, 1])  # a stream apart from the placement's
    deltas = rng.uniform(d0, d1, n_objects)
    ratios = np.exp(rng.uniform(math.log(r0), math.log(r1), n_objects))
    materials = tuple((float(d), float(d / r)) for d, r in zip(deltas, ratios))
    return random_phantom(seed, radius_m, height_m, n_objects, materials=materials, **placement)
