"""Our centre estimate against nabu's cross-correlation estimator on the same simulated scans.

nabu's ``CenterOfRotation.find_shift`` takes one projection and the mirrored opposite one
(a 180° scan without its end angle: the last projection, one step short) and returns the
offset from the middle, as ours does. It is given edge padding, which it needs for offsets
beyond a quarter of the width. Ours must be within 0.3 px everywhere and never further from
the truth than nabu's (plus 0.05 px); nabu's errors are printed for the closing note (-s).
nabu's Vo estimator needs ``algotom``, which is not installed, and its sinogram
coarse-to-fine estimator only searches near one side, so they are not compared here.
"""

import numpy as np
import pytest
from cor_scans import LOW_DOSE, transmissions

from holostream.workers.cor import estimate_cor

cor_module = pytest.importorskip("nabu.estimation.cor")
pytestmark = pytest.mark.peers

CASES = [
    (7.3, 180.0, 90, 2.0e4, False),
    (-17.6, 180.0, 90, 2.0e4, True),
    (31.1, 180.0, 90, LOW_DOSE, True),
    (-12.45, 360.0, 120, LOW_DOSE, False),
    (-20.2, 360.0, 120, LOW_DOSE, True),
    (40.0, 360.0, 120, 2.0e4, True),
]


def nabu_estimate(projections, angles_deg):
    """nabu's offset from the first projection and its (nearest) opposite, or None if it fails."""
    opposite = int(np.argmin(np.abs((angles_deg - angles_deg[0] - 180.0 + 180.0) % 360.0 - 180.0)))
    finder = cor_module.CenterOfRotation()
    try:
        return float(finder.find_shift(projections[0], np.fliplr(projections[opposite]),
                                       padding_mode="edge", return_relative_to_middle=True))
    except ValueError:  # nabu raises when its fitted peak lies outside the image
        return None


@pytest.mark.parametrize("cor_px, span_deg, n, photons, wide", CASES)
def test_centre_at_least_as_close_as_nabu(cor_px, span_deg, n, photons, wide):
    projections, angles = transmissions(cor_px, span_deg, n, photons, wide)
    ours = estimate_cor(projections, angles)
    theirs = nabu_estimate(projections, angles)
    their_error = float("inf") if theirs is None else abs(theirs - cor_px)
    print(f"\n{span_deg:.0f}° photons={photons:g} wide={wide} true {cor_px:+.2f}: "
          f"ours {ours.cor_px:+.3f} (conf {ours.confidence:.2f}), nabu {theirs}")
    assert abs(ours.cor_px - cor_px) <= 0.3
    assert abs(ours.cor_px - cor_px) <= their_error + 0.05
