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


# ---- the phasing part against what the phase retrieval really holds (numpy, tracemalloc) ----

def _peak_waves(retrieve, intensities, wave_bytes: int) -> float:
    """Peak of newly allocated bytes during one call, in padded complex64 arrays per projection."""
    import tracemalloc

    retrieve(intensities)  # plans, caches and the first call's one-off arrays
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        retrieve(intensities)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return (peak - base) / wave_bytes / intensities.shape[0]


SINGLE_CHAINS = ["paganin", "ctf", "paganin, ap**4(delta_beta=200)", "paganin, raar**4(delta_beta=200)",
                 "paganin, newton**2(alpha_high=3), ap**2(delta_beta=200)"]


@pytest.mark.parametrize("chain", SINGLE_CHAINS)
def test_phasing_estimate_bounds_the_measured_peak_at_one_distance(chain):
    from holostream.workers.memory import waves_per_projection
    from holostream.workers.phasing import PhaseRetrieval, parse_chain

    n, batch = 96, 3
    steps = parse_chain(chain)
    retrieval = PhaseRetrieval(steps, (n, n), 1e-6, 0.2, 17.5, 200.0, get_backend("cpu", 1), "edge")
    intensities = (1 + 0.01 * np.random.default_rng(0).standard_normal((batch, n, n))).astype(np.float32)
    measured = _peak_waves(retrieval, intensities, padded_side(n) ** 2 * 8)
    model = waves_per_projection([s.name for s in steps])
    # never under (a scan accepted that cannot run), not far over (a scan refused that fits)
    assert measured <= model <= 1.5 * measured + 0.5, (measured, model)


@pytest.mark.parametrize("n_distances", [1, 2, 4])
@pytest.mark.parametrize("chain", ["paganin", "ctf", "ctf_mixed", "ctf, ap**3(delta_beta=200)",
                                   "ctf, raar**3(delta_beta=200)"])
def test_phasing_estimate_bounds_the_measured_peak_at_several_distances(chain, n_distances):
    from holostream.workers.memory import waves_per_projection
    from holostream.workers.multiphasing import MultiDistancePhaseRetrieval
    from holostream.workers.phasing import parse_chain

    n, batch = 128, 2  # below ~100² fixed-size temporaries add up to one more wave
    steps = parse_chain(chain)
    distances_m = [0.01 * (1 + 0.3 * k) for k in range(n_distances)]
    retrieval = MultiDistancePhaseRetrieval(steps, (n, n), 1e-7, distances_m, 17.5, 200.0,
                                            get_backend("cpu", 1))
    intensities = (1 + 0.01 * np.random.default_rng(0).standard_normal((batch, n_distances, n, n))
                   ).astype(np.float32)
    measured = _peak_waves(retrieval, intensities, padded_side(n) ** 2 * 8)
    model = waves_per_projection([s.name for s in steps], n_distances)
    assert measured <= model <= 1.5 * measured + 0.5, (measured, model)


def test_waves_model_knows_every_step_and_refuses_what_it_does_not():
    from holostream.workers.memory import STEP_WAVES, waves_per_projection
    from holostream.workers.phasing import STEP_PARAMS

    assert set(STEP_WAVES) == set(STEP_PARAMS)  # a new step needs its measured count here
    assert waves_per_projection([]) == 0.0  # no phase retrieval: no padded waves
    assert waves_per_projection(["paganin", "raar", "ap"]) == sum(STEP_WAVES["raar"])  # the largest
    with pytest.raises(ValueError, match="no memory model"):
        waves_per_projection(["gerchberg"])
    with pytest.raises(ValueError, match="n_distances"):
        waves_per_projection(["ctf"], 0)


def test_device_budget_counts_the_chain_and_the_distances():
    from holostream.workers.memory import DeviceBudget

    raw = (512, 512)
    one = estimate_device_bytes(raw, 1, 1, batch=4)  # the "ap" chain, one distance
    budget = DeviceBudget(available_bytes=int(one.total / 0.9) + 1, batch=4)
    budget.check(raw, 2, 1, 1)
    budget.check(raw, 2, 1, 1, step_names=["ctf"])  # fewer waves than AP
    with pytest.raises(MemoryError, match="phasing"):
        budget.check(raw, 2, 1, 1, step_names=["paganin", "raar"])
    with pytest.raises(MemoryError):
        budget.check(raw, 2, 1, 1, step_names=["ctf"], n_distances=4)
    four = estimate_device_bytes(raw, 1, 1, batch=4, n_distances=4)
    assert four.raw_frames == 4 * one.raw_frames and four.references == 4 * one.references
