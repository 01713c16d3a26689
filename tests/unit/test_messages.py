"""Every kind of malformed ingest message is rejected with a reason naming the problem."""

from __future__ import annotations

import json

import numpy as np
import pytest

from holostream.shared.messages import (
    Frame, Limits, ProtocolError, ScanAbort, ScanEnd, ScanInfo, ScanStart, encode_frame,
    encode_scan_end, encode_scan_start, parse_message,
)

START = {"type": "scan_start", "scan_id": "sample42_0001", "shape": [4, 6], "dtype": "uint16",
         "n_darks": 2, "n_flats": 3, "n_projections": 5, "angle_start_deg": 0.0,
         "angle_step_deg": 36.0, "energy_kev": 17.5, "distance_m": 0.05, "pixel_size_m": 1e-6,
         "delta_beta": 200.0}


def frame_header(**changes):
    h = {"type": "frame", "scan_id": "sample42_0001", "kind": "projection", "index": 1,
         "shape": [4, 6], "dtype": "uint16", "angle_deg": 36.0}
    h.update(changes)
    return {k: v for k, v in h.items() if v is not None}


def parts(header, *payload):
    return [json.dumps(header).encode(), *payload]


def rejected(message_parts, limits=Limits()):
    with pytest.raises(ProtocolError) as info:
        parse_message(message_parts, limits)
    return info.value


PAYLOAD = np.arange(24, dtype="<u2").tobytes()


def test_valid_scan_start_round_trips_through_dict():
    msg = parse_message(parts(START))
    assert isinstance(msg, ScanStart)
    scan = msg.scan
    assert scan.shape == (4, 6) and scan.frame_nbytes == 48
    assert scan.angle_of(3) == pytest.approx(108.0)
    np.testing.assert_allclose(scan.all_angles_deg(), [0, 36, 72, 108, 144])
    assert ScanInfo.from_dict(scan.to_dict()) == scan
    assert parse_message(encode_scan_start(scan)).scan == scan


def test_valid_frame_is_a_view_of_the_payload():
    image = np.arange(24, dtype=np.uint16).reshape(4, 6)
    msg = parse_message(encode_frame("sample42_0001", "projection", 2, image, angle_deg=72.0))
    assert isinstance(msg, Frame)
    assert (msg.kind, msg.index, msg.angle_deg) == ("projection", 2, 72.0)
    np.testing.assert_array_equal(msg.array(), image)
    scan = parse_message(parts(START)).scan
    scan.check_frame(msg)


def test_scan_end_and_abort_parse():
    assert parse_message(encode_scan_end("a.b-c_1")) == ScanEnd("a.b-c_1")
    assert parse_message(parts({"type": "scan_abort", "scan_id": "x"})) == ScanAbort("x")


@pytest.mark.parametrize("raw, words", [
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[1, 2]", "list, not an object"),
    (b'{"type": "scan_end", "scan_id": NaN}', "non-finite"),
])
def test_bad_json_is_rejected(raw, words):
    assert words in rejected([raw]).reason


@pytest.mark.parametrize("change, words", [
    ({"type": "scan_begin"}, "unknown message type 'scan_begin'"),
    ({"scan_id": "bad id!"}, "scan_id"),
    ({"scan_id": "x" * 129}, "scan_id"),
    ({"shape": [4]}, "shape"),
    ({"shape": [0, 6]}, "shape"),
    ({"shape": [4, 20000]}, "shape"),
    ({"dtype": "int8"}, "dtype 'int8'"),
    ({"n_darks": -1}, "n_darks"),
    ({"n_projections": 2.5}, "n_projections must be an integer"),
    ({"n_projections": 10**7}, "n_projections"),
    ({"n_flats": True}, "n_flats must be an integer"),
    ({"energy_kev": 0.0}, "energy_kev=0.0 must be positive"),
    ({"distance_m": -0.1}, "distance_m"),
    ({"pixel_size_m": "1e-6"}, "pixel_size_m must be a number"),
    ({"delta_beta": -200.0}, "delta_beta=-200.0 must be positive"),
    ({"angles_deg": [0, 1, 2]}, "angles_deg"),
    ({"angle_step_deg": None}, "angle_start_deg and angle_step_deg"),
    ({"cor_px": "left"}, "cor_px"),
    ({"reconstruction": [1]}, "reconstruction must be an object"),
    ({"colour": "red"}, "unknown field(s) colour"),
    ({"energy_kev": None}, "lacks field(s) energy_kev"),
])
def test_bad_scan_start_names_the_field(change, words):
    header = {**START, **change}
    header = {k: v for k, v in header.items() if v is not None}
    assert words in rejected(parts(header)).reason


def test_overflowing_number_is_not_finite():
    raw = json.dumps(START).replace('"energy_kev": 17.5', '"energy_kev": 1e400').encode()
    assert "energy_kev=inf is not finite" in rejected([raw]).reason


def test_angles_list_must_be_finite_and_exclusive():
    base = {k: v for k, v in START.items() if not k.startswith("angle_")}
    ok = parse_message(parts({**base, "angles_deg": [0, 10, 20, 30, 40]})).scan
    assert ok.angle_of(4) == 40.0
    assert "finite" in rejected(parts({**base, "angles_deg": [0, 1, 2, 3, "x"]})).reason
    assert "not both" in rejected(parts({**START, "angles_deg": [0, 1, 2, 3, 4]})).reason


@pytest.mark.parametrize("change, payload, words", [
    ({}, PAYLOAD[:-8], "payload is 8 bytes short"),
    ({}, PAYLOAD + b"xx", "payload is 2 bytes long"),
    ({"kind": "bright"}, PAYLOAD, "frame kind 'bright'"),
    ({"index": -1}, PAYLOAD, "index=-1"),
    ({"angle_deg": float("inf")}, PAYLOAD, "non-finite"),
    ({"dtype": "float64"}, PAYLOAD, "dtype 'float64'"),
    ({"scan_id": None}, PAYLOAD, "lacks field(s) scan_id"),
])
def test_bad_frame_names_the_problem(change, payload, words):
    header = frame_header(**change)
    raw = json.dumps(header, allow_nan=True).encode()
    assert words in rejected([raw, payload]).reason


def test_part_count_is_checked():
    assert "2 parts" in rejected(parts(frame_header())).reason
    assert "2 parts" in rejected(parts(frame_header(), PAYLOAD, PAYLOAD)).reason
    assert "takes no payload" in rejected(parts(START, PAYLOAD)).reason
    assert "empty" in rejected([]).reason


def test_absurd_sizes_follow_the_limits():
    small = Limits(max_frame_bytes=40)
    assert "exceeds 40 bytes" in rejected(parts(START), small).reason
    assert "header of" in rejected(parts(START), Limits(max_header_bytes=10)).reason


@pytest.mark.parametrize("change, words, code", [
    ({"scan_id": "other"}, "open scan is 'sample42_0001'", "unknown_scan"),
    ({"shape": [6, 4]}, "shape [6, 4] disagrees", "format"),
    ({"index": 5}, "projection index 5 out of range: the scan has 5", "index_range"),
    ({"kind": "dark", "index": 2}, "dark index 2 out of range", "index_range"),
])
def test_frame_must_agree_with_its_scan(change, words, code):
    scan = parse_message(parts(START)).scan
    frame = parse_message(parts(frame_header(**change), PAYLOAD))
    with pytest.raises(ProtocolError) as info:
        scan.check_frame(frame)
    assert words in info.value.reason and info.value.code == code


def test_dtype_must_agree_with_its_scan():
    scan = parse_message(parts(START)).scan
    frame = parse_message(parts(frame_header(dtype="float32"), PAYLOAD + PAYLOAD))
    with pytest.raises(ProtocolError, match="dtype float32 disagrees"):
        scan.check_frame(frame)


def test_angle_comes_from_frame_when_scan_has_none():
    base = {k: v for k, v in START.items() if not k.startswith("angle_")}
    scan = parse_message(parts(base)).scan
    assert not scan.angles_known and scan.all_angles_deg() is None
    assert scan.angle_of(2, 12.5) == 12.5
    frame = parse_message(parts(frame_header(angle_deg=None), PAYLOAD))
    with pytest.raises(ProtocolError, match="no angle_deg"):
        scan.check_frame(frame)


def _start_without(*keys, **changes):
    d = {k: v for k, v in START.items() if k not in keys}
    d.update(changes)
    return d


def test_cone_beam_geometry_gives_effective_values():
    from holostream.workers.physics import fresnel_scaling

    cone = dict(source_distance_m=-0.02, detector_distance_m=1.98, detector_pixel_size_m=6.5e-6)
    msg = parse_message(parts(_start_without("distance_m", "pixel_size_m", **cone)))
    scan = msg.scan
    magnification, distance_m, pixel_size_m = fresnel_scaling(0.02, 1.98, 6.5e-6)
    assert scan.magnification == pytest.approx(100.0) == pytest.approx(magnification)
    assert scan.distance_m == pytest.approx(distance_m) and scan.pixel_size_m == pytest.approx(pixel_size_m)
    assert scan.source_distance_m == 0.02  # by magnitude (NeXus writes it negative)
    again = ScanInfo.from_dict(scan.to_dict())
    assert again == scan and "distance_m" not in scan.to_dict()
    plane = parse_message(parts(START)).scan
    assert plane.magnification == 1.0 and plane.source_distance_m is None


@pytest.mark.parametrize("change, words", [
    (dict(source_distance_m=0.1, detector_distance_m=0.5, detector_pixel_size_m=1e-6),
     "not both"),
    (dict(source_distance_m=0.1, detector_distance_m=0.5), "detector_pixel_size_m"),
])
def test_cone_beam_geometry_mixed_or_partial_is_rejected(change, words):
    error = rejected(parts(_start_without(**change)))
    assert words in str(error)
    error = rejected(parts(_start_without("distance_m", "pixel_size_m", source_distance_m=0.0,
                                          detector_distance_m=0.5, detector_pixel_size_m=1e-6)))
    assert error.code == "out_of_range"
    error = rejected(parts(_start_without("pixel_size_m")))
    assert error.code == "missing_field" and "pixel_size_m" in str(error)


def test_absent_centre_is_not_zero():
    scan = parse_message(parts(START)).scan
    assert scan.cor_px is None and "cor_px" not in scan.to_dict()
    given = parse_message(parts(_start_without(cor_px=0.0))).scan
    assert given.cor_px == 0.0 and ScanInfo.from_dict(given.to_dict()).cor_px == 0.0
