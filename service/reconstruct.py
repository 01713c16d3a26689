"""``holostream reconstruct``: an NXtomo scan → an HDF5 volume of δ, offline.

The loop over a whole scan is :func:`reconstruct_scan`, a plain function of a
:class:`~holostream.service.nxio.ScanData`, so tests and the live-vs-offline comparison
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
from typing import Callable

import numpy as np

from holostream.shared.settings import ReconstructionSettings, SettingsError

_log = logging.getLogger(__name__)

#: Command-line option → settings key (same names as the TOML ``[reconstruction]`` table).
_SETTING_OPTIONS = ("binning", "angle_binning", "phase", "iterations", "filter", "pad_mode", "device")


def reconstruct_scan(scan, settings: ReconstructionSettings, delta_beta: float, cor_px: float,
                     backend, batch: int = 8,
                     progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, dict]:
    """Reconstruct a whole scan with the live pipeline; returns the δ volume and its attributes.

    Parameters
    ----------
    scan : ScanData
        Raw frames and geometry (:func:`holostream.service.nxio.read_scan`).
    settings : ReconstructionSettings
        Binning, angle binning, phase chain, iterations, filter, pad mode.
    delta_beta : float
        δ/β of the sample.
    cor_px : float
        Rotation-axis offset from ``(cols - 1) / 2`` in unbinned pixels.
    backend : Backend
        Where to compute (``settings.device`` is not consulted here).
    batch : int
        Angle groups phase-retrieved together.
    progress : callable, optional
        ``progress(groups_done, n_groups)`` after each batch.

    Returns
    -------
    volume : ndarray of shape (rows // b, cols // b, cols // b), float32
        δ per voxel, ``[z, y, x]``.
    attrs : dict
        Every parameter of the reconstruction (for :func:`nxio.write_volume`).
    """
    from holostream.workers import phasing
    from holostream.workers.fbp import VolumeAccumulator
    from holostream.workers.flatfield import average_frames
    from holostream.workers.pipeline import ProjectionPipeline, plan_groups

    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    chain = phasing.default_chain(settings.phase, settings.iterations, delta_beta)
    flat_after = None if scan.flats_after is None else average_frames(scan.flats_after, backend)
    pipeline = ProjectionPipeline(
        scan.frame_shape, average_frames(scan.darks, backend), average_frames(scan.flats, backend),
        binning=settings.binning, chain=chain, filter=settings.filter,
        energy_kev=scan.energy_kev, distance_m=scan.distance_m, pixel_size_m=scan.pixel_size_m,
        delta_beta=delta_beta, backend=backend, pad_mode=settings.pad_mode,
        flat_after=flat_after, n_projections=scan.n_projections,
    )
    groups, group_angles_deg, weights = plan_groups(
        scan.n_projections, settings.angle_binning, scan.angles_deg)
    rows_b, cols_b = pipeline.binned_shape
    center = pipeline.center_px(cor_px)
    # every angle is known up front, so nothing is reweighted: keep no filtered projections
    accumulator = VolumeAccumulator((rows_b, cols_b, cols_b), center, backend, keep_filtered=False)
    for start in range(0, len(groups), batch):
        chunk = groups[start : start + batch]
        filtered = pipeline.process_batch(
            [scan.projections[g.start : g.stop] for g in chunk],
            [np.arange(g.start, g.stop) for g in chunk],
        )
        for j in range(len(chunk)):
            g = start + j
            accumulator.add(g, filtered[j], math.radians(group_angles_deg[g]), weights[g])
        if progress is not None:
            progress(start + len(chunk), len(groups))
    volume = backend.to_host(accumulator.volume()).astype(np.float32, copy=False)
    attrs = {
        "voxel_size_m": pipeline.voxel_size_m,
        "binning": settings.binning,
        "angle_binning": settings.angle_binning,
        "phase": phasing.format_chain(chain) if chain else "none",
        "phase_setting": settings.phase,
        "iterations": settings.iterations,
        "filter": settings.filter,
        "pad_mode": settings.pad_mode,
        "cor_px": float(cor_px),
        "center_px_binned": center,
        "delta_beta": float(delta_beta),
        "energy_kev": scan.energy_kev,
        "distance_m": scan.distance_m,
        "pixel_size_m": scan.pixel_size_m,
        "n_projections_used": scan.n_projections,
        "n_projections_expected": scan.n_projections,
        "n_angle_groups": len(groups),
        "device": backend.name,
        "source": scan.source,
    }
    return volume, attrs


class ProgressBar:
    """A one-line progress bar on a text stream (stderr), redrawn in place."""

    def __init__(self, label: str, stream=None, width: int = 30):
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.start = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        filled = int(self.width * done / max(total, 1))
        elapsed = time.perf_counter() - self.start
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                          f"{done}/{total} groups {elapsed:5.1f} s")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``holostream reconstruct``."""
    parser.add_argument("input", help="NXtomo scan file (.nx/.h5)")
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
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


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
    from holostream.service.nxio import ScanFileError, read_scan

    try:
        settings = _settings(args)
    except (SettingsError, ConfigError) as err:
        return _fail(str(err))
    if args.batch < 1:
        return _fail(f"--batch must be >= 1, got {args.batch}")
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
    from holostream.service.nxio import write_volume
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
    progress = None if args.quiet else ProgressBar("reconstruct")
    start = time.perf_counter()
    volume, attrs = reconstruct_scan(scan, settings, delta_beta, cor_px, backend,
                                     batch=args.batch, progress=progress)
    attrs["seconds"] = seconds = time.perf_counter() - start
    try:
        write_volume(args.output, volume, attrs)
    except OSError as err:
        return _fail(f"{args.output}: cannot write ({err})")
    print(f"wrote {args.output}: volume {volume.shape} float32 δ, voxel "
          f"{attrs['voxel_size_m'] * 1e6:.3g} µm, {attrs['n_angle_groups']} angle groups, "
          f"phase {attrs['phase']!r}, {seconds:.1f} s")
    return 0
