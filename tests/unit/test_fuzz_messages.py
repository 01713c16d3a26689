"""Property-based fuzzing of the ingest message parser (hypothesis, fixed seed, bounded time).

Whatever arrives on the ingest socket, ``parse_message`` either returns a message or raises
:class:`ProtocolError` with a known reason code and a bounded reason: never another exception
(the ingest would count it as ``internal_error`` and log a traceback). Derandomized, so every
run draws the same cases; ``max_examples`` keeps the whole file to a few seconds.
"""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from holostream.shared.messages import (
    DTYPES, MAX_SHOWN_CHARS, REJECT_CODES, Frame, ProtocolError, ScanAbort, ScanEnd, ScanInfo, ScanStart,
    encode_frame, encode_scan_start, parse_message,
)

FUZZ = settings(derandomize=True, database=None, max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

VALID_START = {"type": "scan_start", "scan_id": "s-1", "shape": [6, 5], "dtype": "uint16", "n_darks": 1,
               "n_flats": 2, "n_projections": 3, "energy_kev": 17.5, "distance_m": 0.05,
               "pixel_size_m": 6.5e-7, "delta_beta": 250.0, "angle_start_deg": 0.0, "angle_step_deg": 60.0,
               "cor_px": 0.5, "reconstruction": {"binning": 1}}
VALID_FRAME = {"type": "frame", "scan_id": "s-1", "kind": "projection", "index": 2, "shape": [6, 5],
               "dtype": "uint16", "angle_deg": 120.0}

# any JSON value, including the hostile ones: huge and negative integers, long strings, nesting
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-10**40, max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=100),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=12)
field_names = st.sampled_from(sorted(set(VALID_START) | set(VALID_FRAME) | {"angles_deg", "bogus"}))
payloads = st.sampled_from([b"", b"\0" * 59, b"\0" * 60, b"\0" * 61, b"\1" * 120])


def check_outcome(parts: list) -> object:
    """Parse ``parts``: a message, or a ProtocolError that names a known code and stays short."""
    try:
        message = parse_message(parts)
    except ProtocolError as exc:
        assert exc.code in REJECT_CODES and exc.code != "internal_error", exc.code
        assert len(exc.reason) <= 4 * MAX_SHOWN_CHARS + 40, len(exc.reason)
        return exc
    assert isinstance(message, (ScanStart, Frame, ScanEnd, ScanAbort))
    return message


def encode(header: dict) -> bytes:
    return json.dumps(header).encode("utf-8")


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=4))
def test_arbitrary_bytes_are_parsed_or_rejected_with_a_code(parts):
    check_outcome(parts)


@FUZZ
@given(st.sampled_from([VALID_START, VALID_FRAME, {"type": "scan_end", "scan_id": "s-1"},
                        {"type": "scan_abort", "scan_id": "s-1"}]),
       st.lists(st.tuples(field_names, json_values | st.just(None)), max_size=4),
       st.sets(field_names, max_size=2), st.lists(payloads, max_size=2))
def test_mutated_headers_are_parsed_or_rejected_with_a_code(base, changes, dropped, extra_parts):
    header = {k: v for k, v in base.items() if k not in dropped}
    header.update(changes)
    check_outcome([encode(header), *extra_parts])


@FUZZ
@given(st.sampled_from(["[", "{\"a\":"]), st.integers(min_value=1, max_value=20_000),
       st.integers(min_value=1, max_value=6_000))
def test_deep_nesting_and_long_integers_are_rejected_with_a_code(opener, depth, digits):
    closer = "]" if opener == "[" else "}"
    deep = '{"type":"scan_start","reconstruction":' + opener * depth + "1" + closer * depth + "}"
    long_int = '{"type":"frame","index":' + "9" * digits + "}"
    assert isinstance(check_outcome([deep.encode()]), ProtocolError)
    assert isinstance(check_outcome([long_int.encode()]), ProtocolError)


@FUZZ
@given(st.text(min_size=129, max_size=5000) | st.lists(st.text(max_size=3), max_size=50)
       | st.dictionaries(st.text(max_size=3), st.integers(), max_size=5))
def test_oversized_or_wrongly_typed_fields_are_echoed_short(value):
    for key in ("scan_id", "dtype", "kind"):
        result = check_outcome([encode({**VALID_FRAME, key: value}), b"\0" * 60])
        assert isinstance(result, ProtocolError)


@st.composite
def scans(draw):
    rows, cols = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    n = draw(st.integers(1, 50))
    angles = draw(st.none() | st.lists(st.floats(-720, 720), min_size=n, max_size=n))
    return ScanInfo(scan_id=draw(st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True)),
                    shape=(rows, cols), dtype=draw(st.sampled_from(sorted(DTYPES))),
                    n_darks=draw(st.integers(0, 10)), n_flats=draw(st.integers(0, 10)), n_projections=n,
                    energy_kev=draw(st.floats(0.1, 200)), distance_m=draw(st.floats(1e-4, 10)),
                    pixel_size_m=draw(st.floats(1e-8, 1e-4)), delta_beta=draw(st.floats(1, 1e4)),
                    angles_deg=tuple(angles) if angles is not None else None,
                    angle_start_deg=0.0 if angles is None else None,
                    angle_step_deg=0.5 if angles is None else None,
                    cor_px=draw(st.floats(-100, 100)))


@FUZZ
@given(scans(), st.data())
def test_valid_messages_round_trip(scan, data):
    parsed = parse_message(encode_scan_start(scan))
    assert parsed == ScanStart(scan)
    index = data.draw(st.integers(0, scan.n_projections - 1))
    image = np.zeros(scan.shape, DTYPES[scan.dtype])
    frame = parse_message(encode_frame(scan.scan_id, "projection", index, image, angle_deg=1.5))
    scan.check_frame(frame)
    assert frame.index == index and frame.array().shape == scan.shape
