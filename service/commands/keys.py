"""``holostream keys``: make CURVE key pairs for the daemon and its clients.

``holostream keys /etc/holostream/keys server`` writes ``server.key`` (public, give it to
clients) and ``server.key_secret`` (mode 0600, the daemon's ``[security] server_key``).
Client pairs are made the same way; copy each client's ``.key`` into the daemon's
``[security] client_keys`` directory, and into ``admin_keys`` for clients that may ``set``
and ``abort``. See docs/security.md.
"""

from __future__ import annotations

import argparse
import sys

from holostream.service.daemon.curve import KeyFileError, make_key_pair


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="where to write NAME.key and NAME.key_secret (made if missing)")
    parser.add_argument("names", nargs="+", metavar="NAME", help="one key pair per name, e.g. server beamline-pc")


def run(args: argparse.Namespace) -> int:
    for name in args.names:
        try:
            public, secret = make_key_pair(args.directory, name)
        except (KeyFileError, OSError) as exc:
            print(f"holostream keys: {exc}", file=sys.stderr)
            return 2
        print(f"{name}: public {public}  secret {secret}")
    return 0
