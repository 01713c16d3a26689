"""The live actor's arithmetic, and the ``[cluster]`` configuration.

``LiveActor`` is a plain class that Dask instantiates on a worker; here two of them are used
directly (the engine itself is exercised in tests/integration/test_cluster_live.py). Angle
split must be exact: the partial volumes of two actors that shared a scan's groups sum to
the one-process volume, whatever the batches were.
"""

from __future__ import annotations

import numpy as np
import pytest

from holostream.service.cluster.live import LiveActor, ScanSetup
from holostream.service.config import ConfigError, config_from_dict, load_config
from holostream.workers.backend import gpu_available
from test_reconstructor_batch import split_scan  # noqa: F401 - the fixture: binned groups, reference volume


def _setup(buffers, message) -> ScanSetup:
    return ScanSetup(scan=message["scan"], settings=message["settings"], half_acquisition=False,
                     reference=np.array(buffers.reference), volume_shape=tuple(buffers.volume.shape[1:]))


def _run(actor: LiveActor, key: str, buffers, messages, setup=None) -> dict:
    groups = [m["group"] for m in messages]
    return actor.run(key, groups, np.array(buffers.binned[groups]),
                     np.radians([m["angle_deg"] for m in messages]), np.array([m["weight"] for m in messages]),
                     setup)


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="cupy finds no CUDA device")])])
def test_two_actors_partials_sum_to_the_one_process_volume(split_scan, device):  # noqa: F811
    """On the GPU against the CPU reference: the fixture's volume is numpy's per-group path."""
    buffers, messages, reference, filtered = split_scan
    setup = _setup(buffers, messages[0])
    first, second = LiveActor(device, threads=1), LiveActor(device, threads=1)
    with pytest.raises(KeyError, match="never set up"):
        _run(first, "scan", buffers, messages[:1])
    a = _run(first, "scan", buffers, [messages[0], messages[2]], setup)
    b = _run(second, "scan", buffers, [messages[1]], setup)
    c = _run(second, "scan", buffers, [messages[3]])  # set up once per scan and actor
    scale = float(np.abs(filtered).max())
    for result, groups in ((a, [0, 2]), (b, [1]), (c, [3])):
        assert result["filtered"].dtype == np.float32 and result["seconds"] > 0
        np.testing.assert_allclose(result["filtered"], filtered[groups], rtol=0, atol=1e-5 * scale)
    one, two = first.collect("scan"), second.collect("scan")
    assert one["groups"] == [0, 2] and two["groups"] == [1, 3]
    assert one["weight"] + two["weight"] == pytest.approx(sum(m["weight"] for m in messages))
    assert one["center_px"] == two["center_px"] == 0.0
    total = one["volume"] + two["volume"]
    assert total.dtype == np.float32 and total.shape == reference.shape
    np.testing.assert_allclose(total, reference, rtol=0, atol=1e-5 * float(np.abs(reference).max()))
    # a collect hands over what was added since the last one, then starts afresh
    assert first.collect("scan") == {"groups": [], "weight": 0.0, "volume": None, "center_px": None}
    again = _run(first, "scan", buffers, messages[1:2])
    assert first.collect("scan")["groups"] == [1]
    np.testing.assert_allclose(again["filtered"], b["filtered"], rtol=0, atol=1e-6 * scale)
    first.forget("scan")
    assert first.collect("scan")["volume"] is None and first.info()["backend"] == device


def test_cluster_section_defaults_and_checks(tmp_path):
    cluster = load_config(None).cluster
    assert cluster.actors == 0 and cluster.address is None and cluster.tls is None
    assert cluster.threads == 1 and cluster.collect_interval_s == 1.0
    config = config_from_dict({"cluster": {"actors": 2, "address": "tls://node1:8786", "tls": str(tmp_path)}})
    assert config.cluster.actors == 2 and config.cluster.tls == str(tmp_path)
    assert config_from_dict({"cluster": {"address": "tcp://127.0.0.1:8786"}}).cluster.address
    bad = [({"cluster": {"actors": -1}}, "cluster.actors"),
           ({"cluster": {"address": "node1:8786"}}, "cluster.address"),
           ({"cluster": {"address": "tls://node1:8786"}}, "cluster.tls"),  # no certificates
           ({"cluster": {"address": "tcp://10.0.0.5:8786"}}, "cluster.address"),  # unencrypted network
           ({"cluster": {"collect_interval_s": 0}}, "cluster.collect_interval_s"),
           ({"cluster": {"actor": 2}}, "cluster.actor")]
    for tables, key in bad:
        with pytest.raises(ConfigError) as err:
            config_from_dict(tables)
        assert err.value.key == key, tables
