"""``holostream status``: ask the daemon's control socket how it is doing.

One-shot by default, or ``--watch [SECONDS]`` to repeat. When the daemon does not answer
within ``--timeout`` seconds the command says so and exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from holostream.service.clients.control import NoAnswer, add_control_options, control_address, curve_of, request
from holostream.service.daemon.curve import KeyFileError


def format_status(status: dict[str, Any]) -> str:
    """Human-readable lines of a status dict."""
    lines = [f"state            {status.get('state')}"]
    if status.get("scan_id"):
        lines.append(f"scan             {status['scan_id']} (#{status.get('scan_seq')}): "
                     f"{status.get('n_projections_used')}/{status.get('n_projections_expected')} projections")
    centre = status.get("centre")
    if centre:
        line = f"centre           {centre['cor_px']:+.2f} px ({centre['cor_source']}"
        if centre.get("cor_confidence") is not None:
            line += f", confidence {centre['cor_confidence']:.2f}"
            line += "" if centre["cor_confidence"] >= 0.5 else ": LOW, do not trust it"
        lines.append(line + ")")
    wanted = (status.get("settings") or {}).get("ring_filter", "none")
    if status.get("scan_id") and (status.get("ring_filter") or "none") != "none" or wanted != "none":
        lines.append(f"ring filter      {status.get('ring_filter') or 'none'} on the last volume "
                     f"(setting: {wanted})")
    lines.append(f"frames           received {status.get('frames_received', 0)}, "
                 f"rejected {status.get('frames_rejected', 0)}, dropped {status.get('frames_dropped', 0)}")
    ingest = status.get("ingest") or {}
    if ingest:
        lines.append(f"ingest           {ingest.get('state')}, {ingest.get('frames_per_s', 0.0):.1f} frames/s, "
                     f"{ingest.get('bytes_per_s', 0.0) / 1e6:.1f} MB/s, "
                     f"ring {100 * ingest.get('ring_fill', 0.0):.0f}% full, "
                     f"{ingest.get('in_flight', 0)} group(s) in the workers")
    lines.append(f"scans            completed {status.get('scans_completed', 0)}, "
                 f"failed {status.get('scans_failed', 0)}, "
                 f"volumes published {status.get('volumes_published', 0)}")
    workers = status.get("workers") or []
    alive = sum(1 for w in workers if w.get("alive"))
    lines.append(f"workers          {alive}/{len(workers)} alive, "
                 f"restarts {status.get('worker_restarts', 0)}; "
                 f"ingest restarts {status.get('ingest_restarts', 0)}")
    if status.get("settings"):
        lines.append("settings         " + ", ".join(f"{k}={v}" for k, v in status["settings"].items()))
    if status.get("last_error"):
        lines.append(f"last error       {status['last_error']}")
    lines.append(f"daemon           pid {status.get('pid')}, up {status.get('uptime_s', 0):.0f} s")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``holostream status``."""
    add_control_options(parser)
    parser.add_argument("--watch", metavar="SECONDS", nargs="?", type=float, const=1.0,
                        help="repeat every SECONDS (default 1) until Ctrl-C")
    parser.add_argument("--json", action="store_true", help="print the raw JSON status")


def run(args: argparse.Namespace) -> int:
    """Print the status once or repeatedly; 1 when the daemon does not answer."""
    try:
        address, curve = control_address(args), curve_of(args)
    except ValueError as exc:
        print(f"holostream status: {exc}", file=sys.stderr)
        return 2
    try:
        while True:
            try:
                reply = request(address, {"cmd": "status"}, args.timeout, curve=curve)
            except (NoAnswer, KeyFileError) as exc:
                print(f"holostream status: {exc}", file=sys.stderr)
                return 1
            if not reply.get("ok"):
                print(f"holostream status: daemon refused: {reply.get('error')}", file=sys.stderr)
                return 1
            status = reply["status"]
            text = json.dumps(status, indent=None if args.watch else 2) if args.json else format_status(status)
            print(text, flush=True)
            if not args.watch:
                return 0
            if not args.json:
                print(flush=True)
            time.sleep(args.watch)  # the user's chosen refresh period
    except (KeyboardInterrupt, BrokenPipeError):  # Ctrl-C, or the reader (e.g. `head`) left
        return 0
