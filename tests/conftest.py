"""Shared fixtures: small simulated scans made once per session, and the CPU backend.

The scans: 128×128 detector, 1 µm pixels, 17.5 keV, 180 projections over 180°, Poisson
noise (2·10⁴ photons per pixel), a smooth beam profile; ground truth voxelised for
binning 2 (64³). One single-material phantom (δ/β = 200) at 5 cm (Fresnel number 0.28 per
unbinned pixel, where Paganin is nearly exact), and one of two materials (δ/β = 200 and 50)
at 20 cm, where a single δ/β is wrong for part of the sample and iterations can help.
"""

from __future__ import annotations

import pytest

from holostream.workers.backend import get_backend
from holostream.workers.phantom import random_phantom
from holostream.workers.simulate import simulate_scan

#: Materials (δ, β): a light one with δ/β = 200, and a denser, more absorbing one (δ/β = 50).
LIGHT = (1.0e-6, 5.0e-9)
DENSE = (2.5e-6, 5.0e-8)

#: The one δ/β given to the reconstruction of the two-material scan (geometric mean).
TWO_MATERIAL_DELTA_BETA = 100.0

SCAN = dict(n_projections=180, rows=128, cols=128, pixel_size_m=1.0e-6, distance_m=0.05,
            energy_kev=17.5, binning=2, n_darks=10, n_flats=10)


def _phantom(seed: int, materials):
    return random_phantom(seed, radius_m=52e-6, height_m=110e-6, n_objects=9,
                          size_range=(0.15, 0.35), materials=materials)


@pytest.fixture(scope="session")
def cpu_backend():
    """numpy/scipy backend with one FFT thread (the test machine's cores are shared)."""
    return get_backend("cpu", threads=1)


@pytest.fixture(scope="session")
def single_material_scan():
    """SimulatedScan of one material (δ/β = 200), flats before and after."""
    return simulate_scan(_phantom(11, (LIGHT,)), seed=3, n_flats_after=5, **SCAN)


@pytest.fixture(scope="session")
def two_material_scan():
    """SimulatedScan of two materials (δ/β = 200 and 50) at 20 cm; use TWO_MATERIAL_DELTA_BETA."""
    return simulate_scan(_phantom(12, (LIGHT, DENSE)), seed=4, **{**SCAN, "distance_m": 0.2})


@pytest.fixture(scope="session")
def single_material_nx(tmp_path_factory, single_material_scan):
    """Path of ``single_material_scan`` written as NXtomo (with its δ/β)."""
    from holostream.service.files.nxtomo import write_scan

    path = tmp_path_factory.mktemp("scans") / "single.nx"
    write_scan(str(path), single_material_scan)
    return path


@pytest.fixture(scope="session")
def two_material_delta_beta():
    """The single δ/β the two-material scan is reconstructed with."""
    return TWO_MATERIAL_DELTA_BETA
