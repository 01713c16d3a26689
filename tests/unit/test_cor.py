"""Centre-of-rotation estimate on simulated scans: accuracy, confidence, no-signal case.

Scans are small (8 rows × 128 columns, 90–120 projections) so that the whole file runs in
seconds; the estimate uses every row given. Run with ``-s`` to see the numbers.
"""

import numpy as np
import pytest

from cor_scans import COLS, LOW_DOSE, PIXEL_M, ROWS, transmissions

from holostream.workers.cor import estimate_cor
from holostream.workers.simulate import DetectorModel, ScanGeometry, reference_frames

CASES = [
    # (offset px, span °, projections, photons, wider than the field of view)
    (7.3, 180.0, 90, 2.0e4, False),
    (-40.0, 180.0, 90, 2.0e4, False),
    (39.6, 180.0, 90, LOW_DOSE, False),
    (-23.45, 180.0, 90, 2.0e4, True),
    (31.1, 180.0, 90, LOW_DOSE, True),
    (-39.7, 360.0, 120, 2.0e4, False),
    (12.45, 360.0, 120, LOW_DOSE, False),
    (40.0, 360.0, 120, 2.0e4, True),
    (-20.2, 360.0, 120, LOW_DOSE, True),
]


@pytest.mark.parametrize("cor_px, span_deg, n, photons, wide", CASES)
def test_offset_found_within_a_third_of_a_pixel(cor_px, span_deg, n, photons, wide):
    # A 180° scan has one pair at its seam (360°: n/2 pairs); at low dose it needs more rows
    # for its evidence to count (8 rows: confidence ≈ 0.3, still within 0.3 px).
    rows = 4 * ROWS if span_deg == 180.0 and photons == LOW_DOSE else ROWS
    projections, angles = transmissions(cor_px, span_deg, n, photons, wide, rows=rows)
    estimate = estimate_cor(projections, angles)
    print(f"\n{span_deg:.0f}° photons={photons:g} wide={wide}: true {cor_px:+.2f} "
          f"found {estimate.cor_px:+.3f} confidence {estimate.confidence:.2f} ({estimate.method})")
    assert abs(estimate.cor_px - cor_px) <= 0.3
    assert estimate.trusted


@pytest.mark.parametrize("span_deg", [180.0, 360.0])
def test_no_signal_gets_low_confidence(span_deg):
    # Flats divided by flats: Poisson noise and a beam profile, no sample.
    geometry = ScanGeometry(ROWS, COLS, PIXEL_M, 0.05, 17.5)
    detector = DetectorModel(photons=2.0e4)
    frames = reference_frames("flat", 90, geometry, detector, seed=5).astype(np.float64)
    flat = reference_frames("flat", 4, geometry, detector, seed=6).mean(axis=0)
    estimate = estimate_cor(frames / flat, np.linspace(0.0, span_deg, 90, endpoint=False))
    print(f"\nno signal, {span_deg:.0f}°: {estimate}")
    assert estimate.confidence < 0.5


def test_guess_and_range_limit_the_search():
    projections, angles = transmissions(-30.0, 360.0, 60)
    # A search window that excludes the truth cannot find it...
    away = estimate_cor(projections, angles, max_offset_px=10.0)
    assert abs(away.cor_px) <= 10.0 + 0.5
    # ...and one centred on a rough guess does.
    near = estimate_cor(projections, angles, max_offset_px=5.0, guess_px=-27.0)
    assert abs(near.cor_px + 30.0) <= 0.3


def test_no_opposite_angles_means_no_estimate():
    projections, angles = transmissions(5.0, 90.0, 30)
    estimate = estimate_cor(projections, angles)
    assert estimate.confidence == 0.0 and estimate.method == "none"


@pytest.mark.parametrize("shape, n_angles", [((10, 128), 9), ((4, 3, 64), 5), ((2, 3, 4, 5), 2)])
def test_bad_input_shapes_are_rejected(shape, n_angles):
    with pytest.raises(ValueError):
        estimate_cor(np.ones(shape), np.linspace(0, 360, n_angles, endpoint=False))
