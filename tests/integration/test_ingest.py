"""The ingest process on a real socket, with the test acting as detector and as the workers."""

from __future__ import annotations

import json
import os
import queue
import time

import numpy as np
import pytest
import zmq

from holostream.service.daemon.channels import make_channels, spawn_context
from holostream.service.config import IngestConfig
from holostream.service.daemon.ingest import run_ingest
from holostream.shared.messages import ScanInfo, encode_frame, encode_scan_end, encode_scan_start
from holostream.shared.scanbuffers import ScanBuffers, sweep
from holostream.shared.settings import ReconstructionSettings
from holostream.workers.pipeline import plan_groups

pytestmark = pytest.mark.integration


class IngestUnderTest:
    """run_ingest in a spawned process, connected to a PUSH socket the test binds."""

    def __init__(self, tmp_id: str, **config):
        self.push = zmq.Context.instance().socket(zmq.PUSH)  # shared context (live_service.client_context)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.setsockopt(zmq.SNDHWM, config.pop("sndhwm", 1000))
        port = self.push.bind_to_random_port("tcp://127.0.0.1")
        self.prefix = f"holostream_{os.getpid()}{tmp_id}"
        self.config = IngestConfig(address=f"tcp://127.0.0.1:{port}", mode="connect", **config)
        self.channels = make_channels()
        self.proc = spawn_context().Process(
            target=run_ingest, args=(self.config, ReconstructionSettings(), 2, self.prefix, self.channels))
        self.proc.start()
        self.stats: dict = {}
        self.events: list[dict] = []

    def send(self, parts):
        self.push.send_multipart(parts, copy=False)

    def try_send(self, parts, timeout_s: float) -> bool:
        """Send unless the socket stays blocked for ``timeout_s`` (back-pressure)."""
        if not self.push.poll(int(timeout_s * 1000), zmq.POLLOUT):
            return False
        self.push.send_multipart(parts, copy=False)
        return True

    def event(self, kind: str, timeout_s: float = 15.0, where=lambda e: True) -> dict:
        """Next event of ``kind`` (stats are remembered on the way)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                e = self.channels.events.get(timeout=0.1)
            except queue.Empty:
                continue
            self.events.append(e)
            if e["type"] == "stats":
                self.stats = e
            if e["type"] == kind and where(e):
                return e
        raise TimeoutError(f"no {kind} event within {timeout_s} s")

    def task(self, timeout_s: float = 15.0) -> dict:
        return self.channels.tasks.get(timeout=timeout_s)

    def done(self, task: dict) -> None:
        self.channels.done.put({"type": "done", "scan_seq": task["scan_seq"], "group": task["group"],
                                "slots": task["slots"], "worker": 0, "error": None, "seconds": 0.0})

    def close(self):
        self.channels.stop.set()
        self.proc.join(15)
        exitcode = self.proc.exitcode
        if exitcode is None:
            self.proc.kill()
        self.push.close(linger=0)
        sweep(self.prefix)
        assert exitcode == 0


@pytest.fixture
def make_ingest(request):
    made = []

    def make(**config):
        ingest = IngestUnderTest(f"_{len(made)}{abs(hash(request.node.name)) % 1000}", **config)
        made.append(ingest)
        return ingest
    yield make
    for ingest in made:
        ingest.close()


def scan_info(n_projections=12, shape=(16, 24), **changes) -> ScanInfo:
    fields = dict(scan_id="s1", shape=shape, dtype="uint16", n_darks=2, n_flats=2,
                  n_projections=n_projections, energy_kev=17.5, distance_m=0.05, pixel_size_m=1e-6,
                  delta_beta=200.0, angle_start_deg=0.0, angle_step_deg=180.0 / n_projections)
    fields.update(changes)
    return ScanInfo(**fields)


def frames_of(info: ScanInfo, seed=0):
    rng = np.random.default_rng(seed)
    make = lambda n: rng.integers(0, 60000, (n, *info.shape), dtype=np.uint16)  # noqa: E731
    return make(info.n_darks), make(info.n_flats), make(info.n_projections)


def check_task(task, info, settings_binning, darks, flats, projections, buffers_cache):
    """What a worker would read: the right frames in the slots, the reference means, angle, weight."""
    key = task["buffers"]["prefix"]
    if key not in buffers_cache:
        buffers_cache[key] = ScanBuffers.attach(task["buffers"])
    buffers = buffers_cache[key]
    for slot, index in zip(task["slots"], task["indices"]):
        np.testing.assert_array_equal(buffers.ring[slot], projections[index])
    np.testing.assert_allclose(buffers.reference[0], darks.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(buffers.reference[1], flats.mean(axis=0), rtol=1e-6)
    assert ScanInfo.from_dict(task["scan"]).shape == info.shape
    assert task["settings"]["binning"] == settings_binning


def test_groups_wait_for_references_then_dispatch_with_the_sent_frames(make_ingest):
    ing = make_ingest(ring_slots=16)
    info = scan_info(reconstruction={"angle_binning": 3})
    darks, flats, projections = frames_of(info)
    ing.send(encode_scan_start(info))
    opened = ing.event("scan_open")
    groups, group_angles, weights = plan_groups(12, 3, info.all_angles_deg())
    np.testing.assert_allclose(opened["weights"], weights)
    assert opened["buffers"]["parts"]["volume"]["shape"] == [2, 16, 24, 24]
    for i in (5, 0, 3, 4, 1, 2, 11, 10, 9, 8, 7, 6):  # projections first, out of order
        ing.send(encode_frame("s1", "projection", i, projections[i]))
    with pytest.raises(queue.Empty):
        ing.task(timeout_s=0.5)  # nothing may go out before darks and flats
    for kind, stack in (("dark", darks), ("flat", flats)):
        for i, image in enumerate(stack):
            ing.send(encode_frame("s1", kind, i, image))
    cache: dict = {}
    seen = {}
    for _ in range(4):
        task = ing.task()
        check_task(task, info, 1, darks, flats, projections, cache)
        assert sorted(task["indices"]) == list(groups[task["group"]])
        assert task["angle_deg"] == pytest.approx(group_angles[task["group"]])
        assert task["weight"] == pytest.approx(weights[task["group"]])
        seen[task["group"]] = task
    ing.send(encode_scan_end("s1"))
    assert sorted(seen) == [0, 1, 2, 3]
    for task in seen.values():
        ing.done(task)
    complete = ing.event("scan_complete")
    assert complete["groups_arrived"] == [0, 1, 2, 3] and complete["n_projections_used"] == 12
    assert not complete["aborted"]
    stats = ing.event("stats")
    assert stats["received"] == 1 + 12 + 4 + 1 and stats["rejected"] == 0 and stats["dropped"] == 0
    for b in cache.values():
        b.close()


def test_full_ring_blocks_the_sender_and_loses_nothing(make_ingest):
    # memory_budget_gb: the scan reserves 8.6 GB (two 1024³ partial volumes) of which only the ring is used here
    ing = make_ingest(ring_slots=2, rcvhwm=1, sndhwm=1, memory_budget_gb=10.0)
    n = 40
    info = scan_info(n_projections=n, shape=(1024, 1024), n_darks=1, n_flats=1)  # 80 MB: beyond any socket buffers
    darks, flats, projections = frames_of(info)
    ing.send(encode_scan_start(info))
    ing.send(encode_frame("s1", "dark", 0, darks[0]))
    ing.send(encode_frame("s1", "flat", 0, flats[0]))
    sent = 0
    # nobody frees slots: the sender must be held back long before the end
    while sent < n and ing.try_send(encode_frame("s1", "projection", sent, projections[sent]), 1.0):
        sent += 1
    ing.event("stats", where=lambda e: e["state"] == "blocked" and e["ring_fill"] == 1.0)
    assert sent < n
    cache: dict = {}
    got = []
    while len(got) < n:
        while sent < n and ing.try_send(encode_frame("s1", "projection", sent, projections[sent]), 0.01):
            sent += 1
        task = ing.task()
        check_task(task, info, 1, darks, flats, projections, cache)
        got.extend(task["indices"])
        ing.done(task)
    ing.send(encode_scan_end("s1"))
    complete = ing.event("scan_complete")
    assert sorted(got) == list(range(n)) and complete["n_projections_used"] == n
    assert ing.event("stats")["dropped"] == 0
    for b in cache.values():
        b.close()


def test_ring_full_of_projections_waiting_for_flats_drops_instead_of_deadlocking(make_ingest):
    ing = make_ingest(ring_slots=2)
    info = scan_info(n_projections=6)
    darks, flats, projections = frames_of(info)
    ing.send(encode_scan_start(info))
    for i in range(6):
        ing.send(encode_frame("s1", "projection", i, projections[i]))
    for kind, stack in (("dark", darks), ("flat", flats)):
        for i, image in enumerate(stack):
            ing.send(encode_frame("s1", kind, i, image))
    cache: dict = {}
    tasks = [ing.task(), ing.task()]
    for task in tasks:
        check_task(task, info, 1, darks, flats, projections, cache)
        ing.done(task)
    assert sorted(i for t in tasks for i in t["indices"]) == [0, 1]
    ing.send(encode_scan_end("s1"))
    complete = ing.event("scan_complete")
    assert complete["n_projections_used"] == 2
    assert ing.event("stats")["dropped"] == 4
    for b in cache.values():
        b.close()


def test_malformed_messages_are_counted_by_reason_and_change_nothing(make_ingest):
    ing = make_ingest(ring_slots=8)
    info = scan_info(n_projections=3)
    darks, flats, projections = frames_of(info)
    good = encode_frame("s1", "projection", 0, projections[0])
    ing.send(good)  # before scan_start: unknown scan
    ing.send([b"{not json"])
    ing.send([json.dumps({"type": "scan_start", **scan_info(reconstruction={"colour": 1}).to_dict()}).encode()])
    ing.send(encode_scan_start(info))
    ing.send([good[0], bytes(good[1])[:-2]])  # 2 bytes short
    ing.send(encode_frame("s1", "projection", 0, projections[0][:, :8].copy()))  # wrong shape
    ing.send(encode_frame("s1", "projection", 3, projections[0]))  # index out of range
    ing.send(encode_frame("other", "projection", 0, projections[0]))  # unknown scan
    for i in range(3):
        ing.send(encode_frame("s1", "projection", i, projections[i]))
    ing.send(encode_frame("s1", "projection", 1, projections[1]))  # duplicate
    for kind, stack in (("dark", darks), ("flat", flats)):
        for i, image in enumerate(stack):
            ing.send(encode_frame("s1", kind, i, image))
    cache: dict = {}
    for _ in range(3):
        task = ing.task()
        check_task(task, info, 1, darks, flats, projections, cache)
        ing.done(task)
    ing.send(encode_scan_end("s1"))
    assert ing.event("scan_complete")["n_projections_used"] == 3
    reasons = [e["reason"] for e in ing.events if e["type"] == "rejected"]
    assert any("colour" in r for r in reasons) and any("2 bytes short" in r for r in reasons)
    stats = ing.event("stats")
    assert stats["rejected_by_reason"] == {"unknown_scan": 2, "bad_json": 1, "settings": 1,
                                           "payload_size": 1, "format": 1, "index_range": 1,
                                           "duplicate": 1}
    for b in cache.values():
        b.close()


def test_abort_and_new_scan_start_close_the_open_scan(make_ingest):
    ing = make_ingest(ring_slots=8)
    first = scan_info(n_projections=4, scan_id="first")
    darks, flats, projections = frames_of(first)
    ing.send(encode_scan_start(first))
    for kind, stack in (("dark", darks), ("flat", flats)):
        for i, image in enumerate(stack):
            ing.send(encode_frame("first", kind, i, image))
    ing.send(encode_frame("first", "projection", 0, projections[0]))
    task = ing.task()
    second = scan_info(n_projections=4, scan_id="second")
    ing.send(encode_scan_start(second))  # ends "first" as if scan_end had come
    ing.done(task)
    complete = ing.event("scan_complete")
    assert complete["scan_id"] == "first" and complete["groups_arrived"] == [0] and not complete["aborted"]
    opened = ing.event("scan_open")
    assert opened["scan"]["scan_id"] == "second" and opened["scan_seq"] == complete["scan_seq"] + 1
    ing.send([json.dumps({"type": "scan_abort", "scan_id": "second"}).encode()])
    complete = ing.event("scan_complete")
    assert complete["scan_id"] == "second" and complete["aborted"] and complete["groups_arrived"] == []
    ing.channels.commands.put({"type": "release", "scan_seq": complete["scan_seq"]})
    assert ing.event("stats")["state"] == "idle"


def test_commands_change_settings_for_the_next_scan_and_abort_it(make_ingest):
    ing = make_ingest(ring_slots=8)
    ing.channels.commands.put({"type": "settings", "settings": {"binning": 2}})
    info = scan_info(n_projections=4, scan_id="binned")
    darks, flats, projections = frames_of(info)
    ing.send(encode_scan_start(info))
    opened = ing.event("scan_open")
    assert opened["settings"]["binning"] == 2
    assert opened["buffers"]["parts"]["volume"]["shape"] == [2, 8, 12, 12]
    for kind, stack in (("dark", darks), ("flat", flats)):
        for i, image in enumerate(stack):
            ing.send(encode_frame("binned", kind, i, image))
    ing.send(encode_frame("binned", "projection", 2, projections[2]))
    cache: dict = {}
    task = ing.task()
    check_task(task, info, 2, darks, flats, projections, cache)
    ing.send(encode_frame("binned", "projection", 3, projections[3]))
    ing.event("stats", where=lambda e: e["in_flight"] == 2)
    ing.channels.commands.put({"type": "abort"})
    ing.event("stats", where=lambda e: e["state"] == "finishing")  # waits for the groups in flight
    # read once the aborted scan is complete: no scan is open for it any more
    ing.send(encode_frame("binned", "projection", 0, projections[0]))
    second = ing.task()
    ing.done(task)
    ing.done(second)
    complete = ing.event("scan_complete")
    assert complete["aborted"] and complete["groups_arrived"] == [2, 3]
    stats = ing.event("stats", where=lambda e: e["rejected"] > 0)
    assert stats["rejected_by_reason"] == {"unknown_scan": 1} and stats["state"] == "idle"
    for b in cache.values():
        b.close()


def test_angles_sent_with_the_frames_reach_the_tasks(make_ingest):
    ing = make_ingest(ring_slots=8)
    info = scan_info(n_projections=4, angle_start_deg=None, angle_step_deg=None,
                     reconstruction={"angle_binning": 2})
    darks, flats, projections = frames_of(info)
    measured_deg = [0.3, 44.9, 90.2, 135.1]  # what the rotation stage reported
    ing.send(encode_scan_start(info))
    for kind, stack in (("dark", darks), ("flat", flats)):
        for i, image in enumerate(stack):
            ing.send(encode_frame("s1", kind, i, image))
    ing.send(encode_frame("s1", "projection", 0, projections[0]))  # no angle: rejected
    for i in (3, 2, 1, 0):
        ing.send(encode_frame("s1", "projection", i, projections[i], angle_deg=measured_deg[i]))
    cache: dict = {}
    tasks = sorted((ing.task(), ing.task()), key=lambda t: t["group"])
    for task, members in zip(tasks, ([0, 1], [2, 3])):
        check_task(task, info, 1, darks, flats, projections, cache)
        assert sorted(task["indices"]) == members
        assert task["angle_deg"] == pytest.approx(np.mean([measured_deg[i] for i in members]))
        ing.done(task)
    ing.send(encode_scan_end("s1"))
    assert ing.event("scan_complete")["n_projections_used"] == 4
    assert ing.event("stats", where=lambda e: e["rejected"] > 0)["rejected_by_reason"] == {"missing_angle": 1}
    for b in cache.values():
        b.close()


def test_group_of_a_dead_worker_is_reclaimed_and_the_scan_completes(ingest_in_process):
    """In-process Ingest: one task is taken by a worker that never answers."""
    ingest, channels = ingest_in_process()
    info = scan_info(n_projections=2)
    darks, flats, projections = frames_of(info)
    ingest.handle(encode_scan_start(info))
    for kind, stack in (("dark", darks), ("flat", flats)):
        for i, image in enumerate(stack):
            ingest.handle(encode_frame("s1", kind, i, image))
    for i in range(2):
        ingest.handle(encode_frame("s1", "projection", i, projections[i]))
    taken_by_dead_worker = channels.tasks.get(timeout=5)
    answered = channels.tasks.get(timeout=5)
    ingest.on_done({"type": "done", "scan_seq": answered["scan_seq"], "group": answered["group"],
                    "slots": answered["slots"], "seconds": 0.01})
    ingest.reclaim_lost(time.monotonic() + 1.0)  # not yet: it may just be slow
    assert taken_by_dead_worker["group"] in ingest.scan.in_flight
    ingest.handle(encode_scan_end("s1"))
    ingest.reclaim_lost(time.monotonic() + 3600.0)
    assert ingest.scan is None  # complete: nothing left to wait for
    events = []
    while not any(e["type"] == "scan_complete" for e in events):
        events.append(channels.events.get(timeout=5))
    complete = events[-1]
    assert complete["groups_arrived"] == [answered["group"]] and not complete["aborted"]
    assert ingest.stats(time.monotonic())["lost_groups"] == 1


def test_scan_that_cannot_fit_the_device_is_refused_before_any_frame(ingest_in_process):
    """In-process Ingest with a 1 GB device budget: a 4096² scan is refused, a small one opens."""
    from holostream.workers.memory import DeviceBudget

    ingest, channels = ingest_in_process(device_budget=DeviceBudget(available_bytes=1_000_000_000, batch=16))
    ingest.handle(encode_scan_start(scan_info(scan_id="huge", shape=(4096, 4096))))
    assert ingest.scan is None and ingest.rejects.counts["no_memory"] == 1
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(ingest.prefix)]  # nothing allocated
    rejection = next(e for e in iter(lambda: channels.events.get(timeout=5), None)
                     if e["type"] == "rejected")
    assert "does not fit the device" in rejection["reason"] and "volume" in rejection["reason"]
    ingest.handle(encode_scan_start(scan_info(scan_id="small")))
    assert ingest.scan is not None and ingest.scan.info.scan_id == "small"


def test_a_chain_with_an_unknown_step_is_refused_at_scan_start(ingest_in_process):
    """The settings check reads the chain's syntax only; ingest parses its steps before any frame."""
    ingest, channels = ingest_in_process()
    ingest.handle(encode_scan_start(scan_info(scan_id="wobbly", reconstruction={"phase": "paganin, wobble**2"})))
    assert ingest.scan is None and ingest.rejects.counts["settings"] == 1
    rejection = next(e for e in iter(lambda: channels.events.get(timeout=5), None) if e["type"] == "rejected")
    assert "phase chain" in rejection["reason"] and "wobble" in rejection["reason"]
