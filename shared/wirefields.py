"""Bounded decoding of one wire header, and typed readers of its fields that reject with a reason.

A sender controls every byte of a header, so nothing is used before its size is checked:
the JSON text's length, its nesting depth and the digits of its integers are bounded
(:class:`Limits`) before the parse, and every value echoed back in a reason, a log line or a
status reply is clipped (:func:`clip`, :func:`shown`). Every refusal is a
:class:`ProtocolError` with a reason and a code for the counters. Imports nothing of holostream.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any


MAX_SHOWN_CHARS = 160  # of a wire value echoed in a reason, a log line or a status field


def clip(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """``text`` cut to at most about ``limit`` characters, saying how many were left out.

    For anything a sender controls that ends up in a log line or a status reply: a 4 MiB
    ``scan_id`` must not become a 4 MiB log line.
    """
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...(+{len(text) - limit} chars)"


def shown(value: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    """``repr`` of a wire value for a reason, clipped; containers by their size only."""
    if isinstance(value, (list, dict)) and len(value) > 8:
        return f"<{type(value).__name__} of {len(value)} items>"
    try:
        return clip(repr(value), limit)
    except (ValueError, RecursionError):  # an int beyond str()'s digit limit, a deep container
        return f"<{type(value).__name__}>"


class ProtocolError(ValueError):
    """A message that breaks the ingest protocol.

    Parameters
    ----------
    reason : str
        Human-readable reason naming the offending field and value.
    code : str
        Short category for counters (``"bad_json"``, ``"bad_field"``, ``"payload_size"``...).
    """

    def __init__(self, reason: str, code: str = "bad_field"):
        reason = clip(reason, 4 * MAX_SHOWN_CHARS)
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class Limits:
    """Sizes above which a message is rejected as absurd (protects memory and the ring)."""

    max_rows: int = 16384
    max_cols: int = 16384
    max_projections: int = 100_000
    max_references: int = 10_000  # darks or flats
    max_frame_bytes: int = 1 << 30
    max_header_bytes: int = 8 << 20  # a list of 100 000 angles fits easily
    max_json_depth: int = 8  # header object = 1; shape, angles, reconstruction = 2
    max_int_digits: int = 24  # any integer the protocol knows fits in 20 digits


DEFAULT_LIMITS = Limits()


def _reject_constant(name: str):
    raise ProtocolError(f"header contains the non-finite number {name}", "bad_json")


def _part_view(part: Any) -> memoryview:
    """Bytes of one multipart part without copying (zmq.Frame, bytes or buffer)."""
    buffer = getattr(part, "buffer", None)
    return buffer if buffer is not None else memoryview(part)


def _json_depth(value: Any, stop: int) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0), level by level, at most ``stop + 1``."""
    depth, level = 0, [value]
    while depth <= stop:
        level = [c for c in level if isinstance(c, (list, dict))]
        if not level:
            break
        depth += 1
        level = [x for c in level for x in (c.values() if isinstance(c, dict) else c)]
    return depth


def load_json(raw: bytes | memoryview, limits: Limits = DEFAULT_LIMITS, what: str = "header") -> Any:
    """Decode one JSON document from the wire, bounded in size, nesting and integer length.

    Raises
    ------
    ProtocolError
        ``too_large`` (bytes, integer digits), ``too_deep`` or ``bad_json``, never anything else.
    """
    view = raw if isinstance(raw, memoryview) else memoryview(raw)
    if view.nbytes > limits.max_header_bytes:
        raise ProtocolError(f"{what} of {view.nbytes} bytes exceeds {limits.max_header_bytes}", "too_large")

    def bounded_int(text: str) -> int:
        # checked before int(): a 5,000-digit integer costs quadratic time and fails str()
        if len(text.lstrip("-")) > limits.max_int_digits:
            raise ProtocolError(f"{what} has an integer of {len(text)} digits (at most "
                                f"{limits.max_int_digits})", "too_large")
        return int(text)

    try:
        value = json.loads(bytes(view).decode("utf-8"), parse_constant=_reject_constant,
                           parse_int=bounded_int)
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not UTF-8: {exc}", "bad_json") from None
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"{what} is not JSON: {exc}", "bad_json") from None
    except RecursionError:
        raise ProtocolError(f"{what} is nested too deeply", "too_deep") from None
    if _json_depth(value, limits.max_json_depth) > limits.max_json_depth:
        raise ProtocolError(f"{what} is nested more than {limits.max_json_depth} levels deep", "too_deep")
    return value


def _header(part: Any, limits: Limits) -> dict[str, Any]:
    header = load_json(_part_view(part), limits)
    if not isinstance(header, dict):
        raise ProtocolError(f"header is a JSON {type(header).__name__}, not an object", "bad_json")
    return header


def _keys(d: dict, required: set[str], optional: set[str], what: str) -> None:
    missing = sorted(required - d.keys())
    if missing:
        raise ProtocolError(f"{what} lacks field(s) {', '.join(missing)}", "missing_field")
    extra = sorted(d.keys() - required - optional)
    if extra:
        raise ProtocolError(f"{what} has unknown field(s) {clip(', '.join(extra))}", "unknown_field")


def _int(d: dict, key: str, lo: int, hi: int) -> int:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError(f"{key} must be an integer, got {shown(v)}", "bad_field")
    if not lo <= v <= hi:
        raise ProtocolError(f"{key}={v} outside [{lo}, {hi}]", "out_of_range")
    return v


def _float(d: dict, key: str, positive: bool = False) -> float:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ProtocolError(f"{key} must be a number, got {shown(v)}", "bad_field")
    if not math.isfinite(v):
        raise ProtocolError(f"{key}={v} is not finite", "out_of_range")
    if positive and v <= 0:
        raise ProtocolError(f"{key}={v} must be positive", "out_of_range")
    return float(v)
