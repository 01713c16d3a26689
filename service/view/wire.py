"""The binary WebSocket message that carries slices from the viewer to the page.

Layout (little-endian): a uint32 ``n``, then ``n`` bytes of UTF-8 JSON (padded with spaces
to a multiple of 4 bytes, so that the float32 arrays after it are aligned for a JavaScript
``Float32Array``), then the arrays' raw float32 data, one after the other, in the order of
the JSON's ``"arrays"`` list (each entry has a ``"shape"`` ``[rows, cols]``).
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np


def finite(value: Any) -> Any:
    """``value`` (JSON-like) with non-finite floats replaced by None: browsers' JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """JSON text of ``value`` that a browser's ``JSON.parse`` accepts (see :func:`finite`)."""
    return json.dumps(finite(value), allow_nan=False)


def pack(meta: dict[str, Any], arrays: list[np.ndarray]) -> bytes:
    """One binary message: ``meta`` (JSON object) followed by ``arrays`` (2-D, sent as float32).

    ``meta["arrays"]`` is set to the arrays' shapes, in order; entries already there (with
    names or other fields) keep those fields and get ``"shape"`` added.

    Returns
    -------
    bytes
    """
    described = list(meta.get("arrays") or [{} for _ in arrays])
    if len(described) != len(arrays):
        raise ValueError(f"meta describes {len(described)} arrays, {len(arrays)} given")
    meta = dict(meta, arrays=[dict(d, shape=[int(n) for n in a.shape]) for d, a in zip(described, arrays)])
    head = dumps(meta).encode("utf-8")
    head += b" " * (-len(head) % 4)
    parts = [struct.pack("<I", len(head)), head]
    parts += [np.ascontiguousarray(a, dtype="<f4").tobytes() for a in arrays]
    return b"".join(parts)


def unpack(message: bytes) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The inverse of :func:`pack` (what the page does in JavaScript; used by tests and tools).

    Raises
    ------
    ValueError
        When the message is shorter or longer than its JSON header announces.
    """
    if len(message) < 4:
        raise ValueError(f"message of {len(message)} bytes has no header length")
    (n,) = struct.unpack_from("<I", message)
    meta = json.loads(message[4:4 + n].decode("utf-8"))
    offset, arrays = 4 + n, []
    for entry in meta.get("arrays", []):
        rows, cols = entry["shape"]
        size = 4 * rows * cols
        if offset + size > len(message):
            raise ValueError(f"array {entry} runs past the end of a {len(message)}-byte message")
        arrays.append(np.frombuffer(message, dtype="<f4", count=rows * cols, offset=offset).reshape(rows, cols))
        offset += size
    if offset != len(message):
        raise ValueError(f"{len(message) - offset} bytes after the last array")
    return meta, arrays
