"""Scan book-keeping (``service/daemon/scan.py``): groups, arrivals, missing angles, completion, lost groups.

No sockets and no processes: frames go straight into :class:`OpenScan`, whose shared memory
is real (created under a test prefix and unlinked after each test).
"""

import os
import queue

import numpy as np
import pytest

from holostream.service.daemon.handoff import REDO_LIMIT, Claims, again_when_binned, settle, spans
from holostream.service.daemon.reconstructor import gather
from holostream.service.daemon.scan import LOST_AFTER_S, OVERTAKEN_S
from holostream.service.daemon.scanplan import open_scan
from holostream.shared.messages import Frame, ProtocolError, ScanInfo
from holostream.shared.scanbuffers import HANDOFF_ADDING, HANDOFF_COMMITTED, HANDOFF_TAKEN, sweep
from holostream.shared.settings import ReconstructionSettings

SHAPE = (4, 6)


@pytest.fixture
def make_scan(request):
    """``make(n_projections=6, angle_binning=2, ring_slots=8, n_darks=1, n_flats=1, split=False)``."""
    prefix = f"holostream_test{os.getpid()}_{abs(hash(request.node.name)) % 10**8}"
    made = []

    def make(n_projections=6, angle_binning=2, ring_slots=8, n_darks=1, n_flats=1, split=False):
        info = ScanInfo(scan_id="s1", shape=SHAPE, dtype="uint16", n_darks=n_darks, n_flats=n_flats,
                        n_projections=n_projections, energy_kev=17.5, distance_m=0.1, pixel_size_m=1e-6,
                        delta_beta=100.0, angle_start_deg=0.0, angle_step_deg=180.0 / n_projections)
        settings = ReconstructionSettings(angle_binning=angle_binning)
        scan = open_scan(len(made) + 1, info, settings, prefix, ring_slots, n_partials=1, split=split)
        made.append(scan)
        return scan

    yield make
    for scan in made:
        scan.buffers.close()
    sweep(f"{prefix}_")


def frame(kind, index, value=1, angle_deg=None):
    payload = np.full(SHAPE, value, dtype=np.uint16)
    return Frame("s1", kind, index, SHAPE, "uint16", angle_deg, memoryview(payload.tobytes()))


def fill_reference(scan):
    tasks = scan.add_reference(frame("dark", 0, value=100))
    return tasks + scan.add_reference(frame("flat", 0, value=1100))


def receive_all(scan):
    """Reference and every projection of ``scan``; returns the tasks, one per group."""
    tasks = fill_reference(scan)
    for i in range(scan.info.n_projections):
        tasks += scan.add_projection(frame("projection", i))
    return tasks


def test_a_group_is_dispatched_once_complete_and_the_reference_is_in(make_scan):
    scan = make_scan()  # 6 projections in 3 groups of 2
    assert scan.add_projection(frame("projection", 0)) == []  # group 0 incomplete
    assert scan.add_projection(frame("projection", 1)) == []  # complete, but no dark/flat yet
    assert scan.ready == [0]
    tasks = fill_reference(scan)
    assert [t["group"] for t in tasks] == [0]
    assert sorted(tasks[0]["indices"]) == [0, 1] and len(tasks[0]["slots"]) == 2
    np.testing.assert_allclose(scan.buffers.reference[0], 100)
    np.testing.assert_allclose(scan.buffers.reference[1], 1100)
    assert tasks[0]["angle_deg"] == pytest.approx(15.0)  # mean of 0° and 30°
    assert [t["group"] for t in scan.add_projection(frame("projection", 5))
            + scan.add_projection(frame("projection", 4))] == [2]


def test_frames_are_copied_once_into_their_slots(make_scan):
    scan = make_scan()
    fill_reference(scan)
    scan.add_projection(frame("projection", 2, value=7))
    (task,) = scan.add_projection(frame("projection", 3, value=9))
    values = sorted(int(scan.buffers.ring[s][0, 0]) for s in task["slots"])
    assert values == [7, 9]


def test_a_duplicate_or_misshapen_frame_is_refused(make_scan):
    scan = make_scan()
    scan.add_projection(frame("projection", 0))
    with pytest.raises(ProtocolError) as err:
        scan.check_new(frame("projection", 0))
    assert err.value.code == "duplicate"
    bad = Frame("s1", "projection", 1, (SHAPE[0], SHAPE[1] + 1), "uint16", None, memoryview(bytes(56)))
    with pytest.raises(ProtocolError):
        scan.check_new(bad)


def test_a_full_ring_refuses_projections_until_a_group_is_done(make_scan):
    scan = make_scan(ring_slots=2)
    fill_reference(scan)
    (task,) = scan.add_projection(frame("projection", 0)) + scan.add_projection(frame("projection", 1))
    assert scan.add_projection(frame("projection", 2)) is None  # no slot: the caller counts a drop
    assert scan.ring_fill() == 1.0 and scan.holds_slots()
    assert scan.group_result({"type": "done", "group": task["group"]}, now=0.0)
    assert scan.ring_fill() == 0.0 and scan.groups_done == [0] and scan.n_projections_used == 2
    assert scan.add_projection(frame("projection", 2)) == []


def test_end_dispatches_partial_groups_and_completion_names_the_arrived_ones(make_scan):
    scan = make_scan()
    fill_reference(scan)
    tasks = scan.add_projection(frame("projection", 0)) + scan.add_projection(frame("projection", 1))
    scan.add_projection(frame("projection", 4))  # group 2 lacks projection 5; group 1 never came
    tasks += scan.end()
    assert [t["group"] for t in tasks] == [0, 2]
    assert tasks[1]["indices"] == [4] and tasks[1]["angle_deg"] == pytest.approx(120.0)
    assert not scan.finished  # both in flight
    for t in tasks:
        scan.group_result({"type": "done", "group": t["group"]}, now=0.0)
    assert scan.finished
    done = scan.completion()
    assert done["groups_arrived"] == [0, 2] and done["n_projections_used"] == 3
    assert not done["aborted"] and done["error"] is None


def test_a_scan_without_any_flat_ends_aborted_with_the_reason(make_scan):
    scan = make_scan()
    scan.add_reference(frame("dark", 0))
    scan.add_projection(frame("projection", 0))
    assert scan.end() == []
    assert scan.aborted and scan.finished and "no flat" in scan.completion()["error"]
    assert scan.ring_fill() == 0.0  # the held projection's slot is free again


def test_a_failed_group_is_not_counted_as_arrived(make_scan):
    scan = make_scan()
    fill_reference(scan)
    (task,) = scan.add_projection(frame("projection", 0)) + scan.add_projection(frame("projection", 1))
    scan.end()
    assert not scan.group_result({"type": "failed", "group": task["group"]}, now=0.0)
    assert scan.finished and scan.completion()["groups_arrived"] == []


def test_a_group_whose_worker_died_is_given_up_after_the_limit(make_scan):
    scan = make_scan()
    fill_reference(scan)
    (task,) = scan.add_projection(frame("projection", 0)) + scan.add_projection(frame("projection", 1))
    assert scan.reclaim_lost(now=0.0, queue_empty=False, limit_s=LOST_AFTER_S) == []  # maybe still queued
    assert scan.reclaim_lost(now=1.0, queue_empty=True, limit_s=LOST_AFTER_S) == []  # taken at t=1
    assert scan.reclaim_lost(now=LOST_AFTER_S, queue_empty=True, limit_s=LOST_AFTER_S) == []
    assert scan.reclaim_lost(now=LOST_AFTER_S + 2, queue_empty=True, limit_s=LOST_AFTER_S) == [task["group"]]
    assert not scan.in_flight and scan.ring_fill() == 0.0


def test_split_mode_groups_wait_for_the_reconstructor_and_are_sent_again_when_it_dies(make_scan):
    scan = make_scan(split=True, n_projections=10, ring_slots=10)
    tasks = receive_all(scan)
    groups = [t["group"] for t in tasks]
    assert len(groups) == 5
    for w, g in enumerate(groups[:4]):  # the workers binned them: slots free, groups still in flight
        assert not scan.group_result({"type": "binned", "group": g, "worker": w}, now=10.0)
    committed, held, adding, queued, raw = groups
    handoff = scan.buffers.handoff
    handoff[committed, 0] = HANDOFF_COMMITTED  # in volume[0], its report lost
    handoff[held, 0] = HANDOFF_TAKEN  # in the dead reconstructor's hands
    handoff[adding, 0] = HANDOFF_ADDING  # killed while adding it to volume[0]
    settled = settle(scan, now=20.0)
    assert settled.committed == [committed] and settled.held == [held] and settled.later == [raw]
    assert list(settled.lost) == [adding] and "part of it may be there" in settled.lost[adding]
    assert sorted(scan.in_flight) == [committed, held, queued, raw]  # the caller reports `committed` done
    # a still-queued group goes again too: the claim drops whichever copy comes second
    again = {m["group"]: m for m in settled.again}
    assert sorted(again) == [held, queued]
    message = again[held]
    task = tasks[1]
    assert message["redone"] and message["type"] == "group" and message["worker"] == 1
    assert message["n_projections"] == 2 and message["angle_deg"] == task["angle_deg"]
    assert message["prefix"] == task["buffers"]["prefix"] and "slots" not in message
    assert scan.in_flight[held].binned_at == 20.0  # the lost-group clock starts again
    # the raw group goes again once its worker has binned it (the dead one may have taken it)
    assert again_when_binned(scan, raw, 30.0) is None  # not binned yet
    scan.group_result({"type": "binned", "group": raw, "worker": 0}, now=30.0)
    assert again_when_binned(scan, raw, 30.0)["group"] == raw
    assert again_when_binned(scan, raw, 31.0) is None  # once


def test_a_group_held_by_reconstructors_that_keep_dying_is_lost(make_scan):
    scan = make_scan(split=True)
    (g, *_) = [t["group"] for t in receive_all(scan)]
    scan.group_result({"type": "binned", "group": g, "worker": 0}, now=0.0)
    for death in range(1, REDO_LIMIT):
        scan.buffers.handoff[g, 0] = HANDOFF_TAKEN
        assert [m["group"] for m in settle(scan, now=float(death)).again] == [g]
    scan.buffers.handoff[g, 0] = HANDOFF_TAKEN
    settled = settle(scan, now=10.0)
    assert not settled.again and settled.lost == {g: f"held by {REDO_LIMIT} reconstructors that died"}
    assert g not in scan.in_flight


def test_claims_let_one_copy_of_a_group_through(make_scan):
    scan = make_scan(split=True)
    handoff = scan.buffers.handoff
    handoff[0, 0] = HANDOFF_TAKEN  # by a dead predecessor: no claim of this process
    handoff[1, 0] = HANDOFF_COMMITTED
    handoff[2, 0] = HANDOFF_ADDING
    claims = Claims()
    assert claims.claim("a", handoff, 0) and not claims.claim("a", handoff, 0)
    assert not claims.claim("a", handoff, 1) and not claims.claim("a", handoff, 2)
    assert handoff[0, 0] == HANDOFF_TAKEN and handoff[2, 0] == HANDOFF_ADDING
    assert claims.claim("b", handoff, 0)  # another scan, another set
    assert claims.has("a", 0) and claims.has("b", 0) and not claims.has("a", 1)
    assert spans([9, 3, 4, 5, 11, 12]) == "3-5, 9, 11-12" and spans([]) == "none"  # for the log
    # the reconstructor's gather leaves a duplicate out of its batch
    q = queue.Queue()  # gather's interface (get_nowait, queue.Empty) without a feeder thread
    for g in (0, 1, 2, 0):  # in another scan "c": 1 and 2 are in the volume, 0 comes twice
        q.put({"type": "group", "group": g})
    batch = gather(q, 4, lambda m: claims.claim("c", handoff, m["group"]))
    assert [m["group"] for m in batch] == [0]


def test_split_mode_backlog_is_never_lost_by_waiting(make_scan):
    scan = make_scan(split=True)
    tasks = receive_all(scan)
    first, backlog, later = (t["group"] for t in tasks)
    scan.group_result({"type": "binned", "group": first}, now=0.0)
    scan.group_result({"type": "binned", "group": backlog}, now=2 * OVERTAKEN_S)
    scan.group_result({"type": "binned", "group": later}, now=2 * OVERTAKEN_S)
    scan.buffers.handoff[later, 0] = HANDOFF_TAKEN  # the reconstructor took `later`, so `first` too
    far = 10 * LOST_AFTER_S
    assert scan.reclaim_lost(far, queue_empty=True, limit_s=LOST_AFTER_S) == []
    assert scan.reclaim_lost(far, queue_empty=True, limit_s=LOST_AFTER_S) == []  # `first` overtaken
    assert sorted(scan.reclaim_lost(far + LOST_AFTER_S + 1, True, LOST_AFTER_S)) == sorted([first, later])
    assert list(scan.in_flight) == [backlog]
