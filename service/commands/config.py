"""``holostream config``: the configuration the daemon runs with, as TOML (or JSON).

``--defaults`` prints the built-in defaults instead, without asking a daemon; with
``--config FILE`` (and no daemon) ``--check`` validates that file and prints what it means.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from holostream.service.clients.control import add_control_options, ask


def to_toml(config: dict[str, dict[str, Any]]) -> str:
    """``{section: {key: value}}`` as TOML text (values are numbers, booleans, text or lists)."""
    lines = []
    for section, table in config.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items() if value is not None]
        lines.append("")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``holostream config``."""
    add_control_options(parser)
    parser.add_argument("--defaults", action="store_true",
                        help="print the built-in defaults (no daemon needed)")
    parser.add_argument("--check", action="store_true",
                        help="validate --config FILE and print it with every default filled in (no daemon needed)")
    parser.add_argument("--json", action="store_true", help="JSON instead of TOML")


def run(args: argparse.Namespace) -> int:
    """Print a configuration; 1 when the daemon does not answer, 2 on an invalid file."""
    if args.defaults or args.check:
        from holostream.service.config import ConfigError, load_config
        if args.check and not args.config:
            print("holostream config: --check needs --config FILE", file=sys.stderr)
            return 2
        try:
            config = load_config(args.config if args.check else None).to_dict()
        except ConfigError as exc:
            print(f"holostream config: {exc}", file=sys.stderr)
            return 2
    else:
        reply = ask(args, "config", {"cmd": "config"})
        if reply is None:
            return 1
        config = reply["config"]
    print(json.dumps(config, indent=2) if args.json else to_toml(config), end="" if not args.json else "\n")
    return 0
