"""Split mode's pieces: the pipeline cut in two, the shared parts, the config keys, batching.

The cut must not change the numbers: the second half run on a stack of transmissions is
the whole pipeline run group by group.
"""

from __future__ import annotations

import queue
import re
import time

import numpy as np
import pytest

from holostream.service.config import ConfigError, config_from_dict, load_config
from holostream.service.daemon.reconstructor import by_scan, gather
from holostream.service.daemon.children import probe_gpu, resolve_device, resolve_mode
from holostream.shared.scanbuffers import HANDOFF_COLUMNS, ScanBuffers, layout, sweep
from holostream.workers import phasing
from holostream.workers.backend import DeviceUnavailable, gpu_available, gpu_probe
from holostream.workers.flatfield import average_frames
from holostream.workers.pipeline import ProjectionPipeline


def _pipeline(scan, backend, phase: str) -> ProjectionPipeline:
    g = scan.geometry
    return ProjectionPipeline(
        (g.rows, g.cols), average_frames(scan.darks, backend), average_frames(scan.flats, backend),
        binning=2, chain=phasing.default_chain(phase, 3, 200.0), filter="ram-lak",
        energy_kev=g.energy_kev, distance_m=g.distance_m, pixel_size_m=g.pixel_size_m,
        delta_beta=200.0, backend=backend)


@pytest.mark.parametrize("phase", ["paganin", "ap"])
def test_filtered_from_transmission_of_a_stack_equals_per_group_process(
        single_material_scan, cpu_backend, phase):
    scan = single_material_scan
    pipe = _pipeline(scan, cpu_backend, phase)
    groups = [np.arange(10, 13), np.arange(13, 16), np.arange(50, 51), np.arange(90, 93)]
    one_by_one = np.stack([pipe.process(scan.projections[idx], idx) for idx in groups])
    stack = np.stack([pipe.transmission(scan.projections[idx], idx) for idx in groups])
    assert stack.shape == (4, 64, 64) and stack.dtype == np.float32
    batched = pipe.filtered_from_transmission(stack)
    assert batched.shape == (4, 64, 64) and batched.dtype == np.float32
    scale = float(np.abs(one_by_one).max())
    assert scale > 1e-7  # the object's δ (1e-6) times a few voxels of path, ramp-filtered
    np.testing.assert_allclose(batched, one_by_one, rtol=0, atol=1e-5 * scale)
    # one group on its own, 2-D in and out
    np.testing.assert_allclose(pipe.filtered_from_transmission(stack[2]), one_by_one[2],
                               rtol=0, atol=1e-5 * scale)
    with pytest.raises(ValueError, match="transmission stack shape"):
        pipe.filtered_from_transmission(stack[:, :32])


def test_split_layout_adds_binned_and_handoff_and_one_volume():
    pool = layout((32, 48), "uint16", 4, 10, (16, 24), 3)
    split = layout((32, 48), "uint16", 4, 10, (16, 24), 1, binned=True)
    assert "binned" not in pool and "handoff" not in pool
    assert split["binned"].shape == (10, 16, 24) and split["binned"].dtype == "float32"
    assert split["handoff"].shape == (10, HANDOFF_COLUMNS) and split["handoff"].dtype == "float64"
    assert split["volume"].shape == (1, 16, 24, 24)
    # the binned part costs one sinogram; split saves (count - 1) volumes
    assert split["binned"].nbytes == split["sinogram"].nbytes
    prefix = "holostream_0_unit_split"
    sweep(prefix)
    buffers = ScanBuffers.create(prefix, pool)
    try:
        with pytest.raises(KeyError, match="binned"):
            buffers.binned  # noqa: B018 - the property raises
        with pytest.raises(KeyError, match="handoff"):
            buffers.handoff  # noqa: B018
    finally:
        buffers.close()
        buffers.unlink()


def test_workers_mode_and_batch_are_validated():
    config = load_config(None)
    assert config.workers.mode == "auto" and config.workers.batch == 16
    config = config_from_dict({"workers": {"mode": "split", "batch": 4}})
    assert config.workers.mode == "split" and config.workers.batch == 4
    for table, key in (({"mode": "gpu"}, "workers.mode"), ({"batch": 0}, "workers.batch"),
                       ({"batch": 2.5}, "workers.batch")):
        with pytest.raises(ConfigError) as info:
            config_from_dict({"workers": table})
        assert info.value.key == key


def test_mode_resolution():
    assert resolve_mode("pool", "gpu") == "pool"
    assert resolve_mode("split", "cpu") == "split"
    assert resolve_mode("auto", "gpu") == "split"
    assert resolve_mode("auto", "cpu") == "pool"


def test_device_resolution_asks_a_child_and_says_why_there_is_no_gpu():
    # a spawned child runs the probe (a kernel and an FFT); the caller never imports cupy for it
    reason = probe_gpu()
    assert (reason is None) == gpu_available()
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("gpu" if reason is None else "cpu")
    if reason is not None:
        assert reason == gpu_probe()  # the same one-line reason as in this process
        with pytest.raises(DeviceUnavailable, match="no GPU is usable: " + re.escape(reason)):
            resolve_device("gpu")


def _group(prefix: str, g: int) -> dict:
    return {"type": "group", "group": g, "buffers": {"prefix": prefix}}


def test_gather_takes_what_is_there_up_to_a_batch_and_waits_only_milliseconds():
    # a thread queue has the interface gather uses (get_nowait, queue.Empty), without a
    # feeder thread that would make "what is there" a matter of timing
    q = queue.Queue()
    assert gather(q, 4, lambda m: None) == []
    for g in range(6):
        q.put(_group("a" if g < 4 else "b", g))
    taken = []
    first = gather(q, 4, taken.append)
    assert [m["group"] for m in first] == [0, 1, 2, 3] and taken == first
    start = time.monotonic()
    second = gather(q, 4, taken.append)
    waited = time.monotonic() - start
    assert [m["group"] for m in second] == [4, 5] and len(taken) == 6
    assert 0.004 <= waited < 0.1  # a batch that does not fill is waited for a few ms only
    for message in (_group("b", 6), {"type": "stop"}, _group("b", 7)):
        q.put(message)
    assert [m["type"] for m in gather(q, 8, lambda m: None)] == ["group", "stop"]  # stops at stop


def test_batches_never_mix_scans():
    runs = by_scan([_group("a", 0), _group("a", 1), _group("b", 0), _group("a", 2)])
    assert [[(m["buffers"]["prefix"], m["group"]) for m in run] for run in runs] == [
        [("a", 0), ("a", 1)], [("b", 0)], [("a", 2)]]
