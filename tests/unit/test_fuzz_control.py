"""Property-based fuzzing of the control request parser (hypothesis, fixed seed, bounded time).

Every request, however malformed, is answered: ``parse_request`` returns a request with a
known ``cmd`` or raises :class:`ControlError` with a short reason, never anything else (an
unexpected exception is answered as "internal error" and logs a traceback).
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from holostream.service.daemon.control import COMMANDS, ControlError, parse_request
from holostream.shared.messages import MAX_SHOWN_CHARS

FUZZ = settings(derandomize=True, database=None, max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10**40, max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=100),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=12)


def check(frames: list[bytes]) -> None:
    try:
        request = parse_request(frames)
    except ControlError as exc:
        assert len(str(exc)) <= 4 * MAX_SHOWN_CHARS + 80, len(str(exc))
        return
    assert isinstance(request, dict) and request["cmd"] in COMMANDS


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=3))
def test_arbitrary_bytes_are_answered(frames):
    check(frames)


@FUZZ
@given(st.sampled_from(COMMANDS) | json_values, json_values, st.dictionaries(st.text(max_size=8), json_values,
                                                                           max_size=3))
def test_arbitrary_requests_are_answered(cmd, params, extra):
    check([json.dumps({"cmd": cmd, "params": params, **extra}).encode()])


@FUZZ
@given(st.integers(min_value=1, max_value=20_000), st.integers(min_value=1, max_value=6_000),
       st.text(min_size=200, max_size=5000))
def test_deep_nesting_long_integers_and_long_strings_are_refused_briefly(depth, digits, text):
    check([('{"cmd":"set","params":{"a":' + "[" * depth + "]" * depth + "}}").encode()])
    check([('{"cmd":"set","params":{"binning":' + "7" * digits + "}}").encode()])
    check([json.dumps({"cmd": text}).encode()])
