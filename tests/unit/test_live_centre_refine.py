"""The live centre estimate: refined as groups arrive, and from all of them for the final volume."""

import numpy as np

from holostream.service.daemon.centre import LiveCentre


def _sinogram(n_groups: int, cols: int = 64, axis_px: float = 3.0):
    """Projections of two off-axis points over 360°, as a ramp-filtered sinogram would hold them."""
    angles = np.linspace(0, 2 * np.pi, n_groups, endpoint=False)
    x = np.arange(cols) - (cols - 1) / 2 - axis_px
    sino = np.zeros((n_groups, 4, cols), np.float32)
    for i, a in enumerate(angles):
        for r, phi in ((12.0, 0.3), (7.0, 2.0)):
            sino[i] += np.exp(-((x - r * np.cos(a + phi)) ** 2) / 2.0).astype(np.float32)
    return sino, {g: (float(a), 1.0, 1) for g, a in enumerate(angles)}


def test_final_refine_uses_every_group_live_ones_wait_for_growth():
    sino, groups = _sinogram(120)
    centre = LiveCentre(64, 1)
    first = {g: groups[g] for g in range(100)}
    centre.refine(sino, first, "s")
    assert centre.estimated_at == 100 and centre.source == "estimated"
    more = {g: groups[g] for g in range(105)}  # 5 % more: not yet for a live volume
    centre.refine(sino, more, "s")
    assert centre.estimated_at == 100
    centre.refine(sino, more, "s", final=True)  # the final volume: from all that arrived
    assert centre.estimated_at == 105
    centre.refine(sino, more, "s", final=True)  # nothing new: no second estimate
    assert centre.estimated_at == 105
    assert abs(centre.cor_px - 3.0) < 0.3
