"""Push a tiny synthetic scan into holostream, as a detector would (needs only pyzmq and numpy).

    python examples/push_frames.py [--address tcp://127.0.0.1:5550] [--size 64] [--projections 90]

Sends ``scan_start``, darks, flats, projections with their ``angle_deg`` and ``scan_end``
(docs/protocol.md). The sample is a weakly absorbing off-axis cylinder, so the frames show
a shadow moving with the rotation; the counts are Poisson-noisy uint16 like a real camera's.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import zmq


def header(**fields) -> bytes:
    """A message header: a UTF-8 JSON object."""
    return json.dumps(fields).encode("utf-8")


def frame(scan_id: str, kind: str, index: int, image: np.ndarray, angle_deg: float | None = None):
    """The two parts of a ``frame`` message: header and raw little-endian C-order pixels."""
    fields = dict(type="frame", scan_id=scan_id, kind=kind, index=index,
                  shape=list(image.shape), dtype="uint16")
    if angle_deg is not None:
        fields["angle_deg"] = angle_deg
    return [header(**fields), np.ascontiguousarray(image, dtype="<u2")]


def synthetic_scan(size: int, n_projections: int, n_refs: int, seed: int = 0):
    """Darks, flats and projections (uint16 counts) of an off-axis cylinder; angles in degrees."""
    rng = np.random.default_rng(seed)
    cols = np.arange(size) - (size - 1) / 2
    angles_deg = np.linspace(0.0, 180.0, n_projections, endpoint=False)
    dark_level, photons = 100.0, 20000.0
    darks = rng.poisson(dark_level, (n_refs, size, size)).astype(np.uint16)
    flats = rng.poisson(dark_level + photons, (n_refs, size, size)).astype(np.uint16)
    projections = np.empty((n_projections, size, size), np.uint16)
    radius, offset = size / 8, size / 5
    for i, angle in enumerate(np.radians(angles_deg)):
        centre = offset * np.cos(angle)  # where the cylinder's axis projects (column, from the centre)
        chord = 2 * np.sqrt(np.clip(radius**2 - (cols - centre) ** 2, 0, None))  # path length, pixels
        transmission = np.exp(-0.01 * chord)[None, :].repeat(size, axis=0)
        projections[i] = rng.poisson(dark_level + photons * transmission)
    return darks, flats, projections, angles_deg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", default="tcp://127.0.0.1:5550", help="holostream's ingest (PULL) address")
    p.add_argument("--size", type=int, default=64, help="frame rows = cols (pixels)")
    p.add_argument("--projections", type=int, default=90)
    p.add_argument("--scan-id", default="example_0001")
    args = p.parse_args()

    darks, flats, projections, angles_deg = synthetic_scan(args.size, args.projections, n_refs=4)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 16)  # beyond this, send() waits: the service's back-pressure
    push.setsockopt(zmq.LINGER, 10_000)  # on close, give queued frames 10 s to leave
    push.connect(args.address)

    scan_id = args.scan_id
    push.send(header(type="scan_start", scan_id=scan_id, shape=[args.size, args.size], dtype="uint16",
                     n_darks=len(darks), n_flats=len(flats), n_projections=len(projections),
                     angles_deg=angles_deg.tolist(), energy_kev=17.5, distance_m=0.05,
                     pixel_size_m=1.0e-6, delta_beta=200.0,
                     reconstruction={"phase": "paganin"}))
    for i, image in enumerate(darks):
        push.send_multipart(frame(scan_id, "dark", i, image), copy=False)
    for i, image in enumerate(flats):
        push.send_multipart(frame(scan_id, "flat", i, image), copy=False)
    for i, (image, angle) in enumerate(zip(projections, angles_deg)):
        push.send_multipart(frame(scan_id, "projection", i, image, float(angle)), copy=False)
    push.send(header(type="scan_end", scan_id=scan_id))
    push.close()  # waits (LINGER) until everything is delivered
    ctx.term()
    print(f"pushed {len(darks)} darks, {len(flats)} flats, {len(projections)} projections of {scan_id}")


if __name__ == "__main__":
    main()
