"""Book-keeping of a multi-distance scan (``service/daemon/scan.py``, docs/multi-distance.md "Live").

Frames go straight into a real :class:`OpenScan` (real shared memory, unlinked after each
test); the offsets are measured by the real ``service/daemon/distances.measure_shifts``.
"""

import os

import numpy as np
import pytest

from holostream.service.daemon.offsets import SHIFT_ANGLES
from holostream.service.daemon.scanplan import open_scan, plan_scan
from holostream.shared.distances import DistanceInfo
from holostream.shared.messages import Frame, ProtocolError, ScanInfo
from holostream.shared.scanbuffers import sweep
from holostream.shared.settings import ReconstructionSettings

SHAPE = (16, 16)


def scan_info(n_projections=4, n_distances=2, shifts=True):
    entries = tuple(DistanceInfo(0.01 * (1 + d), 1e-6 * (1 + 0.1 * d), 1.0, (0.5 * d, -0.25 * d) if shifts else None)
                    for d in range(n_distances))
    return ScanInfo(scan_id="md", shape=SHAPE, dtype="uint16", n_darks=1, n_flats=1, n_projections=n_projections,
                    energy_kev=17.5, distance_m=entries[0].distance_m, pixel_size_m=entries[0].pixel_size_m,
                    delta_beta=100.0, angle_start_deg=0.0, angle_step_deg=180.0 / n_projections,
                    distances=entries)


@pytest.fixture
def make_scan(request):
    """``make(info, angle_binning=1, ring_slots=64)``: an open scan of ``info``."""
    prefix = f"holostream_test{os.getpid()}_{abs(hash(request.node.name)) % 10**8}"
    made = []

    def make(info, angle_binning=1, ring_slots=64):
        settings = ReconstructionSettings(angle_binning=angle_binning, phase="ctf")
        scan = open_scan(len(made) + 1, info, settings, prefix, ring_slots, n_partials=1, split=False)
        made.append(scan)
        return scan

    yield make
    for scan in made:
        scan.buffers.close()
    sweep(f"{prefix}_")


def frame(kind, index, distance, value=1000, angle_deg=None):
    rng = np.random.default_rng(index + 100 * (distance or 0))
    payload = (value + rng.integers(0, 50, SHAPE)).astype(np.uint16) if kind == "projection" else \
        np.full(SHAPE, value, dtype=np.uint16)
    return Frame("md", kind, index, SHAPE, "uint16", angle_deg, memoryview(payload.tobytes()), distance)


def measured(scan):
    """The tasks that waited for the offsets, once their measurement (a thread) is done."""
    assert scan.measuring is not None
    scan.measuring.result(timeout=60)
    return scan.poll()


def fill_reference(scan):
    tasks = []
    for d in range(scan.n_distances):
        tasks += scan.add_reference(frame("dark", 0, d, value=100 + d))
        tasks += scan.add_reference(frame("flat", 0, d, value=1100 + d))
    return tasks


def test_an_angle_is_ready_once_every_distance_arrived(make_scan):
    scan = make_scan(scan_info())
    assert fill_reference(scan) == []
    for d in range(scan.n_distances):  # each distance keeps its own dark and flat
        np.testing.assert_allclose(scan.buffers.reference[d], [np.full(SHAPE, 100 + d), np.full(SHAPE, 1100 + d)])
    assert scan.add_projection(frame("projection", 1, 0)) == []  # one distance of angle 1
    assert scan.add_projection(frame("projection", 0, 1)) == []  # the other of angle 0
    (task,) = scan.add_projection(frame("projection", 0, 0))
    assert task["group"] == 0 and task["indices"] == [0]
    assert [len(s) for s in task["distance_slots"]] == [1, 1] and len(task["slots"]) == 2
    # each distance's frame is in the slot the task names for it
    for d, (slot,) in enumerate(task["distance_slots"]):
        np.testing.assert_array_equal(scan.buffers.ring[slot], frame("projection", 0, d).array())
    assert task["shifts_px"] == [[0.0, 0.0], [0.5, -0.25]]  # given on the wire: not measured
    np.testing.assert_allclose(scan.buffers.arrays["shifts"], [[0, 0], [0.5, -0.25]])


def test_the_same_index_at_another_distance_is_no_duplicate(make_scan):
    scan = make_scan(scan_info())
    scan.check_new(frame("projection", 2, 0))
    scan.add_projection(frame("projection", 2, 0))
    scan.check_new(frame("projection", 2, 1))  # another distance: fine
    with pytest.raises(ProtocolError) as err:
        scan.check_new(frame("projection", 2, 0))
    assert err.value.code == "duplicate" and "distance 0" in err.value.reason


@pytest.mark.parametrize("index, why", [(2, "out of range"), (None, "lacks distance_index")])
def test_a_frame_for_an_unknown_distance_is_refused_with_its_reason(make_scan, index, why):
    scan = make_scan(scan_info())
    with pytest.raises(ProtocolError) as err:
        scan.check_new(frame("projection", 0, index))
    assert err.value.code == "unknown_distance" and why in err.value.reason


def test_offsets_are_measured_once_the_first_groups_are_in(make_scan):
    n = SHIFT_ANGLES + 2
    scan = make_scan(scan_info(n_projections=n, shifts=False))
    assert np.isnan(scan.buffers.arrays["shifts"]).all()  # the headers say "not yet"
    assert scan.n_slots >= SHIFT_ANGLES * 2  # the ring holds every frame they are measured on
    fill_reference(scan)
    tasks = []
    for i in range(n - 1, -1, -1):  # the last angles first: complete, but held for the offsets
        for d in range(2):
            tasks += scan.add_projection(frame("projection", i, d))
        if i >= SHIFT_ANGLES:
            assert tasks == [] and scan.shifts_px is None
    assert tasks == [] and scan.measuring is not None and not scan.finished
    tasks = measured(scan)
    assert sorted(t["group"] for t in tasks) == list(range(n))
    shifts = np.array(tasks[0]["shifts_px"])
    assert shifts.shape == (2, 2) and np.isfinite(shifts).all()
    assert all(t["shifts_px"] == tasks[0]["shifts_px"] for t in tasks)  # one measurement per scan
    np.testing.assert_allclose(scan.buffers.arrays["shifts"], shifts)


def test_an_angle_missing_a_distance_is_left_out_and_reported(make_scan):
    scan = make_scan(scan_info(n_projections=4), angle_binning=2)
    fill_reference(scan)
    tasks = []
    for i in range(4):
        for d in range(2):
            if (i, d) != (3, 1):  # angle 3 never arrives at distance 1
                tasks += scan.add_projection(frame("projection", i, d))
    assert [t["group"] for t in tasks] == [0]
    free_before = len(scan.free_slots)
    (partial,) = scan.end()
    assert partial["group"] == 1 and partial["indices"] == [2]  # angle 3 left out
    assert [len(s) for s in partial["distance_slots"]] == [1, 1]
    assert len(scan.free_slots) == free_before + 1  # angle 3's frame at distance 0 freed
    for task in tasks + [partial]:
        scan.group_result({"type": "done", "group": task["group"]}, 0.0)
    done = scan.completion()
    assert done["angles_left_out"] == 1 and done["distances_missing"] == {"1": 1}
    assert done["n_projections_used"] == 3


def test_a_scan_ended_before_its_offsets_could_be_measured_uses_what_arrived(make_scan):
    scan = make_scan(scan_info(n_projections=SHIFT_ANGLES + 2, shifts=False))
    fill_reference(scan)
    tasks = []
    for i in (0, 1):
        for d in range(2):
            tasks += scan.add_projection(frame("projection", i, d))
    assert tasks == []  # 2 of the first SHIFT_ANGLES groups: still waiting
    assert scan.end() == [] and not scan.finished  # measured on those 2 meanwhile
    tasks = measured(scan)
    assert sorted(t["group"] for t in tasks) == [0, 1]
    assert np.isfinite(scan.buffers.arrays["shifts"]).all()


def test_the_ring_and_reference_are_sized_per_distance():
    info = scan_info(n_projections=40, n_distances=4, shifts=False)
    settings = ReconstructionSettings(angle_binning=2)
    plan = plan_scan(info, settings, ring_slots=8, n_partials=2, split=False)
    assert plan.n_slots == SHIFT_ANGLES * 2 * 4  # the first 8 groups of 2 angles at 4 distances
    assert plan.specs["reference"].shape == (4, 2, *SHAPE)
    assert plan.specs["beta_volume"] == plan.specs["volume"]
    assert plan.specs["shifts"].shape == (4, 2)
    given = plan_scan(scan_info(n_projections=40, n_distances=4), settings, ring_slots=8, n_partials=2,
                      split=False)
    assert given.n_slots == 8  # offsets given: one group's frames suffice
    single = plan_scan(ScanInfo(scan_id="one", shape=SHAPE, dtype="uint16", n_darks=1, n_flats=1, n_projections=40,
                                energy_kev=17.5, distance_m=0.01, pixel_size_m=1e-6, delta_beta=100.0),
                       settings, ring_slots=8, n_partials=2, split=False)
    assert single.specs["reference"].shape == (2, *SHAPE) and "beta_volume" not in single.specs
