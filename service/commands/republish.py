"""``holostream republish``: publish the latest final volume again (for a subscriber that missed it)."""

from __future__ import annotations

import argparse

from holostream.service.clients.control import add_control_options, ask


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``holostream republish``."""
    add_control_options(parser)


def run(args: argparse.Namespace) -> int:
    """Send ``republish``; 1 when there is nothing to republish or no answer."""
    reply = ask(args, "republish", {"cmd": "republish"})
    if reply is None:
        return 1
    print(f"republished {reply.get('scan_id')} volume {reply.get('seq')}" + (" and its beta" if reply.get("beta") else ""))
    return 0
