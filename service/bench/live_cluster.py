"""Live scans on actors of a Dask cluster: scaling from 1 to 2 actors, bytes moved, engine overhead.

A real daemon (``holostream serve`` child process, loopback ports) reconstructs the same
simulated scan (``--size``² frames, ``--projections``, Paganin + ``--iterations`` AP, so that
phasing and back-projection, the actors' part, dominate) in three set-ups, one after the
other: split mode's one reconstructor process (the one-process baseline), ``[cluster]
actors = 1`` and ``actors = 2`` on a local cluster the daemon starts. The scan is streamed
as fast as ingest takes it; the figure is the time from its first frame to its final volume
on a subscriber, with the CPU seconds each role of the daemon's processes spent meanwhile.
From the daemon's status after each cluster run: the bytes the dispatcher
moved (binned groups out, filtered projections back, partial volumes collected, dark/flat
set-up), per volume, and the engine's overhead per batch (round trip minus the actor's
compute, batches sent to an idle actor: measured on a second scan streamed at ``--paced-fps``,
slow enough that the actors wait for each batch). Efficiency = t(1 actor) / (2 · t(2 actors)).

Run: ``python -m holostream.service.bench.live_cluster --json benchmarks/cpu-live-cluster.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from holostream.service.bench.serving import cpu_name, free_address, serving


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m holostream.service.bench.live_cluster",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128, help="detector frame side (default 128)")
    parser.add_argument("--projections", type=int, default=180, help="projections (default 180)")
    parser.add_argument("--iterations", type=int, default=10, help="AP iterations after Paganin (default 10)")
    parser.add_argument("--batch", type=int, default=8, help="angle groups per actor call (default 8)")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="actor counts to run (1 2)")
    parser.add_argument("--paced-fps", type=float, default=10.0,
                        help="projections per second of the second scan, for the overhead per batch (10)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per set-up; the best is kept (1)")
    parser.add_argument("--json", metavar="FILE", help="write the figures here")
    return parser.parse_args(argv)


def _config(folder: Path, addresses: dict[str, str], batch: int, actors: int) -> Path:
    lines = ["[ingest]", f'address = "{addresses["ingest"]}"', "ring_slots = 64",
             "[publish]", f'address = "{addresses["publish"]}"', "status_interval_s = 0.25",
             "[control]", f'address = "{addresses["control"]}"', "[metrics]", 'address = ""',
             "[workers]", "count = 2", 'device = "cpu"', 'mode = "split"', f"batch = {batch}",
             "[reconstruction]", "publish_interval_s = 1.0"]
    if actors:
        lines += ["[cluster]", f"actors = {actors}"]
    path = folder / f"live-cluster-{actors}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _status(control: str) -> dict[str, Any]:
    from holostream.service.clients.control import request

    return request(control, {"cmd": "status"}, 5.0)["status"]


def _wait(condition, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)  # polling period, bounded by the deadline
    raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")


def _final(sub: Any, scan_id: str, timeout_s: float) -> tuple[dict[str, Any], Any, int]:
    """The final volume of ``scan_id`` on ``sub``: its header, its array, volumes published."""
    from holostream.service.clients.subscriber import decode

    volumes, deadline = 0, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not sub.poll(1000):
            continue
        _, header, arrays = decode(sub.recv_multipart())
        if header.get("scan_id") != scan_id:
            continue
        volumes += 1
        if header["final"]:
            return header, arrays[0], volumes
    raise RuntimeError(f"no final volume of {scan_id} within {timeout_s} s")


def _cpu_seconds(daemon_pid: int, status: dict[str, Any]) -> dict[str, float]:
    """CPU seconds (user + system) so far of the daemon's processes, by role."""
    import psutil

    roles = {daemon_pid: "daemon", status["ingest_pid"]: "ingest", status["reconstructor"]["pid"]: "reconstructor"}
    roles.update({w["pid"]: "workers" for w in status["workers"]})
    cluster = status["reconstructor"]["cluster"] or {}
    roles.update({a["pid"]: "actors" for a in cluster.get("actors", [])})
    out: dict[str, float] = {}
    root = psutil.Process(daemon_pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:  # exited meanwhile
            continue
        role = roles.get(proc.pid, "other")
        out[role] = out.get(role, 0.0) + times.user + times.system
    return out


def run_once(args: argparse.Namespace, scan: Any, paced: Any, actors: int, folder: Path) -> dict[str, Any]:
    """One daemon, two scans: seconds to the first's final volume, that volume, the status after
    each (the second, paced, for the overhead per batch)."""
    from holostream.service.clients.control import NoAnswer
    from holostream.service.clients.detector import stream_scan

    addresses = {k: free_address() for k in ("ingest", "publish", "control")}
    log_path = folder / f"serve-{actors}.log"
    config = str(_config(folder, addresses, args.batch, actors))
    with serving(["--config", config], log_path, addresses["control"]) as daemon:
        sub = zmq.Context.instance().socket(zmq.SUB)
        try:
            def ready():
                try:
                    status = _status(addresses["control"])
                except NoAnswer:
                    if daemon.poll() is not None:
                        raise RuntimeError(f"the daemon exited; see {log_path}") from None
                    return None
                if not status["ingest_reports"] or not status["reconstructor"]["alive"]:
                    return None
                cluster = status["reconstructor"]["cluster"]
                return not actors or (cluster and sum(a["ready"] for a in cluster["actors"]) >= actors)
            _wait(ready, 180, f"the daemon and {actors} actor(s)")
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"volume")
            sub.connect(addresses["publish"])
            time.sleep(0.5)  # a SUB socket misses what is published before it has joined
            scan_id = f"bench_{actors}"
            overrides = {"phase": "ap", "iterations": args.iterations, "binning": 1}
            cpu_before = _cpu_seconds(daemon.pid, _status(addresses["control"]))
            start = time.perf_counter()
            streamer = threading.Thread(target=stream_scan, args=(addresses["ingest"], scan, scan_id),
                                        kwargs={"reconstruction": overrides, "timeout_s": 60.0}, daemon=True)
            streamer.start()
            header, volume, volumes = _final(sub, scan_id, 600)
            seconds = time.perf_counter() - start
            streamer.join(30)

            def settled(groups):
                def check():
                    status = _status(addresses["control"])
                    cluster = status["reconstructor"]["cluster"]
                    return status if not actors or (cluster and cluster["groups_done"] >= groups) else None
                return check
            status = _wait(settled(args.projections), 30, "the dispatcher's report")
            cpu = {role: round(seconds - cpu_before.get(role, 0.0), 2)
                   for role, seconds in _cpu_seconds(daemon.pid, status).items()}
            overhead = None
            if actors:
                stream_scan(addresses["ingest"], paced, f"paced_{actors}", args.paced_fps,
                            reconstruction=overrides, timeout_s=60.0)
                _final(sub, f"paced_{actors}", 600)
                cluster = _wait(settled(args.projections + len(paced.angles_deg)), 30,
                                "the dispatcher's report")["reconstructor"]["cluster"]
                overhead = {"median_ms_per_batch": cluster["overhead_ms"], "batches": cluster["overhead_batches"]}
        finally:
            sub.close()
    return {"actors": actors, "seconds": seconds, "volumes_published": volumes,
            "n_projections_used": header["n_projections_used"], "volume": volume,
            "cluster": status["reconstructor"]["cluster"], "engine_overhead": overhead,
            "cpu_seconds_by_role": cpu}


def angle_split_bytes(n_groups: int, rows_b: int, cols_b: int, actors: int, collects: float,
                      raw_side: int) -> dict[str, int]:
    """Bytes the dispatcher moves for one scan in angle split, as built (``service/daemon/actors.py``, ``dispatcher.py``).

    Every binned group goes to one actor and comes back filtered (the daemon keeps the
    sinogram: final re-weighting, live re-centring); each actor sends its partial volume
    ``collects`` times (once per collect: ``[cluster] collect_interval_s`` while busy, and at
    the end); each actor gets the dark and flat means (float32 ``raw_side``²) once per scan.
    The bench checks this against what the dispatcher counted.
    """
    projections = n_groups * rows_b * cols_b * 4
    partials = int(round(collects * actors)) * rows_b * cols_b * cols_b * 4
    return {"binned": projections, "filtered": projections, "partials": partials,
            "setup": actors * 2 * raw_side * raw_side * 4}


def reference_estimate(remote_actors: int = 2, collects: int = 1, n_groups: int = 833, side: int = 682,
                       raw_side: int = 2048) -> dict[str, Any]:
    """Node-link bytes per volume of the reference workload, 4 GPUs on 2 nodes (2 remote actors).

    Only the remote actors' share crosses the link: half of the groups out and back, their
    two partial volumes per collect. ``collects = 1``: live volumes only from the ingest
    node's actors, or a final volume only. Links: at one volume per 3 s and per 0.25 s.
    """
    share = angle_split_bytes(n_groups * remote_actors // 4, side, side, remote_actors, collects, raw_side)
    total = sum(share.values())
    return {"remote_actors": remote_actors, "collects_per_volume": collects, "bytes": share,
            "total_bytes": total, "gbit_s_at_3s_per_volume": total * 8 / 3 / 1e9,
            "gbit_s_at_0.25s_per_volume": total * 8 / 0.25 / 1e9}


def _summary(run: dict[str, Any], reference: np.ndarray) -> dict[str, Any]:
    out = {k: v for k, v in run.items() if k != "volume"}
    scale = float(np.abs(reference).max())
    out["max_abs_diff_vs_one_process_rel"] = float(np.abs(run["volume"] - reference).max()) / scale
    cluster = run["cluster"]
    if cluster:
        moved = sum(cluster["bytes"].values())
        out["bytes_per_volume"] = {**cluster["bytes"], "total": moved}
        out["volume_bytes"] = int(run["volume"].nbytes)
        rows, cols = run["volume"].shape[:2]
        collects = cluster["bytes"]["partials"] / run["volume"].nbytes / run["actors"]
        out["collects_per_actor"] = collects
        out["model_bytes"] = angle_split_bytes(run["n_projections_used"], rows, cols, run["actors"], collects,
                                               raw_side=cols)
    return out


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    from holostream.service.clients.detector import simulated_scan_data

    scan = simulated_scan_data(args.size, args.projections)
    paced = simulated_scan_data(args.size, 40, seed=1)
    runs: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="holostream-live-cluster-") as tmp:
        for actors in [0, *args.actors]:
            for _ in range(args.repeat):
                run = run_once(args, scan, paced, actors, Path(tmp))
                print(f"actors={actors}: {run['seconds']:.2f} s to the final volume", file=sys.stderr, flush=True)
                if actors not in runs or run["seconds"] < runs[actors]["seconds"]:
                    runs[actors] = run
    reference = runs[0]["volume"]
    result = {"benchmark": "live scan on Dask actors: first frame → final volume on a subscriber",
              "machine": {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)),
                          "load_average_at_end": list(os.getloadavg())},
              "workload": {"size": args.size, "projections": args.projections, "phase": "ap",
                           "iterations": args.iterations, "batch": args.batch, "workers": 2},
              "runs": {str(a): _summary(r, reference) for a, r in runs.items()}}
    result["reference_4_gpus_2_nodes"] = [reference_estimate(collects=c) for c in (1, 3)]
    if 1 in runs and 2 in runs:
        result["speed_up_1_to_2"] = runs[1]["seconds"] / runs[2]["seconds"]
        result["efficiency_1_to_2"] = result["speed_up_1_to_2"] / 2
        result["one_actor_vs_one_process"] = runs[1]["seconds"] / runs[0]["seconds"]
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
