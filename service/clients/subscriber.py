"""The publish socket's reference client: decode one published message (PROTOCOL.md, "Published messages")."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

DEFAULT_PUBLISH = "tcp://127.0.0.1:5560"


class MessageError(ValueError):
    """A published message that does not follow PROTOCOL.md."""


def decode(frames: list[bytes]) -> tuple[str, dict[str, Any], list[np.ndarray]]:
    """Split ``[topic, header, payload...]`` into topic, header and arrays.

    Returns
    -------
    topic : str
        ``"volume"``, ``"preview"`` or ``"status"``.
    header : dict
    arrays : list of ndarray, float32
        ``volume``: one ``(nz, ny, nx)``; ``preview``: the z, y and x cuts; ``status``: none.

    Raises
    ------
    MessageError
        When a payload's size disagrees with the shape in the header.
    """
    if len(frames) < 2:
        raise MessageError(f"expected [topic, header, ...], got {len(frames)} part(s)")
    topic = bytes(frames[0]).decode("ascii", "replace")
    header = json.loads(bytes(frames[1]).decode("utf-8"))
    if topic in ("volume", "beta"):
        shapes = [header["shape"]]
    elif topic == "preview":
        shapes = header["shapes"]
    else:
        shapes = []
    if len(frames) - 2 != len(shapes):
        raise MessageError(f"{topic}: {len(frames) - 2} payload part(s), header announces {len(shapes)}")
    arrays = []
    for part, shape in zip(frames[2:], shapes):
        data = np.frombuffer(part, dtype="<f4")
        if data.size != int(np.prod(shape)):
            raise MessageError(f"{topic}: payload of {data.size} floats, header shape {shape}")
        arrays.append(data.reshape(shape))
    return topic, header, arrays
