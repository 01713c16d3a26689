"""Pool mode keeping its transmissions (``[ingest] keep_transmissions``) for δ/β re-tuning.

The layout and the plan: pool mode gets a ``binned`` part (no ``handoff``), counted in the
scan's bytes; not when the key is off, and never for a scan at several distances. The
worker's write and the re-tune itself are in tests/integration/test_retune.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from holostream.service.config import ConfigError, config_from_dict
from holostream.service.daemon import aims
from holostream.service.daemon.halfscan import centre_deferred
from holostream.service.daemon.scanplan import plan_scan
from holostream.shared.distances import DistanceInfo
from holostream.shared.messages import ScanInfo
from holostream.shared.scanbuffers import layout
from holostream.shared.settings import ReconstructionSettings
from holostream.workers.backend import get_backend

SHAPE = (8, 12)


def _info(n_distances: int = 1) -> ScanInfo:
    entries = tuple(DistanceInfo(0.01 * (1 + d), 1e-6, 1.0, (0.0, 0.0)) for d in range(n_distances))
    return ScanInfo(scan_id="kt", shape=SHAPE, dtype="uint16", n_darks=1, n_flats=1, n_projections=20,
                    energy_kev=17.5, distance_m=0.01, pixel_size_m=1e-6, delta_beta=100.0,
                    angle_start_deg=0.0, angle_step_deg=9.0, distances=entries if n_distances > 1 else ())


def test_transmissions_alone_add_binned_without_handoff():
    parts = layout((32, 48), "uint16", 4, 10, (16, 24), 3, transmissions=True)
    assert parts["binned"].shape == (10, 16, 24) and parts["binned"].dtype == "float32"
    assert "handoff" not in parts
    assert parts["binned"] == parts["sinogram"]  # one more sinogram, no more
    split = layout((32, 48), "uint16", 4, 10, (16, 24), 1, binned=True, transmissions=True)
    assert "handoff" in split and split["binned"] == parts["binned"]


def test_pool_plan_keeps_transmissions_and_counts_them():
    settings = ReconstructionSettings(binning=2, angle_binning=2)
    kept = plan_scan(_info(), settings, ring_slots=8, n_partials=2, split=False)
    off = plan_scan(_info(), settings, ring_slots=8, n_partials=2, split=False, keep_transmissions=False)
    assert "binned" in kept.specs and "handoff" not in kept.specs
    assert "binned" not in off.specs
    n_groups, rows_b, cols_b = 10, SHAPE[0] // 2, SHAPE[1] // 2
    assert kept.specs["binned"].shape == (n_groups, rows_b, cols_b)
    assert kept.nbytes - off.nbytes == n_groups * rows_b * cols_b * 4  # the memory budget sees it
    # split mode keeps them whatever the key says: its reconstructor reads them
    split = plan_scan(_info(), settings, ring_slots=8, n_partials=1, split=True, keep_transmissions=False)
    assert "binned" in split.specs and "handoff" in split.specs


def test_scans_re_tunable_in_their_centre_only_keep_no_transmissions():
    plan = plan_scan(_info(n_distances=2), ReconstructionSettings(), ring_slots=8, n_partials=2, split=False)
    assert "binned" not in plan.specs and "beta_sinogram" in plan.specs
    # 360° without cor_px: the centre is found from the data (service/daemon/halfscan.py)
    deferred = ScanInfo.from_dict({**_info().to_dict(), "angle_step_deg": 18.0})
    assert centre_deferred(deferred)
    plan = plan_scan(deferred, ReconstructionSettings(), ring_slots=8, n_partials=2, split=False)
    assert "binned" not in plan.specs
    given = ScanInfo.from_dict({**deferred.to_dict(), "cor_px": 0.0})
    assert "binned" in plan_scan(given, ReconstructionSettings(), ring_slots=8, n_partials=2, split=False).specs


def test_config_key_defaults_on_and_can_be_turned_off():
    assert config_from_dict({}).ingest.keep_transmissions is True
    assert config_from_dict({"ingest": {"keep_transmissions": False}}).ingest.keep_transmissions is False
    with pytest.raises(ConfigError, match="keep_transmissions"):
        config_from_dict({"ingest": {"keep_transmissions": "maybe"}})


def test_delta_beta_without_transmissions_says_why():
    scan = _info().to_dict()
    settings = ReconstructionSettings().to_dict()
    sinogram = np.zeros((10, 4, 6), np.float32)
    with pytest.raises(ValueError, match="keep_transmissions"):
        aims.volume_job(sinogram, None, None, {}, scan, settings, {"delta_beta": 400.0}, 0.0, (4, 6, 6),
                        get_backend("cpu", threads=1), final=True)
