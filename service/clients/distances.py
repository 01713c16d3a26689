"""Play a scan recorded at several propagation distances into an ingest socket.

The multi-distance counterpart of :func:`holostream.service.clients.detector.stream_scan`:
one :class:`~holostream.service.files.nxtomo.ScanData` per distance (the files
``holostream simulate --distances N`` writes, reference first) become one scan on the
wire (PROTOCOL.md, "Extensions", "Several propagation distances"): a ``scan_start`` with
``distances`` (each entry in its effective plane-wave form, as offline reads it), every
frame with its ``distance_index``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from holostream.service.clients.detector import SEND_TIMEOUT_S, StreamResult, _Sender, _wire_dtype, scan_info_of
from holostream.shared.distances import DistanceInfo
from holostream.shared.messages import ScanInfo, encode_frame, encode_scan_end, encode_scan_start

#: Orders the projections can be sent in.
ORDERS = ("angle", "distance")


def distances_info(scans, scan_id: str, delta_beta: float | None = None,
                   reconstruction: dict[str, Any] | None = None,
                   shifts_px: list | None = None) -> ScanInfo:
    """The ``scan_start`` of one scan at several distances (``scans[0]`` the reference).

    ``shifts_px``: known offsets, one ``(dv, du)`` per distance (own pixels); None: the
    service measures them.

    Raises
    ------
    ValueError
        Fewer than two scans, or scans whose frames, energy or angles differ.
    """
    from holostream.service.offline_distances import check_distances

    check_distances(scans)  # DistanceMismatch is a ValueError with the reason
    info = scan_info_of(scans[0], scan_id, delta_beta, reconstruction)
    entries = tuple(DistanceInfo(float(s.distance_m), float(s.pixel_size_m), 1.0,
                                 None if shifts_px is None else tuple(float(v) for v in shifts_px[i]))
                    for i, s in enumerate(scans))
    if any(len(s.darks) != len(scans[0].darks) or len(s.flats) != len(scans[0].flats) for s in scans):
        raise ValueError("every distance must have as many darks and flats as the reference")
    return replace(info, distances=entries)


def stream_distances(socket_address: str, scans, scan_id: str, fps: float | None = None, *,
                     order: str = "angle", delta_beta: float | None = None,
                     reconstruction: dict[str, Any] | None = None, shifts_px: list | None = None,
                     timeout_s: float = SEND_TIMEOUT_S, sndhwm: int = 8,
                     extra: dict[int, list[list[Any]]] | None = None,
                     skip: set[tuple[int, int]] = frozenset()) -> StreamResult:
    """Send one multi-distance scan to an ingest socket as a detector would.

    Parameters
    ----------
    socket_address : str
        ZeroMQ address of the ingest socket.
    scans : sequence of ScanData
        One per distance, the reference first, same frames, energy and angles.
    scan_id : str
    fps : float, optional
        Angles per second (all distances of an angle count once).
    order : {"angle", "distance"}
        ``angle``: every distance of an angle, then the next angle (as a set-up with one
        detector per distance would send); ``distance``: each distance's whole scan in turn
        (as ID16 records them; the service then holds the earlier distances in its ring).
    delta_beta, reconstruction, shifts_px
        See :func:`distances_info`.
    timeout_s, sndhwm
        As :func:`~holostream.service.clients.detector.stream_scan`.
    extra : dict of int to list of message parts, optional
        Messages sent verbatim before the projections of that angle index (-1: after
        ``scan_start``), to test how the service handles bad input.
    skip : set of (angle index, distance index)
        Projections not sent (a distance missing at some angle), to test how the service
        reports it.

    Returns
    -------
    StreamResult
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    info = distances_info(scans, scan_id, delta_beta, reconstruction, shifts_px)
    extra = extra or {}
    n = len(scans[0].angles_deg)
    if order == "angle":
        sequence = [(i, d) for i in range(n) for d in range(len(scans))]
    else:
        sequence = [(i, d) for d in range(len(scans)) for i in range(n)]
    sender = _Sender(socket_address, False, sndhwm, timeout_s)
    frames = nbytes = 0
    try:
        sender.send(encode_scan_start(info))
        start = time.monotonic()
        for message in extra.get(-1, []):
            sender.send(message)
        for d, scan in enumerate(scans):
            for kind, stack in (("dark", scan.darks), ("flat", scan.flats)):
                for index, image in enumerate(stack):
                    parts = encode_frame(scan_id, kind, index, _wire_dtype(image), distance_index=d)
                    sender.send(parts)
                    frames, nbytes = frames + 1, nbytes + parts[1].nbytes
        paced_from = time.monotonic()
        sent_extra = set()
        for k, (index, d) in enumerate(sequence):
            if index not in sent_extra:
                sent_extra.add(index)
                for message in extra.get(index, []):
                    sender.send(message)
            if (index, d) in skip:
                continue
            if fps:  # a deadline per frame, not a fixed pause: rates stay exact
                delay = paced_from + k / (fps * len(scans)) - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            parts = encode_frame(scan_id, "projection", index, _wire_dtype(scans[d].projections[index]),
                                 angle_deg=float(scans[0].angles_deg[index]), distance_index=d)
            sender.send(parts)
            frames, nbytes = frames + 1, nbytes + parts[1].nbytes
        sender.send(encode_scan_end(scan_id))
    finally:
        sender.close()
    return StreamResult(frames, nbytes, time.monotonic() - start)
