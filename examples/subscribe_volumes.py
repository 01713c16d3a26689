"""Receive what holostream publishes and print the headers (needs only pyzmq and numpy).

    python examples/subscribe_volumes.py [--address tcp://127.0.0.1:5560] [--save DIR] [--count N]

Messages are ``[topic, JSON header, payload parts...]`` (docs/protocol.md): ``volume`` (one
float32 ``[z, y, x]`` payload), ``preview`` (three float32 central cuts) and ``status``
(header only). With ``--save`` every final volume is written to ``DIR/<scan_id>.npy``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import zmq


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", default="tcp://127.0.0.1:5560", help="holostream's publish (PUB) address")
    p.add_argument("--topics", default="volume,preview,status", help="comma-separated topics")
    p.add_argument("--save", type=Path, help="directory for final volumes (.npy)")
    p.add_argument("--count", type=int, default=0, help="stop after N final volumes (0: never)")
    args = p.parse_args()

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 8)  # a slow subscriber loses messages, never the service
    for topic in args.topics.split(","):
        sub.setsockopt(zmq.SUBSCRIBE, topic.strip().encode())
    sub.connect(args.address)
    finals = 0
    try:
        while True:
            topic, head, *payload = sub.recv_multipart(copy=False)
            header = json.loads(head.bytes)
            kind = topic.bytes.decode()
            if kind == "status":
                print(f"status  {header.get('state')} scan={header.get('scan_id')} "
                      f"received={header.get('frames_received')} rejected={header.get('frames_rejected')}")
                continue
            if kind == "preview":
                cuts = [np.frombuffer(part.buffer, "<f4").reshape(shape)
                        for part, shape in zip(payload, header["shapes"])]
                print(f"preview {header['scan_id']} #{header['seq']} cuts {[c.shape for c in cuts]}")
                continue
            volume = np.frombuffer(payload[0].buffer, "<f4").reshape(header["shape"])
            print(f"volume  {header['scan_id']} #{header['seq']} final={header['final']} "
                  f"{header['n_projections_used']}/{header['n_projections_expected']} projections, "
                  f"shape {header['shape']}, voxel {header['voxel_size_m']:.2e} m, "
                  f"delta in [{volume.min():.3g}, {volume.max():.3g}]")
            if header["final"]:
                finals += 1
                if args.save:
                    args.save.mkdir(parents=True, exist_ok=True)
                    np.save(args.save / f"{header['scan_id']}.npy", volume)
                if args.count and finals >= args.count:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        sub.close(linger=0)
        ctx.term()


if __name__ == "__main__":
    main()
