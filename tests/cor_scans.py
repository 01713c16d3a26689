"""Small simulated scans with a known axis offset, shared by the unit and peer tests of the centre.

8 rows × 128 columns; objects taller than the rows (cuts through them, as in a real slab);
optionally a body 1.6 detector widths across, so that matter lies beyond the field of view
at every angle.
"""

import numpy as np

from holostream.workers.phantom import random_phantom, with_body
from holostream.workers.simulate import DetectorModel, simulate_scan

ROWS, COLS, PIXEL_M = 8, 128, 1.0e-6
LOW_DOSE = 200.0  # photons per pixel: a low-dose scan (the default is 2·10⁴)


def transmissions(cor_px, span_deg=180.0, n=90, photons=2.0e4, wide=False, seed=1, rows=ROWS):
    """Flat-fielded projections of a simulated scan and their angles (degrees)."""
    # Objects taller than the 8 rows: the rows see cuts through them, as in a real slab.
    phantom = random_phantom(seed, 0.4 * COLS * PIXEL_M, 5 * ROWS * PIXEL_M, n_objects=12)
    if wide:
        # A body 1.6 detector widths across: matter beyond the field of view at every angle.
        phantom = with_body(phantom, (0.8 * COLS * PIXEL_M, 0.6 * COLS * PIXEL_M, 4 * ROWS * PIXEL_M),
                            2e-7, 1e-9, center_m=(0.1 * COLS * PIXEL_M, 0.0, 0.0), psi_rad=0.3)
    angles = np.linspace(0.0, span_deg, n, endpoint=False)
    scan = simulate_scan(phantom, angles_deg=angles, rows=rows, cols=COLS, pixel_size_m=PIXEL_M,
                         cor_px=cor_px, detector=DetectorModel(photons=photons), binning=None,
                         n_darks=2, n_flats=4, seed=seed)
    dark = scan.darks.mean(axis=0)
    return (scan.projections - dark) / (scan.flats.mean(axis=0) - dark), angles
