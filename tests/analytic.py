"""Exact 2-D phantoms for FBP tests: ellipses with pixel-integrated line integrals.

Geometry of PROTOCOL.md: column ``u = c0 + x cos θ + y sin θ``, image ``[y, x]`` with index
``i ↔ i - (n - 1)/2``. Shared by the unit tests and the peer comparison.
"""

import numpy as np

N = 128
# (x0, y0, semi-axis a, semi-axis b, rotation phi, value): pixels relative to the axis
ELLIPSES = [
    (0.0, 0.0, 44.0, 36.0, 0.3, 1.0),
    (18.0, -10.0, 12.0, 12.0, 0.0, 0.5),
    (-20.0, 14.0, 14.0, 7.0, -0.8, -0.4),
]


def _chord_antiderivative(t, r):
    """∫ 2·sqrt(r² - t²) dt, the area of a disk of radius r left of offset t."""
    t = np.clip(t, -r, r)
    return t * np.sqrt(r * r - t * t) + r * r * np.arcsin(t / r)


def ellipse_sinogram(angles_rad, cols=N, nz=2, cor_px=0.0, ellipses=ELLIPSES):
    """Exact pixel-integrated projections, shape (n_angles, nz, cols), float32."""
    angles = np.asarray(angles_rad, dtype=np.float64)[:, None]
    t = np.arange(cols)[None, :] - ((cols - 1) / 2 + cor_px)
    sino = np.zeros((angles.shape[0], cols))
    for x0, y0, a, b, phi, value in ellipses:
        # support radius of the ellipse in direction θ; chord = (ab/ρ²)·2·sqrt(ρ² - s²)
        rho = np.sqrt((a * np.cos(angles - phi)) ** 2 + (b * np.sin(angles - phi)) ** 2)
        s = t - (x0 * np.cos(angles) + y0 * np.sin(angles))
        area = _chord_antiderivative(s + 0.5, rho) - _chord_antiderivative(s - 0.5, rho)
        sino += value * a * b / rho**2 * area
    return np.repeat(sino[:, None, :], nz, axis=1).astype(np.float32)


def ellipse_image(n=N, ellipses=ELLIPSES, supersample=4):
    """Ground truth image[y, x] (voxel means, 4×4 supersampled)."""
    sub = (np.arange(n * supersample) + 0.5) / supersample - 0.5 - (n - 1) / 2
    y, x = np.meshgrid(sub, sub, indexing="ij")
    image = np.zeros_like(x)
    for x0, y0, a, b, phi, value in ellipses:
        xr = (x - x0) * np.cos(phi) + (y - y0) * np.sin(phi)
        yr = -(x - x0) * np.sin(phi) + (y - y0) * np.cos(phi)
        image += value * ((xr / a) ** 2 + (yr / b) ** 2 <= 1.0)
    return image.reshape(n, supersample, n, supersample).mean(axis=(1, 3))
