"""``holostream serve``: read the configuration and run the live daemon until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from holostream.service.config import ConfigError, load_config
from holostream.service.daemon.curve import KeyFileError
from holostream.service.daemon.main import Daemon
from holostream.service.files.volume import check_writable


# ---- command line ------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``holostream serve``."""
    parser.add_argument("--config", metavar="FILE", help="TOML configuration (deploy/holostream.toml)")
    parser.add_argument("--ingest", metavar="ADDR", help="PULL address, overrides [ingest] address")
    parser.add_argument("--publish", metavar="ADDR", help="PUB address, overrides [publish] address")
    parser.add_argument("--control", metavar="ADDR", help="REP address, overrides [control] address")
    parser.add_argument("--workers", metavar="N", type=int,
                        help="worker processes, overrides [workers] count")
    parser.add_argument("--metrics", metavar="HOST:PORT",
                        help='Prometheus endpoint, overrides [metrics] address ("" turns it off)')


def run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM/SIGINT.

    Exit status: 0 clean stop, 1 cannot start (or children keep dying), 2 bad configuration
    (including an unwritable output_dir), 3 an address is in use, 4 ``device = "gpu"`` and
    no usable GPU (the reason on stderr; ``cli.main``).
    """
    overrides: dict[str, dict[str, Any]] = {}
    for section in ("ingest", "publish", "control"):
        if getattr(args, section):
            overrides[section] = {"address": getattr(args, section)}
    if args.workers is not None:
        overrides["workers"] = {"count": args.workers}
    if args.metrics is not None:
        overrides["metrics"] = {"address": args.metrics}
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"holostream serve: configuration error: {exc}", file=sys.stderr)
        return 2
    if config.publish.output_dir:  # found now, not when the first scan's volume is lost
        try:
            check_writable(config.publish.output_dir)
        except OSError as exc:
            print(f"holostream serve: configuration error: publish.output_dir: {config.publish.output_dir} "
                  f"is not writable: {exc.strerror or exc}", file=sys.stderr)
            return 2
    if not getattr(args, "verbose", 0):
        logging.getLogger().setLevel(config.service.log_level.upper())
    try:
        daemon = Daemon(config)
    except KeyFileError as exc:
        print(f"holostream serve: configuration error: security: {exc}", file=sys.stderr)
        return 2
    return daemon.run()
