"""``holostream stream``: play a scan into an ingest socket, the way a detector would.

Sends ``scan_start``, the darks, the flats, the projections (each with its ``angle_deg``)
and ``scan_end`` over a PUSH socket (PROTOCOL.md, "Ingest messages"), optionally paced at
``--fps``, and prints the rate it achieved. The scan comes from an NXtomo file or from the
simulator (``--simulate``). Several files, one per distance (what ``holostream simulate
--distances N`` writes, the reference first), are played as one multi-distance scan
(PROTOCOL.md, "Extensions"; ``--order`` says how its frames are interleaved).
"""

from __future__ import annotations

import argparse
import logging
import sys

import zmq

from holostream.service.clients.control import add_curve_options, curve_of
from holostream.service.clients.detector import (
    SEND_TIMEOUT_S,
    simulated_scan_data,
    stream_scan,
)

log = logging.getLogger(__name__)

_SETTING_OPTIONS = ("binning", "angle_binning", "phase", "iterations", "filter", "publish_interval_s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``holostream stream``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("input", nargs="*", default=[],
                        help="NXtomo scan file (.nx/.h5); several: one per distance, the reference first")
    source.add_argument("--simulate", action="store_true", help="stream a simulated scan instead")
    parser.add_argument("--entry", help="NXtomo entry (default: the only one)")
    parser.add_argument("--size", type=int, default=128, help="simulated frame size, pixels (default 128)")
    parser.add_argument("--projections", type=int, default=180, help="simulated projections (default 180)")
    parser.add_argument("--darks", type=int, default=5, help="simulated darks (default 5)")
    parser.add_argument("--flats", type=int, default=5, help="simulated flats (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="simulation seed")
    parser.add_argument("--order", choices=("angle", "distance"), default="angle",
                        help="several distances: every distance of an angle in turn (default), or each "
                             "distance's whole scan in turn (the service's ring must then hold them)")
    parser.add_argument("--address", default="tcp://127.0.0.1:5550", help="ingest address")
    parser.add_argument("--bind", action="store_true", help="bind the PUSH socket (service connects)")
    parser.add_argument("--fps", type=float, help="projections per second (default: as fast as possible)")
    parser.add_argument("--scan-id", help="scan id (default: file stem or 'simulated')")
    parser.add_argument("--delta-beta", type=float, help="δ/β (required unless the scan holds it)")
    parser.add_argument("--timeout", type=float, default=SEND_TIMEOUT_S,
                        help=f"seconds to wait for the receiver (default {SEND_TIMEOUT_S:.0f})")
    parser.add_argument("--binning", type=int, help="override: pixel binning b×b")
    parser.add_argument("--angle-binning", type=int, help="override: consecutive projections averaged")
    parser.add_argument("--phase", help="override: none|paganin|ctf|ap|raar or a chain text")
    parser.add_argument("--iterations", type=int, help="override: iterations of ap/raar")
    parser.add_argument("--filter", help="override: ram-lak|shepp-logan|cosine|hann")
    parser.add_argument("--publish-interval-s", type=float, help="override: seconds between live volumes")
    add_curve_options(parser)


def run(args: argparse.Namespace) -> int:
    """Stream the scan; prints frames/s and GB/s. Exit code 0, or 1 with the reason."""
    from pathlib import Path

    from holostream.service.daemon.curve import KeyFileError
    from holostream.service.files.nxtomo import ScanFileError, read_scan

    try:
        overrides = {k: getattr(args, k) for k in _SETTING_OPTIONS if getattr(args, k) is not None}
        if args.simulate:
            scan_data = simulated_scan_data(args.size, args.projections, args.darks, args.flats, args.seed)
            scan_id = args.scan_id or "simulated"
        elif len(args.input) > 1:  # one file per distance: one multi-distance scan
            from holostream.service.clients.distances import stream_distances

            if args.bind:
                raise ValueError("--bind is for one scan file; several distances connect")
            scans = [read_scan(path, args.entry) for path in args.input]
            scan_id = args.scan_id or Path(args.input[0]).stem
            result = stream_distances(args.address, scans, scan_id, args.fps, order=args.order,
                                      delta_beta=args.delta_beta, reconstruction=overrides, timeout_s=args.timeout)
            print(f"sent {result.frames} frames ({result.bytes / 1e9:.3f} GB) of {scan_id} at {len(scans)} "
                  f"distances in {result.seconds:.2f} s: {result.frames_per_s:.1f} frames/s")
            return 0
        else:
            scan_data = read_scan(args.input[0], args.entry)
            scan_id = args.scan_id or Path(args.input[0]).stem
        result = stream_scan(args.address, scan_data, scan_id, args.fps, bind=args.bind,
                             delta_beta=args.delta_beta, reconstruction=overrides, timeout_s=args.timeout,
                             curve=curve_of(args))
    except (ScanFileError, ValueError, TimeoutError, OSError, zmq.ZMQError, KeyFileError) as exc:
        print(f"holostream stream: {exc}", file=sys.stderr)
        return 1
    print(f"sent {result.frames} frames ({result.bytes / 1e9:.3f} GB) of {scan_id} in "
          f"{result.seconds:.2f} s: {result.frames_per_s:.1f} frames/s, {result.gb_per_s:.3f} GB/s")
    return 0
