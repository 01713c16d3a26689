"""``holostream bench``: the speed of each stage and of the whole chain, with peers (JSON report)."""

from __future__ import annotations

import json
import os

from holostream.service.bench.chain import (
    PRESETS,
    chain_summary,
    machine,
    peer_comparison,
    pool_binning_throughput,
    stage_timings,
)
from holostream.service.bench.fbp import compare_fbp_with_astra


def add_arguments(parser) -> None:
    """Options of ``holostream bench``."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                        help="workload size (default: demo; id16b = 833 projections of 682², 682³ volume)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--batch", type=int, default=None,
                        help="projections timed per stage (default: 16 on CPU, 64 on GPU); "
                             "per-volume figures scale the measured rate to the preset's count")
    parser.add_argument("--iterations", type=int, default=None, help="AP iterations (default: preset's)")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs per figure")
    parser.add_argument("--no-peers", action="store_true", help="skip nabu and astra-toolbox")
    parser.add_argument("--fbp-slices", type=int, default=32,
                        help="volume rows of the FBP comparison with astra-toolbox (default 32: astra "
                             "takes 1-3 s per 682² slice per core)")
    parser.add_argument("--fbp-only", action="store_true",
                        help="only the FBP comparison with astra-toolbox (no stage timings, no other peers)")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    parser.add_argument("--ingest", action="store_true",
                        help="also measure ingest throughput of 2048x2048 uint16 frames against a bare "
                             "pyzmq PUSH/PULL loop (separate sender process)")
    parser.add_argument("--ingest-frames", type=int, default=200, help="frames per ingest run (default 200)")
    parser.add_argument("--phase-peers", action="store_true",
                        help="also score our phase retrieval against HoToPy's (when installed) on simulated "
                             "holograms: error, correlation, scale and time per projection")
    parser.add_argument("--cluster", action="store_true",
                        help="also measure the distributed engine (Dask; Ray too if installed): start-up, "
                             "overhead per angle-group task, series scaling from 1 to 2 worker processes")
    parser.add_argument("--multidistance", action="store_true",
                        help="also reconstruct a simulated 4-distance mixed-material scan with 1-4 distances "
                             "and each chain: correlation with the true δ and β, ms per angle per stage, "
                             "HoToPy's multi-distance CTF beside (when installed)")
    parser.add_argument("--rings", action="store_true",
                        help="also compare the ring filters with and without phase retrieval on simulated "
                             "scans with bad columns: ours and nabu's (when installed), ring reduction and "
                             "correlation with the truth")
    parser.add_argument("--md-size", type=int, default=128, help="--multidistance frame size (128)")
    parser.add_argument("--md-angles", type=int, default=180, help="--multidistance angles (180)")
    parser.add_argument("--retune", choices=("pool", "split"), nargs="?", const="pool", default=None,
                        metavar="MODE", help="only the re-tuning latency of a real daemon (pool or split "
                        "mode) at demo size: centre, filter (and δ/β in split) of a live and a completed "
                        "scan (service/bench/retune.py)")
    parser.add_argument("--pool", type=int, nargs="?", const=0, default=None, metavar="N",
                        help="also measure dark/flat + 3x3 + 3-angle binning of 2048² uint16 frames on N "
                             "processes at once (default N: all cores), in GB/s of raw frames")


def run(args) -> int:
    """Run the benchmark and print its table and JSON report."""
    from holostream.service.progress import ProgressBar
    from holostream.workers.backend import get_backend

    backend = get_backend(args.device)
    preset = dict(PRESETS[args.preset])
    iterations = args.iterations if args.iterations is not None else preset["iterations"]
    batch = args.batch or (64 if args.device == "gpu" else 16)
    report = {"preset": args.preset, "workload": preset, "device": args.device, "machine": machine(),
              "batch": batch, "iterations": iterations}
    if args.device == "gpu":
        report["machine"]["gpu"] = backend.xp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    if args.retune:  # a daemon of its own for minutes: not a section of the stage report
        from holostream.service.bench.retune import main as retune_main

        return retune_main(["--mode", args.retune] + (["--json", args.json] if args.json else []))
    if args.fbp_only:
        report["peers"] = {"fbp_vs_astra": _fbp_vs_astra(preset, args)}
        return _emit(report, args.json)
    sections = 1 + bool(args.phase_peers) + (args.pool is not None) + bool(args.ingest) + bool(args.cluster) \
        + bool(args.multidistance) + bool(args.rings) \
        + (not args.no_peers and args.device == "cpu")
    progress, done = ProgressBar("bench", unit="section"), 0
    stages = stage_timings(backend, preset, batch, iterations, args.repeat)
    report["stages"] = stages
    progress(done := done + 1, sections)
    report["chain"] = chain_summary(stages, preset, iterations)
    if args.phase_peers:
        from holostream.service.bench.phase import compare_phase_retrieval

        report["phase_peers"] = compare_phase_retrieval(repeat=args.repeat)
        progress(done := done + 1, sections)
    if args.multidistance:
        import sys

        from holostream.service.bench.multidistance import run_multidistance

        report["multidistance"] = run_multidistance(
            args.md_size, args.md_angles, log=lambda line: print(line, file=sys.stderr, flush=True))
        progress(done := done + 1, sections)
    if args.rings:
        import sys

        from holostream.service.bench.rings import compare_ring_filters

        report["rings"] = compare_ring_filters(log=lambda line: print(line, file=sys.stderr, flush=True))
        progress(done := done + 1, sections)
    if args.pool is not None:
        report["pool_binning"] = pool_binning_throughput(args.pool or len(os.sched_getaffinity(0)))
        progress(done := done + 1, sections)
    if args.ingest:
        from holostream.service.bench.ingest import compare

        report["ingest"] = compare(args.ingest_frames, repeat=args.repeat)
        progress(done := done + 1, sections)
    if args.cluster:
        from holostream.service.bench.cluster import cluster_report

        report["cluster"] = cluster_report(args.repeat)
        progress(done := done + 1, sections)
    if not args.no_peers and args.device == "cpu":
        report["peers"] = peer_comparison(preset["size"], args.repeat)
        report["peers"]["fbp_vs_astra"] = _fbp_vs_astra(preset, args)
        progress(done := done + 1, sections)
    return _emit(report, args.json)


def _fbp_vs_astra(preset: dict, args) -> dict:
    """Our FBP against astra's CPU FBP at the preset's size, at 1 thread and all cores each."""
    return compare_fbp_with_astra(preset["size"], min(preset["n_projections"], 360), args.fbp_slices,
                                  len(os.sched_getaffinity(0)), args.repeat)


def _emit(report: dict, path: str | None) -> int:
    """Print the report as a table and as JSON (and write the JSON to ``path``)."""
    from holostream.service.bench.table import format_report

    # other jobs on the machine slow every figure down: say how busy it was, at both ends
    report["machine"]["load_average_at_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(format_report(report), end="\n\n")  # for people; the JSON below (and --json FILE) for tools
    print(text)
    if path:
        with open(path, "w") as fh:
            fh.write(text + "\n")
    return 0
