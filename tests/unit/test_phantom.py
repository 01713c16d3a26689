"""Phantom: exact chords, projection geometry of PROTOCOL.md, voxelised ground truth."""

import math

import numpy as np
import pytest

from holostream.workers.phantom import Ellipsoid, Phantom, random_phantom, sphere

PIXEL = 1e-6


def test_sphere_chord_is_exact():
    r, delta, beta = 20e-6, 1e-6, 2e-9
    ph = Phantom((sphere((0.0, 0.0, 0.0), r, delta, beta),))
    d, b = ph.project(0.3, 65, 65, PIXEL)
    rho2 = ((np.arange(65) - 32) * PIXEL) ** 2
    expected = 2 * np.sqrt(np.maximum(r**2 - rho2[:, None] - rho2[None, :], 0)) * delta
    np.testing.assert_allclose(d, expected, rtol=1e-9, atol=1e-18)
    np.testing.assert_allclose(b, expected * beta / delta, rtol=1e-9, atol=1e-21)
    assert d[32, 32] == pytest.approx(2 * r * delta)


@pytest.mark.parametrize("angle_deg", [0.0, 37.0, 90.0, 151.0])
def test_projected_mass_equals_volume_times_delta(angle_deg):
    e = Ellipsoid((5e-6, -8e-6, 3e-6), (20e-6, 12e-6, 15e-6), 1e-6, 0.0, psi_rad=0.4)
    d, _ = Phantom((e,)).project(math.radians(angle_deg), 128, 128, 0.5e-6)
    mass = d.sum() * 0.5e-6**2
    assert mass == pytest.approx(4 / 3 * math.pi * 20e-6 * 12e-6 * 15e-6 * 1e-6, rel=2e-3)


def test_projection_follows_protocol_geometry():
    # A small sphere at (x, y, z) must appear at column c0 + x cosθ + y sinθ, row of z.
    x, y, z, cor = 10e-6, -6e-6, 4e-6, 3.0
    ph = Phantom((sphere((x, y, z), 2.5e-6, 1e-6, 0.0),))
    cols, rows = 65, 49
    for theta in np.radians([0, 30, 90, 200]):
        d, _ = ph.project(theta, rows, cols, PIXEL, cor_px=cor)
        v, u = np.unravel_index(np.argmax(d), d.shape)
        c0 = (cols - 1) / 2 + cor
        assert u == round(c0 + (x * math.cos(theta) + y * math.sin(theta)) / PIXEL)
        assert v == round((rows - 1) / 2 + z / PIXEL)


def test_voxelized_volume_matches_projection_along_y_and_x():
    e = Ellipsoid((4e-6, -3e-6, 2e-6), (14e-6, 8e-6, 10e-6), 1e-6, 1e-9, psi_rad=0.6)
    ph = Phantom((e, sphere((-12e-6, 10e-6, -6e-6), 5e-6, 2e-6, 1e-9)))
    n = 48
    vol = ph.voxelize(n, n, PIXEL, supersample=4)
    assert vol.shape == (n, n, n) and vol.dtype == np.float32
    # θ = 0: rays along +y, detector column = x. θ = 90°: rays along -x, column = y.
    for theta, axis in ((0.0, 1), (math.pi / 2, 2)):
        d, _ = ph.project(theta, n, n, PIXEL)
        from_volume = vol.sum(axis=axis) * PIXEL
        err = np.abs(from_volume - d).sum() / np.abs(d).sum()
        assert err < 0.03, err
    expected_total = 1e-6 * 4 / 3 * math.pi * 14 * 8 * 10 + 2e-6 * 4 / 3 * math.pi * 125
    assert vol.sum() == pytest.approx(expected_total, rel=0.01)


def test_random_phantom_is_reproducible_and_disjoint():
    mats = ((1e-6, 5e-9), (2e-6, 4e-8))
    a = random_phantom(7, radius_m=40e-6, height_m=60e-6, n_objects=8, materials=mats)
    b = random_phantom(7, radius_m=40e-6, height_m=60e-6, n_objects=8, materials=mats)
    assert a == b and len(a.objects) == 8
    assert {(o.delta, o.beta) for o in a.objects} == set(mats)
    assert a.delta_beta is None
    for i, o in enumerate(a.objects):
        x, y, z = o.center_m
        assert math.hypot(x, y) + o.bounding_radius_m <= 40e-6 + 1e-12
        assert abs(z) + o.semi_axes_m[2] <= 30e-6 + 1e-12
        for p in a.objects[i + 1 :]:
            assert math.dist(o.center_m, p.center_m) >= o.bounding_radius_m + p.bounding_radius_m
    single = random_phantom(1, radius_m=40e-6, height_m=60e-6, n_objects=4)
    assert single.delta_beta == pytest.approx(200.0)


def test_invalid_ellipsoid_is_refused():
    with pytest.raises(ValueError, match="semi-axes"):
        Ellipsoid((0, 0, 0), (1e-6, 0.0, 1e-6), 1e-6, 0.0)
    with pytest.raises(ValueError, match="quantity"):
        Phantom(()).voxelize(4, 4, PIXEL, quantity="mu")


# --- the scan simulator built on the phantom -------------------------------------------

from holostream.workers.simulate import (  # noqa: E402
    DetectorModel,
    HologramSimulator,
    ScanGeometry,
    beam_profile,
    iter_projections,
    simulate_scan,
)


def test_contact_plane_intensity_is_beer_lambert():
    # At a negligible distance the hologram is |T|² = exp(-2·(2π/λ)∫β dl), pixel-averaged.
    ph = Phantom((sphere((3e-6, 0.0, -2e-6), 12e-6, 1e-6, 2e-7),))
    geo = ScanGeometry(40, 48, PIXEL, 1e-12, 17.5)
    got = HologramSimulator(ph, geo, supersample=2).intensity(25.0)
    _, beta_m = ph.project(math.radians(25.0), 80, 96, PIXEL / 2)
    k = 2 * math.pi * 17.5 / 1.23984198e-9
    expected = np.exp(-2 * k * beta_m).reshape(40, 2, 48, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)
    assert got.min() < 0.8  # the sphere absorbs visibly, so the comparison means something


def test_propagation_keeps_flux_and_makes_fringes():
    ph = Phantom((sphere((0.0, 0.0, 0.0), 10e-6, 1e-6, 0.0),))  # pure phase object
    geo = ScanGeometry(64, 64, PIXEL, 0.1, 17.5)
    img = HologramSimulator(ph, geo, supersample=2).intensity(0.0)
    assert abs(img.mean() - 1.0) < 2e-3  # |H| = 1 and the fringes stay in the frame
    assert img.max() > 1.05 and img.min() < 0.95  # edge-enhancement fringes


def test_counts_and_stream_equal_whole_scan():
    ph = random_phantom(2, radius_m=12e-6, height_m=20e-6, n_objects=3)
    det = DetectorModel(photons=5e3, dark_level=50.0)
    scan = simulate_scan(ph, n_projections=6, rows=24, cols=32, detector=det, n_darks=40,
                         n_flats=40, n_flats_after=2, binning=2, seed=5)
    assert scan.projections.dtype == np.uint16 and scan.projections.shape == (6, 24, 32)
    assert scan.flats_after.shape == (2, 24, 32)
    profile = beam_profile(24, 32, det.beam_falloff, det.beam_tilt)
    assert scan.darks.mean() == pytest.approx(50.0, rel=0.02)
    np.testing.assert_allclose(scan.flats.mean(0) - 50.0, 5e3 * profile, rtol=0.03)
    streamed = list(iter_projections(ph, scan.geometry, scan.angles_deg, det, seed=5))
    np.testing.assert_array_equal(np.stack(streamed), scan.projections)
    # flat-corrected counts scatter around the noise-free hologram by Poisson statistics
    ideal = HologramSimulator(ph, scan.geometry).intensity(scan.angles_deg[3])
    corrected = (scan.projections[3] - 50.0) / (5e3 * profile)
    assert abs((corrected - ideal).mean()) < 3e-3
    assert (corrected - ideal).std() == pytest.approx(np.sqrt(ideal / (5e3 * profile)).mean(), rel=0.1)


def test_ground_truth_grid_matches_binned_detector_rows():
    ph = Phantom((Ellipsoid((3e-6, -2e-6, 4.5e-6), (9e-6, 6e-6, 7e-6), 1e-6, 0.0, 0.3),))
    fine = ph.voxelize(32, 32, PIXEL, supersample=1)
    z0 = ((2 - 1) / 2 - (32 - 1) / 2) * PIXEL
    coarse = ph.voxelize(16, 16, 2 * PIXEL, z0_m=z0, supersample=2)
    np.testing.assert_allclose(coarse, fine.reshape(16, 2, 16, 2, 16, 2).mean(axis=(1, 3, 5)),
                               atol=1e-12)
