"""Device-memory estimate of a scan: the reference workload fits a 16 GB card, absurd ones are refused."""

import numpy as np
import pytest

from holostream.workers.backend import get_backend
from holostream.workers.memory import check_fits, estimate_device_bytes, padded_side
from holostream.workers.padding import Padding

GB = 1_000_000_000


def test_padded_side_is_what_the_phase_retrieval_allocates():
    for n in (64, 100, 682, 1024):
        assert (padded_side(n), padded_side(n)) == Padding((n, n), get_backend("cpu")).padded_shape


def test_reference_workload_fits_16_gb_with_a_batch_of_64():
    est = estimate_device_bytes((2048, 2048), binning=3, angle_binning=3, batch=64)
    assert est.volume == 682 ** 3 * 4
    assert est.total < 16 * GB
    check_fits(est, 16 * GB)


def test_estimate_grows_with_batch_and_shrinks_with_binning():
    small = estimate_device_bytes((2048, 2048), 3, 3, batch=8).total
    big = estimate_device_bytes((2048, 2048), 3, 3, batch=64).total
    unbinned = estimate_device_bytes((2048, 2048), 1, 1, batch=8).total
    assert small < big and small < unbinned


def test_a_scan_that_cannot_fit_is_refused_with_the_reason():
    est = estimate_device_bytes((4096, 4096), binning=1, angle_binning=1, batch=16)
    assert est.volume == 4096 ** 3 * 4  # 275 GB of volume alone
    with pytest.raises(MemoryError, match=r"needs .* GB .*volume"):
        check_fits(est, 80 * GB)


@pytest.mark.parametrize("bad", [dict(binning=0, angle_binning=1), dict(binning=1, angle_binning=0)])
def test_bad_binning_is_an_error(bad):
    with pytest.raises(ValueError):
        estimate_device_bytes((64, 64), **bad)


def test_volume_estimate_matches_a_real_allocation():
    est = estimate_device_bytes((128, 128), binning=2, angle_binning=1)
    assert est.volume == np.zeros((64, 64, 64), np.float32).nbytes


def test_device_budget_counts_every_device_process():
    from holostream.workers.memory import DeviceBudget

    one = estimate_device_bytes((512, 512), 1, 1, batch=1).total
    DeviceBudget(available_bytes=int(one / 0.9) + 1).check((512, 512), 2, 1, 1)
    with pytest.raises(MemoryError, match="4 ×"):
        DeviceBudget(available_bytes=int(one / 0.9) + 1, copies=4).check((512, 512), 2, 1, 1)
    DeviceBudget().check((65536, 65536), 2, 1, 1)  # 0 bytes: no check


def test_half_acquisition_counts_its_wider_volume():
    # a 360° scan with the axis 20 px from the middle of 64 columns: a 104-voxel disc
    from holostream.shared.messages import ScanInfo
    from holostream.service.daemon.scan import half_acquisition
    from holostream.workers.memory import DeviceBudget

    info = ScanInfo(scan_id="half", shape=(16, 64), dtype="uint16", n_darks=1, n_flats=1, n_projections=120,
                    energy_kev=17.5, distance_m=0.05, pixel_size_m=1e-6, delta_beta=200.0,
                    angle_start_deg=0.0, angle_step_deg=3.0, cor_px=20.0)
    width = half_acquisition(info, 1)[0]
    est = estimate_device_bytes((16, 64), 1, 1, volume_width=width)
    assert width == 104 and est.volume == np.zeros((16, 104, 104), np.float32).nbytes
    narrow = estimate_device_bytes((16, 64), 1, 1).total
    budget = DeviceBudget(available_bytes=int(narrow / 0.9) + 1)
    budget.check((16, 64), 2, 1, 1)  # fits as a centred scan
    with pytest.raises(MemoryError, match="volume"):
        budget.check((16, 64), 2, 1, 1, volume_width=width)
