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
from holostream.shared.settings import RING_FILTERS, ReconstructionSettings, SettingsError

_log = logging.getLogger(__name__)

#: Command-line option → settings key (same names as the TOML ``[reconstruction]`` table).
_SETTING_OPTIONS = ("binning", "angle_binning", "phase", "iterations", "filter", "pad_mode", "device",
                    "ring_filter")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``holostream reconstruct``."""
    parser.add_argument("input", nargs="+",
                        help="NXtomo scan file (.nx/.h5); several: one per propagation distance of one sample, "
                             "the reference first (δ and β are reconstructed); with --series: the scans of a "
                             "series (files, folders, globs), one volume each")
    parser.add_argument("-o", "--output", required=True, help="output HDF5 volume (with --series: a folder)")
    parser.add_argument("--entry", help="NXtomo entry (default: the only one)")
    parser.add_argument("--config", help="TOML file; its [reconstruction] table sets defaults")
    parser.add_argument("--binning", type=int, help="pixel binning b×b")
    parser.add_argument("--angle-binning", type=int, help="consecutive projections averaged")
    parser.add_argument("--phase", help="none|paganin|ctf|ap|raar or a chain text")
    parser.add_argument("--iterations", type=int, help="iterations of ap/raar")
    parser.add_argument("--filter", help="ram-lak|shepp-logan|cosine|hann")
    parser.add_argument("--pad-mode", help="edge|reflect")
    parser.add_argument("--device", help="cpu|gpu")
    parser.add_argument("--ring-filter", help="ring (stripe) removal: "
                        + "|".join(RING_FILTERS) + " (default none)")
    parser.add_argument("--delta-beta", type=float,
                        help="δ/β of the sample (required unless the file holds it)")
    parser.add_argument("--cor-px", type=_cor_option, metavar="PX|auto",
                        help="rotation-axis offset from (cols-1)/2, unbinned pixels, or 'auto' to "
                             "estimate it (default: the file's x_rotation_axis_pixel_position, "
                             "else auto)")
    parser.add_argument("--batch", type=int, default=8, help="angle groups per batch (default 8)")
    parser.add_argument("--slices", type=_slices_option, metavar="AXIS:I,...",
                        help="quick look: only these slices of the volume (e.g. z:32,y:64; indices of the "
                             "whole binned volume), written as datasets of OUTPUT and as PNGs beside it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (there is none unless stderr is a terminal)")
    parser.add_argument("--compression", choices=("none", "gzip", "lz4", "zstd"), default="none",
                        help="compression of the volume (lz4 and zstd need hdf5plugin; default none)")
    series = parser.add_argument_group("series of scans (one volume each, restartable: done scans are skipped)")
    series.add_argument("--series", action="store_true",
                        help="every input names scans of a series: files, folders of .nx/.h5 files, globs")
    series.add_argument("--cluster", metavar="ADDR",
                        help="run the series on a Dask scheduler (tls://host:8786), or 'local' for a cluster "
                             "of worker processes here; default: one scan after the other in this process")
    series.add_argument("--cluster-workers", type=int, default=2, metavar="N",
                        help="worker processes of --cluster local (default 2)")
    series.add_argument("--cluster-tls", metavar="DIR",
                        help="folder with ca.pem, cert.pem, key.pem for a tls:// scheduler")


def _cor_option(text: str) -> float | str:
    """``--cor-px``: a finite number of pixels or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels or 'auto', got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _slices_option(text: str) -> list[tuple[str, int]]:
    from holostream.service.slices import parse_slices

    try:
        return parse_slices(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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
    if args.series or args.cluster:
        from holostream.service.cluster.series import run_command

        return run_command(args)
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
    # None: estimate (asked for, or the file has no axis position).
    cor_px = args.cor_px if args.cor_px is not None else scan.cor_px
    cor_px = None if cor_px == "auto" else cor_px
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
    if args.slices:
        return _quick_look(args, settings, scan, delta_beta, cor_px, backend)
    progress = None if args.quiet else ProgressBar("reconstruct", unit="group")
    start = time.perf_counter()
    volume, attrs = reconstruct_scan(scan, settings, delta_beta, cor_px, backend,
                                     batch=args.batch, progress=progress)
    attrs["seconds"] = seconds = time.perf_counter() - start
    try:
        write_volume(args.output, volume, attrs, args.compression)
    except (OSError, ValueError) as err:  # ValueError: lz4/zstd without hdf5plugin
        return _fail(f"{args.output}: cannot write ({err})")
    centre = f"centre {attrs['cor_px']:+.2f} px ({attrs['cor_source']}"
    if attrs.get("cor_confidence") is not None:
        centre += f", confidence {attrs['cor_confidence']:.2f}"
        if attrs["cor_confidence"] < 0.5:
            centre += ": LOW, check it or give --cor-px"
    print(f"wrote {args.output}: volume {volume.shape} float32 δ, voxel "
          f"{attrs['voxel_size_m'] * 1e6:.3g} µm, {attrs['n_angle_groups']} angle groups, "
          f"phase {attrs['phase_chain']!r}, {centre}), {seconds:.1f} s")
    return 0


def _quick_look(args: argparse.Namespace, settings: ReconstructionSettings, scan, delta_beta: float,
                cor_px, backend) -> int:
    """``--slices``: reconstruct and write only the asked slices (HDF5 datasets and PNGs)."""
    from pathlib import Path

    import h5py

    from holostream.service.commands.subscribe import write_png
    from holostream.service.slices import reconstruct_slices

    start = time.perf_counter()
    try:
        images, attrs = reconstruct_slices(scan, settings, delta_beta, cor_px, args.slices, backend,
                                           batch=args.batch)
    except ValueError as err:
        return _fail(str(err))
    seconds = time.perf_counter() - start
    output = Path(args.output)
    try:
        with h5py.File(output, "w") as f:
            for key, value in attrs.items():
                f.attrs[key] = value
            f.attrs["seconds"] = seconds
            for (axis, index), image in zip(args.slices, images):
                f.create_dataset(f"slices/{axis}_{index}", data=image)
                write_png(output.with_name(f"{output.stem}_{axis}{index}.png"), image)
    except OSError as err:
        return _fail(f"{args.output}: cannot write ({err})")
    print(f"wrote {args.output}: slices {', '.join(attrs['slices'])} of the volume {tuple(attrs['shape'])}, "
          f"centre {attrs['cor_px']:+.2f} px ({attrs['cor_source']}), {seconds:.1f} s; PNGs "
          f"{output.stem}_<axis><index>.png beside it")
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
