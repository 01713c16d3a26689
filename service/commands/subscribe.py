"""``holostream subscribe``: receive published volumes; print headers, save HDF5 and PNG.

Also the reference client of the publish socket (PROTOCOL.md, "Published messages"):
:func:`decode` turns one multipart message into its header and float32 arrays.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from holostream.service.clients.control import add_curve_options, curve_of
from holostream.service.clients.subscriber import DEFAULT_PUBLISH, MessageError, decode
from holostream.service.files.volume import save_volume_h5


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write a 2-D array as an 8-bit grayscale PNG, scaled between its 1st and 99th percentiles.

    Plain zlib + struct (the PNG chunk layout), so no imaging library is needed.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"write_png needs a non-empty 2-D array, got shape {image.shape}")
    finite = image[np.isfinite(image)]
    low, high = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    scale = 255.0 / (high - low) if high > low else 0.0
    pixels = np.clip((np.nan_to_num(image, nan=low) - low) * scale, 0, 255).astype(np.uint8)
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = pixels.shape
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                           + chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b""))


def summary(header: dict[str, Any]) -> str:
    """One line about a volume header."""
    return (f"{header['scan_id']} seq {header['seq']}{' FINAL' if header.get('final') else ''}: "
            f"{header['n_projections_used']}/{header['n_projections_expected']} projections, "
            f"shape {header['shape']}, voxel {header['voxel_size_m']:.3g} m, "
            f"phase {header.get('phase')}, binning {header.get('binning')}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``holostream subscribe``."""
    parser.add_argument("--publish", metavar="ADDR", default=DEFAULT_PUBLISH,
                        help=f"PUB address of the daemon (default {DEFAULT_PUBLISH})")
    parser.add_argument("--count", metavar="N", type=int, help="exit after N volumes")
    parser.add_argument("--final-only", action="store_true", help="only final volumes count, print and save")
    parser.add_argument("--save-h5", metavar="DIR", help="write each volume to DIR/<scan_id>_<scan_seq>_<seq>.h5")
    parser.add_argument("--save-png", metavar="DIR", help="write the preview cuts to DIR/<scan_id>_<scan_seq>_<seq>_{z,y,x}.png")
    parser.add_argument("--timeout", metavar="S", type=float,
                        help="give up after S seconds without a volume (exit 1 if --count was not reached)")
    add_curve_options(parser)


def _next_message(sock: zmq.Socket, deadline: float | None):
    """The next well-formed message as ``(topic, header, arrays)``; None once ``deadline`` passes."""
    while True:
        wait_ms = None if deadline is None else max(0.0, deadline - time.monotonic()) * 1000
        if not sock.poll(wait_ms, zmq.POLLIN):
            return None
        try:
            return decode(sock.recv_multipart())
        except (MessageError, ValueError, KeyError) as exc:
            print(f"holostream subscribe: bad message skipped: {exc}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Receive until ``--count`` volumes, ``--timeout`` or Ctrl-C."""
    for folder in (args.save_h5, args.save_png):
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
    from holostream.service.daemon.curve import KeyFileError, connect_as_client

    context = zmq.Context()
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 8)
    try:
        curve = curve_of(args)
        if curve is not None:
            connect_as_client(sock, *curve)
    except (ValueError, KeyFileError) as exc:
        print(f"holostream subscribe: {exc}", file=sys.stderr)
        sock.close(linger=0)
        context.term()
        return 2
    sock.connect(args.publish)
    for topic in (b"volume", b"preview"):
        sock.setsockopt(zmq.SUBSCRIBE, topic)

    def volume_deadline() -> float | None:
        return None if args.timeout is None else time.monotonic() + args.timeout

    received, deadline = 0, volume_deadline()
    awaited_preview = None  # name of the last volume while its preview cuts are still to come
    try:
        while True:
            finished = args.count is not None and received >= args.count
            if finished and awaited_preview is None:
                return 0
            message = _next_message(sock, deadline)
            if message is None:
                if finished:
                    return 0  # the preview of the last volume was lost; the volumes are in
                print(f"holostream subscribe: no volume from {args.publish} within {args.timeout:g} s",
                      file=sys.stderr)
                return 1 if args.count is not None else 0
            topic, header, arrays = message
            if args.final_only and not header.get("final"):
                continue
            name = f"{header['scan_id']}_{header.get('scan_seq', 0)}_{header['seq']}"
            if topic == "preview":
                if args.save_png:
                    for axis, cut in zip("zyx", arrays):
                        write_png(Path(args.save_png) / f"{name}_{axis}.png", cut)
                if name == awaited_preview:
                    awaited_preview = None
                continue
            if finished:
                continue
            received += 1
            print(summary(header), flush=True)
            if args.save_h5:
                save_volume_h5(Path(args.save_h5) / f"{name}.h5", header, arrays[0])
            awaited_preview = name if args.save_png else None
            # the preview is sent right after its volume: a short wait once the count is reached
            last = args.count is not None and received >= args.count
            deadline = time.monotonic() + 2.0 if last else volume_deadline()
    except KeyboardInterrupt:
        return 0
    finally:
        sock.close(linger=0)
        context.term()
