"""Multi-distance scan_start and frames on the wire (shared/distances.py via shared/messages.py)."""

import json

import numpy as np
import pytest

from holostream.shared.messages import (Frame, ProtocolError, ScanInfo, ScanStart, encode_frame,
                                        encode_scan_start, parse_message)

BASE = {"type": "scan_start", "scan_id": "md-1", "shape": [4, 6], "dtype": "uint16", "n_darks": 2,
        "n_flats": 2, "n_projections": 3, "energy_kev": 17.5, "delta_beta": 200.0,
        "angle_start_deg": 0.0, "angle_step_deg": 60.0}
CONE = {"source_distance_m": -0.007, "detector_distance_m": 0.493, "detector_pixel_size_m": 7e-6}


def start(**fields):
    return parse_message([json.dumps({**BASE, **fields}).encode()])


def test_plane_and_cone_beam_entries_give_effective_values_reference_first():
    message = start(distances=[{"distance_m": 0.01, "pixel_size_m": 1e-7},
                               {**CONE, "shift_px": [1.5, -0.25]}])
    assert isinstance(message, ScanStart)
    scan = message.scan
    first, second = scan.distances
    assert (scan.distance_m, scan.pixel_size_m) == (0.01, 1e-7)
    assert second.magnification == pytest.approx(0.5 / 0.007)
    assert second.distance_m == pytest.approx(0.007 * 0.493 / 0.5)
    assert second.pixel_size_m == pytest.approx(7e-6 * 0.007 / 0.5)
    assert second.shift_px == (1.5, -0.25) and first.shift_px is None
    # The announcement survives the queue round trip (to_dict / from_dict) unchanged.
    again = ScanInfo.from_dict(scan.to_dict())
    assert again == scan
    assert parse_message(encode_scan_start(scan)).scan == scan


@pytest.mark.parametrize("fields, reason", [
    ({"distances": [{"distance_m": 0.01, "pixel_size_m": 1e-7}]}, "2-8 entries"),
    ({"distances": [{"distance_m": 0.01, "pixel_size_m": 1e-7}] * 9}, "2-8 entries"),
    ({"distances": [{"distance_m": 0.01, "pixel_size_m": 1e-7}] * 2, "distance_m": 0.01},
     "distances and the top-level distance_m"),
    ({"distances": [{"distance_m": 0.01, "pixel_size_m": 1e-7}, {**CONE, "distance_m": 0.01}]},
     r"distances\[1\] gives both"),
    ({"distances": [{"distance_m": 0.01}, CONE]}, r"distances\[0\] lacks pixel_size_m"),
    ({"distances": [CONE, {**CONE, "shift_px": [1]}]}, r"distances\[1\]: shift_px"),
    ({"distances": [CONE, {**CONE, "detector_pixel_size_m": -1.0}]}, "must be positive"),
    ({"distances": [CONE, {**CONE, "focus": 1}]}, "unknown field"),
    ({"distances": "far"}, "2-8 entries"),
])
def test_mismatched_distance_lists_are_rejected_with_a_reason(fields, reason):
    payload = {k: v for k, v in BASE.items()}
    with pytest.raises(ProtocolError, match=reason):
        parse_message([json.dumps({**payload, **fields}).encode()])


def test_single_distance_scans_still_need_their_geometry():
    with pytest.raises(ProtocolError, match="missing distance_m, pixel_size_m"):
        start()
    assert start(distance_m=0.01, pixel_size_m=1e-7).scan.distances == ()


def frame(scan, distance_index, kind="projection", index=0):
    parts = encode_frame(scan.scan_id, kind, index, np.zeros(scan.shape, np.uint16),
                         distance_index=distance_index)
    message = parse_message(parts)
    assert isinstance(message, Frame) and message.distance_index == distance_index
    return message


def test_frames_must_name_a_known_distance():
    scan = start(distances=[CONE, CONE, CONE]).scan
    for i in range(3):
        scan.check_frame(frame(scan, i, "dark", 1))
    with pytest.raises(ProtocolError, match="distance_index 3 out of range") as error:
        scan.check_frame(frame(scan, 3))
    assert error.value.code == "unknown_distance"
    with pytest.raises(ProtocolError, match="lacks distance_index"):
        scan.check_frame(frame(scan, None))
    single = start(distance_m=0.01, pixel_size_m=1e-7).scan
    single.check_frame(frame(single, None))
    with pytest.raises(ProtocolError, match="announced no distances"):
        single.check_frame(frame(single, 0))
