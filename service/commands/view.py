"""``holostream view``: serve a web page of the live scan (see docs/viewer.md).

The page and its server are :mod:`holostream.service.view`; this module is the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from holostream.service.clients.control import add_curve_options, curve_of
from holostream.service.clients.subscriber import DEFAULT_PUBLISH

DEFAULT_LISTEN = "127.0.0.1:5580"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as ``(host, port)``; ValueError with the reason."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host.strip("[]"), int(port)


def connect_address(bound: str) -> str:
    """Where to connect to reach a socket bound at ``bound`` (``*``/``0.0.0.0`` → loopback)."""
    return bound.replace("://*:", "://127.0.0.1:").replace("://0.0.0.0:", "://127.0.0.1:")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``holostream view``."""
    parser.add_argument("--publish", metavar="ADDR",
                        help=f"PUB address of the daemon (default: [publish] address of --config, "
                             f"else {DEFAULT_PUBLISH})")
    parser.add_argument("--control", metavar="ADDR",
                        help="control (REP) address of the daemon, for re-tuning from the page (default: "
                             "[control] address of --config; without either the page only watches)")
    parser.add_argument("--config", metavar="FILE",
                        help="the daemon's TOML configuration, to find its PUB and control addresses")
    parser.add_argument("--listen", metavar="HOST:PORT", default=DEFAULT_LISTEN,
                        help=f"where the page is served (default {DEFAULT_LISTEN}: this machine only; "
                             "0.0.0.0:PORT for every interface)")
    parser.add_argument("--previews-only", action="store_true",
                        help="subscribe to previews instead of whole volumes (less traffic; "
                             "no slice of the user's choice)")
    add_curve_options(parser)


def run(args: argparse.Namespace) -> int:
    """Run the viewer; 0 after Ctrl-C or SIGTERM, 1 when it cannot listen, 2 on bad options."""
    try:
        host, port = parse_listen(args.listen)
        publish, control = args.publish, args.control
        if (publish is None or control is None) and args.config:
            from holostream.service.config import ConfigError, load_config
            try:
                config = load_config(args.config)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
            publish = publish or connect_address(config.publish.address)
            control = control or connect_address(config.control.address)
        curve = curve_of(args)
        if curve is not None:  # checked now: the SUB task would only log it
            for path in curve:
                if not Path(path).is_file():
                    raise ValueError(f"no key file {path}")
    except ValueError as exc:
        print(f"holostream view: {exc}", file=sys.stderr)
        return 2
    try:
        from holostream.service.view.server import Viewer, serve
    except ModuleNotFoundError as exc:
        if exc.name != "aiohttp":
            raise
        print("holostream view: needs aiohttp: pip install 'holostream[view]'", file=sys.stderr)
        return 2
    viewer = Viewer(publish or DEFAULT_PUBLISH, volumes=not args.previews_only, control=control, curve=curve)
    try:
        asyncio.run(serve(viewer, host, port))
    except OSError as exc:
        print(f"holostream view: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
