"""``holostream abort``: drop the scan being reconstructed, as a detector's ``scan_abort`` would."""

from __future__ import annotations

import argparse

from holostream.service.clients.control import add_control_options, ask


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``holostream abort``."""
    add_control_options(parser)


def run(args: argparse.Namespace) -> int:
    """Send ``abort``; 1 when there is no scan to abort or no answer."""
    reply = ask(args, "abort", {"cmd": "abort"})
    if reply is None:
        return 1
    print(f"aborted {reply.get('aborted')}")
    return 0
