"""``holostream simulate --distances N``: one NXtomo file per propagation distance, as ID16 writes.

The multi-distance half of ``holostream simulate`` (:mod:`holostream.service.commands.simulate`
adds these options and hands over when ``--distances`` > 1). A magnified cone beam with the
focus and the detector fixed and the sample moved between distances
(:mod:`holostream.workers.multisimulate`): distance ``i`` has the source–sample distance
``--source-distances-m[i]`` (default: the first N of :data:`DEFAULT_SOURCE_DISTANCES_M`), a
random stage offset of up to ``--stage-offset-px`` pixels (the reconstruction measures it),
and a mixed-material phantom (per-object δ in [δ, 3δ], δ/β log-uniform in
``--delta-beta-range``). ``-o scan.nx`` writes ``scan_1.nx`` … ``scan_N.nx``, the first the
reference; each file holds its distance's effective (plane-wave) distance and pixel size,
the axis offset in its own pixels, and the geometric mean of the δ/β range as δ/β.
``--ground-truth`` gets the voxelised δ as ``volume`` and β as ``beta``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time

#: ID16-like source–sample distances (m) with the focus 0.5 m from the detector.
DEFAULT_SOURCE_DISTANCES_M = (0.007, 0.0076, 0.009, 0.0115, 0.0135, 0.016, 0.019, 0.022)
MAX_DISTANCES = len(DEFAULT_SOURCE_DISTANCES_M)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The multi-distance options of ``holostream simulate``."""
    group = parser.add_argument_group("several distances (--distances > 1; --distance-m and "
                                      "--pixel-size-m are then not used)")
    group.add_argument("--distances", type=int, default=1,
                       help=f"propagation distances, 1-{MAX_DISTANCES}; > 1 writes one file per distance (1)")
    group.add_argument("--source-distances-m", type=float, nargs="+", metavar="Z1",
                       help="focus → sample distance of each distance, m (default: ID16-like, "
                            f"{', '.join(f'{z:g}' for z in DEFAULT_SOURCE_DISTANCES_M[:4])}, ...)")
    group.add_argument("--focus-detector-m", type=float, default=0.5,
                       help="focus → detector distance, m (0.5)")
    group.add_argument("--detector-pixel-size-m", type=float, default=7e-6,
                       help="detector pixel size, m (7e-6)")
    group.add_argument("--stage-offset-px", type=float, default=2.0,
                       help="largest random stage offset of the distances after the first, pixels (2)")
    group.add_argument("--delta-beta-range", type=float, nargs=2, default=(30.0, 1000.0),
                       metavar=("LOW", "HIGH"), help="δ/β range of the objects' materials (30 1000)")


def output_paths(output: str, n: int) -> list[str]:
    """``scan.nx`` → ``scan_1.nx`` … ``scan_n.nx``."""
    stem, ext = os.path.splitext(output)
    return [f"{stem}_{i + 1}{ext or '.nx'}" for i in range(n)]


def _check(args: argparse.Namespace) -> tuple[list[float] | None, str | None]:
    """Source distances, or the first invalid option as a one-line reason."""
    n = args.distances
    if not 2 <= n <= MAX_DISTANCES:
        return None, f"--distances must be in [1, {MAX_DISTANCES}], got {n}"
    z1s = list(args.source_distances_m or DEFAULT_SOURCE_DISTANCES_M[:n])
    if len(z1s) != n:
        return None, f"--source-distances-m lists {len(z1s)} values for --distances {n}"
    total = args.focus_detector_m
    if not (math.isfinite(total) and total > 0 and all(0 < z < total for z in z1s)):
        return None, f"--source-distances-m must lie in (0, --focus-detector-m={total}), got {z1s}"
    low, high = args.delta_beta_range
    if not 0 < low <= high:
        return None, f"--delta-beta-range needs 0 < LOW <= HIGH, got {low} {high}"
    if not (args.detector_pixel_size_m > 0 and args.stage_offset_px >= 0):
        return None, "--detector-pixel-size-m must be > 0 and --stage-offset-px >= 0"
    return z1s, None


def run(args: argparse.Namespace) -> int:
    """Simulate every distance and write one NXtomo per distance; 2 with a reason on bad options."""
    import numpy as np

    from holostream.service.files.nxtomo import write_scan
    from holostream.service.files.volume import append_volume, write_volume
    from holostream.workers.multisimulate import cone_beam_distances, simulate_multidistance
    from holostream.workers.phantom import mixed_material_phantom
    from holostream.workers.simulate import DetectorModel

    z1s, problem = _check(args)
    if problem:
        print(f"holostream simulate: error: {problem}", file=sys.stderr)
        return 2
    n, size = args.distances, args.size
    rng = np.random.default_rng([args.seed, 2])
    offsets = rng.uniform(-args.stage_offset_px, args.stage_offset_px, (n, 2))
    offsets[0] = 0.0
    distances = cone_beam_distances(args.focus_detector_m, z1s, args.detector_pixel_size_m, offsets)
    pixel = distances[0].effective()[2]
    low, high = args.delta_beta_range
    phantom = mixed_material_phantom(args.seed, 0.4 * size * pixel, 0.8 * size * pixel,
                                     n_objects=args.objects, delta_range=(args.delta, 3 * args.delta),
                                     delta_beta_range=(low, high))
    start = time.perf_counter()
    b = args.ground_truth_binning
    scan = simulate_multidistance(
        phantom, distances, n_projections=args.projections, rows=size, cols=size,
        energy_kev=args.energy_kev, cor_px=args.cor_px, supersample=args.supersample,
        detector=DetectorModel(photons=args.photons, dark_level=args.dark_level),
        n_darks=args.darks, n_flats=args.flats, binning=b if args.ground_truth else None,
        seed=args.seed)
    delta_beta = math.sqrt(low * high)
    paths = output_paths(args.output, n)
    for path, one, (m, z, p) in zip(paths, scan.scans, scan.effective):
        # The file's axis is the motor's, in its own pixels; the stage offset is not known.
        geometry = dataclasses.replace(one.geometry, cor_px=args.cor_px * pixel / p, row_shift_px=0.0)
        try:
            write_scan(path, dataclasses.replace(one, geometry=geometry), delta_beta=delta_beta)
        except OSError as err:
            print(f"holostream simulate: error: {path}: cannot write ({err})", file=sys.stderr)
            return 2
        print(f"wrote {path}: magnification {m:.2f}, distance {z * 1e3:.4g} mm, "
              f"pixel {p * 1e9:.4g} nm")
    print(f"{n} distances × ({args.darks} darks, {args.flats} flats, {args.projections} projections "
          f"of {size}×{size} uint16), {len(phantom.objects)} objects of δ/β in [{low:g}, {high:g}], "
          f"stage offsets {np.round(offsets, 2).tolist()} px, {time.perf_counter() - start:.1f} s")
    if args.ground_truth:
        write_volume(args.ground_truth, scan.truth_delta,
                     {"voxel_size_m": b * pixel, "binning": b, "source": "phantom ground truth"})
        append_volume(args.ground_truth, "beta", scan.truth_beta, "beta")
        print(f"wrote {args.ground_truth}: ground-truth δ and β {scan.truth_delta.shape} float32")
    return 0
