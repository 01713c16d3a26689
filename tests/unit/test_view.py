"""The viewer's state, slices, scales and wire format (no sockets; the browser test has those)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from holostream.service.daemon.publisher import central_slices
from holostream.service.view.state import KEPT_SCALES, ViewState, cut, display_scale, scan_key
from holostream.service.view.wire import dumps, pack, unpack

aiohttp = pytest.importorskip("aiohttp", reason="the viewer needs aiohttp (pip install holostream[view])")


def volume_message(scan_id="s1", scan_seq=1, seq=0, shape=(6, 8, 10), offset=0.0, timestamp=100.0,
                   used=50, expected=100, final=False):
    rng = np.random.default_rng(seq)
    volume = (rng.standard_normal(shape) + offset).astype(np.float32)
    header = {"type": "volume", "scan_id": scan_id, "scan_seq": scan_seq, "seq": seq, "final": final,
              "n_projections_used": used, "n_projections_expected": expected,
              "shape": list(shape), "timestamp": timestamp, "cor_px": 1.5}
    return header, volume


def test_display_scale_is_the_1st_and_99th_percentile_of_finite_values():
    images = [np.arange(100, dtype=np.float32).reshape(10, 10), np.array([[np.nan, np.inf]], np.float32)]
    low, high = display_scale(images)
    assert (low, high) == pytest.approx((0.99, 98.01))


def test_display_scale_of_a_flat_or_empty_picture_is_still_a_range():
    low, high = display_scale([np.full((4, 4), 3.0, np.float32)])
    assert low < 3.0 < high
    low, high = display_scale([np.full((2, 2), np.nan, np.float32)])
    assert low < high


def test_cut_takes_each_axis_and_clips_the_index():
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    z, index = cut(volume, "z", 2)
    assert index == 2 and np.array_equal(z, volume[2]) and z.flags.c_contiguous
    x, index = cut(volume, "x", 99)
    assert index == 5 and np.array_equal(x, volume[:, :, 5]) and x.flags.c_contiguous
    y, index = cut(volume, "y", -3)
    assert index == 0 and np.array_equal(y, volume[:, 0])
    with pytest.raises(ValueError, match="axis 'w'"):
        cut(volume, "w", 0)


def test_a_volume_gives_the_central_cuts_the_daemon_previews():
    state = ViewState()
    header, volume = volume_message()
    assert state.take("volume", header, [volume], now=101.0)
    picture = state.picture
    for mine, published in zip(picture.cuts, central_slices(volume)):
        assert np.array_equal(mine, published)
    assert picture.indices == (3, 4, 5) and picture.shape == (6, 8, 10) and picture.volume is volume


def test_the_scale_follows_the_first_pictures_then_is_fixed_for_the_scan_and_new_for_the_next():
    state = ViewState()
    header, volume = volume_message(seq=0, used=10, offset=-20.0)
    state.take("volume", header, [volume])
    assert state.scale()[2] is False and state.scale()[1] < -15.0  # few angles: provisional
    header, volume = volume_message(seq=0, used=49, offset=-5.0)
    state.take("volume", header, [volume])
    assert state.scale()[2] is False and -10.0 < state.scale()[1] < 0.0
    header, volume = volume_message(seq=0, used=50)
    state.take("volume", header, [volume])
    first = state.scale()
    assert first[2] is True and first[:2] == display_scale(central_slices(volume))
    header, volume = volume_message(seq=1, offset=10.0)
    state.take("volume", header, [volume])
    assert state.scale() == first  # same scan: the scale does not follow the values
    header, volume = volume_message(seq=2, offset=20.0, used=100, final=True)
    state.take("volume", header, [volume])
    assert state.scale() == first
    header, volume = volume_message(scan_seq=2, seq=0, offset=10.0, used=3, expected=0)
    state.take("volume", header, [volume])
    assert state.scale()[2] is True and state.scale()[0] > 5.0  # nothing expected: fixed at once
    for n in range(KEPT_SCALES + 3):
        header, volume = volume_message(scan_seq=10 + n)
        state.take("volume", header, [volume])
    assert len(state.scales) == KEPT_SCALES and scan_key(header) in state.scales


def test_previews_status_and_other_topics():
    state = ViewState()
    header, volume = volume_message()
    preview = {**{k: v for k, v in header.items() if k != "shape"}, "type": "preview", "indices": [3, 4, 5]}
    assert state.take("preview", preview, list(central_slices(volume)))
    assert state.picture.volume is None and state.picture.shape == (6, 8, 10)
    assert state.take("status", {"state": "idle", "timestamp": 5.0}, [], now=6.0)
    assert state.status["state"] == "idle" and state.status_received == 6.0
    version = state.version
    assert not state.take("log", {}, [])
    assert state.version == version


def test_wire_round_trip_aligns_arrays_and_replaces_non_finite_numbers():
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((4, 1), np.float32)]
    message = pack({"type": "image", "odd": "é", "bad": float("nan"),
                    "arrays": [{"name": "a"}, {"name": "b"}]}, arrays)
    (n,) = np.frombuffer(message[:4], "<u4")
    assert n % 4 == 0
    meta, back = unpack(message)
    assert meta["bad"] is None and meta["odd"] == "é"
    assert [a["name"] for a in meta["arrays"]] == ["a", "b"] and meta["arrays"][1]["shape"] == [4, 1]
    for mine, theirs in zip(back, arrays):
        assert np.array_equal(mine, theirs)
    with pytest.raises(ValueError, match="runs past the end"):
        unpack(message[:-4])
    with pytest.raises(ValueError, match="describes 1 arrays, 2 given"):
        pack({"arrays": [{}]}, arrays)
    assert json.loads(dumps({"x": [float("inf"), 1.0]})) == {"x": [None, 1.0]}


def test_image_message_carries_the_chosen_slice_of_the_whole_volume():
    from holostream.service.view.server import Client, Viewer

    viewer = Viewer("tcp://127.0.0.1:1")
    try:
        header, volume = volume_message()
        viewer.state.take("volume", header, [volume], now=header["timestamp"] + 2.0)
        client = Client(ws=None)
        meta, arrays = unpack(viewer.image_message(client, now=header["timestamp"] + 3.0))
        assert [a["name"] for a in meta["arrays"]] == ["z", "y", "x"]
        assert meta["age_s"] == pytest.approx(3.0) and meta["header"]["cor_px"] == 1.5
        assert meta["scale"] == list(viewer.state.scale())
        viewer._request(client, json.dumps({"type": "slice", "axis": "y", "index": 6}))
        meta, arrays = unpack(viewer.image_message(client, now=0.0))
        assert meta["arrays"][3] == {"name": "chosen", "axis": "y", "index": 6, "shape": [6, 10]}
        assert np.array_equal(arrays[3], volume[:, 6])
        viewer._request(client, json.dumps({"type": "slice", "axis": "w"}))  # ignored, logged
        assert client.axis == "y"
    finally:
        viewer.context.term()


def test_listen_and_connect_addresses():
    from holostream.service.commands.view import connect_address, parse_listen

    assert parse_listen("127.0.0.1:5580") == ("127.0.0.1", 5580)
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    for bad in ("5580", "host:", ":80", "h:99999", "h:x"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(bad)
    assert connect_address("tcp://*:5560") == "tcp://127.0.0.1:5560"
    assert connect_address("tcp://0.0.0.0:5560") == "tcp://127.0.0.1:5560"
    assert connect_address("tcp://10.0.0.2:5560") == "tcp://10.0.0.2:5560"


def test_retune_takes_the_retunable_keys_checked():
    from holostream.service.view.server import retune_params

    assert retune_params({"cor_px": 4}) == {"cor_px": 4.0}
    assert retune_params({"filter": "hann", "cor_px": -1}) == {"filter": "hann", "cor_px": -1.0}
    assert retune_params({"delta_beta": 400, "phase": "paganin, ap**8"}) == {"delta_beta": 400.0,
                                                                             "phase": "paganin, ap**8"}
    for body, reason in (({"binning": 1}, "binning"), ({}, "JSON object"), ([1], "JSON object"),
                         ({"delta_beta": "x"}, "finite"), ({"phase": 3}, "chain text"),
                         ({"phase": "ap" * 200}, "chain text"),
                         ({"cor_px": float("nan")}, "finite"), ({"cor_px": "3"}, "finite"),
                         ({"cor_px": True}, "finite"), ({"filter": "gauss"}, "filter must be one of"),
                         ({"filter": 1}, "filter must be one of")):
        with pytest.raises(ValueError, match=reason):
            retune_params(body)
