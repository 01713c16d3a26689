"""Send one control command to holostream and print the JSON reply (needs only pyzmq).

    python examples/control_client.py status
    python examples/control_client.py config
    python examples/control_client.py set binning=2 phase=ctf      # applies from the next scan
    python examples/control_client.py abort
    python examples/control_client.py republish

Requests and replies are JSON objects over REQ/REP (docs/protocol.md); every reply has
``"ok": true`` or ``"ok": false`` with an ``"error"``.
"""

from __future__ import annotations

import argparse
import json
import sys

import zmq


def value(text: str):
    """``2`` → 2, ``0.5`` → 0.5, ``true`` → True, anything else stays text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["status", "config", "set", "abort", "republish"])
    p.add_argument("params", nargs="*", help="for set: KEY=VALUE ...")
    p.add_argument("--address", default="tcp://127.0.0.1:5570", help="holostream's control (REP) address")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the reply")
    args = p.parse_args()

    request = {"cmd": args.command}
    if args.command == "set":
        pairs = [param.split("=", 1) for param in args.params]
        if not pairs or any(len(pair) != 2 for pair in pairs):
            p.error("set needs KEY=VALUE arguments, e.g. set binning=2")
        request["params"] = {key: value(text) for key, text in pairs}

    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(args.address)
    try:
        req.send_json(request)
        if not req.poll(int(args.timeout * 1000)):  # REQ would wait forever for a dead service
            print(f"no reply from {args.address} within {args.timeout} s", file=sys.stderr)
            return 2
        reply = req.recv_json()
    finally:
        req.close()
        ctx.term()
    print(json.dumps(reply, indent=2))
    return 0 if reply.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
