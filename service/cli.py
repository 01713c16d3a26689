"""The ``holostream`` command: one sub-command per module, imported only when used.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from holostream import __version__
from holostream.workers.backend import DeviceUnavailable

#: Exit status of any command asked to compute on a GPU where none is usable (the reason on stderr).
EXIT_NO_DEVICE = 4

# command -> (module under holostream.service, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("commands.serve", "run the live reconstruction daemon"),
    "status": ("commands.status", "print the daemon's status (one-shot or --watch)"),
    "set": ("commands.set", "change the daemon's reconstruction settings (from the next scan)"),
    "abort": ("commands.abort", "drop the scan being reconstructed"),
    "republish": ("commands.republish", "publish the latest final volume again"),
    "config": ("commands.config", "print the daemon's configuration (or the built-in defaults) as TOML"),
    "subscribe": ("commands.subscribe", "receive published volumes; print headers, save HDF5/PNG"),
    "stream": ("commands.stream", "play an NXtomo file or a simulated scan into the ingest socket"),
    "simulate": ("commands.simulate", "write a simulated near-field holo-tomography scan (NXtomo)"),
    "reconstruct": ("commands.reconstruct", "reconstruct an NXtomo scan offline into an HDF5 volume"),
    "bench": ("commands.bench", "measure the speed of each stage and of the whole chain"),
    "demo": ("commands.demo", "service + simulated detector + subscriber in one go"),
    "view": ("commands.view", "serve a web page of the live scan (slices, progress, rates, rejects)"),
    "keys": ("commands.keys", "make CURVE key pairs for the daemon and its clients"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """Build the parser; only the chosen sub-command's module is imported."""
    parser = argparse.ArgumentParser(
        prog="holostream",
        description="Live reconstruction of near-field holo-tomography: `holostream COMMAND --help` for each.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    parser.add_argument("--version", action="version", version=f"holostream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(f"holostream.service.{module}").add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``holostream`` script; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    if args.command == "serve":
        level = min(level, logging.INFO)
    # journald stamps each line itself; anywhere else the time is part of the line
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(level=level, stream=sys.stderr, format=stamp + "%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(f"holostream.service.{COMMANDS[args.command][0]}")
    try:
        return int(module.run(args) or 0)
    except DeviceUnavailable as exc:  # --device gpu, [workers] device = "gpu": why, in one line
        print(f"holostream {args.command}: {exc}", file=sys.stderr)
        return EXIT_NO_DEVICE
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback (128 + SIGINT, as shells do)
        print(f"\nholostream {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
