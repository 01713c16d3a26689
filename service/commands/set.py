"""``holostream set KEY=VALUE ...``: change the daemon's reconstruction settings.

They apply from the next scan (PROTOCOL.md, control command ``set``). ``cor_px`` and
``filter`` also re-tune the scan being reconstructed (from its next volume on, made at once)
or, with none, the last completed one (its final volume again): ``holostream set
cor_px=3.5 filter=hann`` (docs/protocol.md, "Re-tuning"). Values are read as JSON when they
parse (``2``, ``0.5``, ``true``), else taken as text (``phase=ap``, ``filter=hann``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from holostream.service.clients.control import add_control_options, ask


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``["binning=2", "phase=ap"]`` as ``{"binning": 2, "phase": "ap"}``; ValueError with the reason."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{item!r} is not KEY=VALUE")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        params[key.strip()] = value
    return params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``holostream set``."""
    parser.add_argument("assignments", nargs="+", metavar="KEY=VALUE",
                        help="settings to change, e.g. binning=2 phase=ap filter=hann publish_interval_s=1; "
                             "cor_px and filter also re-tune the current (or the last) scan")
    add_control_options(parser)
    parser.add_argument("--json", action="store_true", help="print the daemon's JSON reply")


def run(args: argparse.Namespace) -> int:
    """Send ``set``; print the settings now in force. 1 when refused or unanswered, 2 on bad input."""
    try:
        params = parse_assignments(args.assignments)
    except ValueError as exc:
        print(f"holostream set: {exc}", file=sys.stderr)
        return 2
    reply = ask(args, "set", {"cmd": "set", "params": params})
    if reply is None:
        return 1
    if args.json:
        print(json.dumps(reply, indent=2))
    else:
        settings = reply.get("settings") or {}
        print(f"settings ({reply.get('applies', 'from the next scan')}): "
              + ", ".join(f"{k}={v}" for k, v in settings.items()))
        if reply.get("retune_applies"):
            changed = [f"{k}={reply['cor_px'] if k == 'cor_px' else params[k]}" for k in reply.get("retuned", [])]
            print(f"re-tuned scan {reply.get('scan_id')}: {', '.join(changed)} ({reply['retune_applies']})")
        for key, why in (reply.get("not_retuned") or {}).items():
            print(f"{key} not re-tuned for scan {reply.get('scan_id')}: {why}")
    return 0
