"""``holostream reconstruct``: an NXtomo scan → an HDF5 volume of δ, offline.

The loop over a whole scan is :func:`reconstruct_scan`, a plain function of a
:class:`~holostream.service.files.nxtomo.ScanData`, so tests and the live-vs-offline comparison
call exactly what the command runs. It uses the live workers' code path:
:class:`~holostream.workers.pipeline.ProjectionPipeline` per angle group (phase-retrieved
in batches) and :class:`~holostream.workers.fbp.VolumeAccumulator`.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time

from holostream.service.offline import reconstruct_scan
from holostream.service.progress import ProgressBar
from holostream.shared.settings import ReconstructionSettings, SettingsError

_log = logging.getLogger(__name__)

#: Command-line option → settings key (same names as the TOML ``[reconstruction]`` table).
_SETTING_OPTIONS = ("binning", "angle_binning", "phase", "iterations", "filter", "pad_mode", "device")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``holostream reconstruct``."""
    parser.add_argument("input", nargs="+",
                        help="NXtomo scan file (.nx/.h5); several: one per propagation distance of "
                             "one sample, the reference first (δ and β are reconstructed)")
    parser.add_argument("-o", "--output", required=True, help="output HDF5 volume")
    parser.add_argument("--entry", help="NXtomo entry (default: the only one)")
    parser.add_argument("--config", help="TOML file; its [reconstruction] table sets defaults")
    parser.add_argument("--binning", type=int, help="pixel binning b×b")
    parser.add_argument("--angle-binning", type=int, help="consecutive projections averaged")
    parser.add_argument("--phase", help="none|paganin|ctf|ap|raar or a chain text")
    parser.add_argument("--iterations", type=int, help="iterations of ap/raar")
    parser.add_argument("--filter", help="ram-lak|shepp-logan|cosine|hann")
    parser.add_argument("--pad-mode", help="edge|reflect")
    parser.add_argument("--device", help="cpu|gpu")
    parser.add_argument("--delta-beta", type=float,
                        help="δ/β of the sample (required unless the file holds it)")
    parser.add_argument("--cor-px", type=float,
                        help="rotation-axis offset from (cols-1)/2, pixels (default: file or 0)")
    parser.add_argument("--batch", type=int, default=8, help="angle groups per batch (default 8)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (there is none unless stderr is a terminal)")
    parser.add_argument("--compression", choices=("none", "gzip", "lz4", "zstd"), default="none",
                        help="compression of the volume (lz4 and zstd need hdf5plugin; default none)")


def _settings(args: argparse.Namespace) -> ReconstructionSettings:
    """Settings from ``--config`` then the command-line options (which win)."""
    from holostream.service.config import load_config

    overrides = {k: getattr(args, k) for k in _SETTING_OPTIONS if getattr(args, k) is not None}
    if args.config is None:
        return ReconstructionSettings.from_dict(overrides)
    return load_config(args.config, overrides={"reconstruction": overrides}).reconstruction


def _fail(message: str) -> int:
    print(f"holostream reconstruct: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Read the scan, reconstruct it, write the volume; 2 on bad input, with one line."""
    from holostream.service.config import ConfigError
    from holostream.service.files.nxtomo import ScanFileError, read_scan

    try:
        settings = _settings(args)
    except (SettingsError, ConfigError) as err:
        return _fail(str(err))
    if args.batch < 1:
        return _fail(f"--batch must be >= 1, got {args.batch}")
    if len(args.input) > 1:
        return _reconstruct_distances(args, settings)
    args.input = args.input[0]
    try:
        scan = read_scan(args.input, args.entry, lazy=True)
    except ScanFileError as err:
        return _fail(str(err))
    try:
        return _reconstruct_file(args, settings, scan)
    finally:
        scan.projections.close()


def _reconstruct_file(args: argparse.Namespace, settings: ReconstructionSettings, scan) -> int:
    """Check the scan against the options, reconstruct, write; the exit code."""
    from holostream.service.files.volume import write_volume
    from holostream.workers import phasing
    from holostream.workers.backend import get_backend

    delta_beta = args.delta_beta if args.delta_beta is not None else scan.delta_beta
    if delta_beta is None:
        return _fail(f"{args.input}: the file has no delta_beta; give --delta-beta")
    if not (math.isfinite(delta_beta) and delta_beta > 0):
        return _fail(f"--delta-beta must be a positive number, got {delta_beta}")
    cor_px = args.cor_px if args.cor_px is not None else (scan.cor_px or 0.0)
    if settings.binning > min(scan.frame_shape):
        return _fail(f"binning {settings.binning} exceeds the frame size {scan.frame_shape}")
    try:  # the worker's full check of the chain: step names and parameters
        phasing.default_chain(settings.phase, settings.iterations, delta_beta)
    except ValueError as err:
        return _fail(f"setting 'phase': {err}")
    try:
        backend = get_backend(settings.device)
    except RuntimeError as err:
        return _fail(str(err))
    progress = None if args.quiet else ProgressBar("reconstruct", unit="group")
    start = time.perf_counter()
    volume, attrs = reconstruct_scan(scan, settings, delta_beta, cor_px, backend,
                                     batch=args.batch, progress=progress)
    attrs["seconds"] = seconds = time.perf_counter() - start
    try:
        write_volume(args.output, volume, attrs, args.compression)
    except (OSError, ValueError) as err:  # ValueError: lz4/zstd without hdf5plugin
        return _fail(f"{args.output}: cannot write ({err})")
    print(f"wrote {args.output}: volume {volume.shape} float32 δ, voxel "
          f"{attrs['voxel_size_m'] * 1e6:.3g} µm, {attrs['n_angle_groups']} angle groups, "
          f"phase {attrs['phase_chain']!r}, {seconds:.1f} s")
    return 0


def _reconstruct_distances(args: argparse.Namespace, settings: ReconstructionSettings) -> int:
    """Several files, one per distance: δ in ``/volume``, β in ``/beta``; the exit code."""
    from holostream.service.files.nxtomo import ScanFileError, read_scan
    from holostream.service.files.volume import append_volume, write_volume
    from holostream.service.offline_distances import DistanceMismatch, reconstruct_distances
    from holostream.workers.backend import get_backend
    from holostream.workers.multiphasing import MultiDistancePhaseRetrieval

    scans = []
    try:
        for path in args.input:
            scans.append(read_scan(path, args.entry, lazy=True))
    except ScanFileError as err:
        return _fail(str(err))
    try:
        reference = scans[0]
        delta_beta = args.delta_beta if args.delta_beta is not None else reference.delta_beta
        if delta_beta is None or not (math.isfinite(delta_beta) and delta_beta > 0):
            return _fail(f"{args.input[0]}: no usable delta_beta in the file; give --delta-beta")
        cor_px = args.cor_px if args.cor_px is not None else (reference.cor_px or 0.0)
        try:  # the chain checked for several distances before any frame is read
            from holostream.workers import phasing

            chain = phasing.default_chain(settings.phase, settings.iterations, delta_beta)
            MultiDistancePhaseRetrieval(chain, (8, 8), 1e-6, [1.0] * len(scans), 17.5, delta_beta,
                                        get_backend("cpu", threads=1))
            backend = get_backend(settings.device)
        except ValueError as err:
            return _fail(f"setting 'phase': {err}")
        except RuntimeError as err:
            return _fail(str(err))
        progress = None if args.quiet else ProgressBar("reconstruct", unit="group")
        start = time.perf_counter()
        try:
            delta, beta, attrs = reconstruct_distances(scans, settings, delta_beta, cor_px, backend,
                                                       batch=args.batch, progress=progress)
        except DistanceMismatch as err:
            return _fail(str(err))
    finally:
        for scan in scans:
            scan.projections.close()
    attrs["seconds"] = seconds = time.perf_counter() - start
    try:
        write_volume(args.output, delta, attrs)
        append_volume(args.output, "beta", beta, "beta")
    except OSError as err:
        return _fail(f"{args.output}: cannot write ({err})")
    print(f"wrote {args.output}: δ and β volumes {delta.shape} float32 from {len(scans)} distances, "
          f"voxel {attrs['voxel_size_m'] * 1e9:.4g} nm, phase {attrs['phase']!r}, "
          f"offsets {attrs['distances']}, {seconds:.1f} s")
    return 0
