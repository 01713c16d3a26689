"""``holostream simulate``: write a simulated near-field holo-tomography scan as NXtomo.

A random phantom of spheres and ellipsoids (one or two materials) inside the field of
view, simulated by :func:`holostream.workers.simulate.simulate_scan`: supersampled Fresnel
propagation, beam profile, Poisson noise, darks and flats. Optionally the voxelised δ
ground truth is written beside it, in the same HDF5 layout as a reconstruction.

Materials: the first has ``δ = --delta`` and ``δ/β = --delta-beta``; the second (with
``--materials 2``) is 2.5 times denser in δ and absorbs 10 times more (δ/β four times
smaller). The file records one δ/β for the reconstruction: the first material's, or with
two materials the geometric mean of both (``--delta-beta / 2``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from holostream.service.commands import simulate_distances

# second material relative to the first: δ × 2.5, β × 10 (δ/β ÷ 4)
_DENSE_DELTA, _DENSE_BETA = 2.5, 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``holostream simulate``."""
    parser.add_argument("-o", "--output", required=True, help="NXtomo file to write (.nx)")
    parser.add_argument("--size", type=int, default=128, help="detector rows and columns (128)")
    parser.add_argument("--projections", type=int, default=180,
                        help="projections over --span-deg (180)")
    parser.add_argument("--energy-kev", type=float, default=17.5, help="photon energy, keV (17.5)")
    parser.add_argument("--distance-m", type=float, default=0.05,
                        help="effective propagation distance, m (0.05)")
    parser.add_argument("--pixel-size-m", type=float, default=1e-6,
                        help="effective pixel size, m (1e-6)")
    parser.add_argument("--delta", type=float, default=1e-6, help="δ of the first material (1e-6)")
    parser.add_argument("--delta-beta", type=float, default=200.0,
                        help="δ/β of the first material (200)")
    parser.add_argument("--materials", type=int, choices=(1, 2), default=1, help="1 or 2 materials")
    parser.add_argument("--objects", type=int, default=9, help="spheres and ellipsoids (9)")
    parser.add_argument("--photons", type=float, default=2e4,
                        help="flat counts above the dark at the beam centre (2e4)")
    parser.add_argument("--dark-level", type=float, default=100.0, help="mean dark counts (100)")
    parser.add_argument("--darks", type=int, default=10, help="dark frames (10)")
    parser.add_argument("--flats", type=int, default=10, help="flats before the projections (10)")
    parser.add_argument("--flats-after", type=int, default=0, help="flats after the projections (0)")
    parser.add_argument("--cor-px", type=float, default=0.0,
                        help="rotation-axis offset from (cols-1)/2, pixels (0)")
    parser.add_argument("--axis-unknown", action="store_true",
                        help="leave the axis position out of the file (reconstruct estimates it)")
    parser.add_argument("--span-deg", type=float, default=180.0,
                        help="rotation range, degrees: 180 or 360 (180)")
    parser.add_argument("--bad-columns", type=int, default=0,
                        help="detector columns with a gain error of 0.5–3 %% (rings; 0)")
    parser.add_argument("--magnification", type=float, default=1.0,
                        help="write the geometry as a cone beam with this magnification, with "
                             "--distance-m and --pixel-size-m as its effective values (1: plane)")
    parser.add_argument("--wide-sample", action="store_true",
                        help="put the objects in a body 1.6 frame widths across (matter beyond "
                             "the field of view at every angle)")
    parser.add_argument("--supersample", type=int, default=2, help="fine grid per pixel edge (2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of phantom and noise (0)")
    parser.add_argument("--ground-truth", metavar="FILE.h5",
                        help="also write the voxelised δ of the phantom")
    parser.add_argument("--ground-truth-binning", type=int, default=1,
                        help="voxel grid of the ground truth: that of a reconstruction with this binning (1)")
    simulate_distances.add_arguments(parser)


def _check(args: argparse.Namespace) -> str | None:
    """The first invalid option as a one-line reason, or None."""
    positive = {"--size": args.size, "--projections": args.projections,
                "--energy-kev": args.energy_kev, "--distance-m": args.distance_m,
                "--pixel-size-m": args.pixel_size_m, "--delta": args.delta,
                "--delta-beta": args.delta_beta, "--objects": args.objects,
                "--photons": args.photons, "--darks": args.darks, "--flats": args.flats,
                "--supersample": args.supersample, "--ground-truth-binning": args.ground_truth_binning}
    for name, value in positive.items():
        if not (math.isfinite(value) and value > 0):
            return f"{name} must be > 0, got {value}"
    if args.size < 16 or args.size > 4096:
        return f"--size must be in [16, 4096], got {args.size}"
    if args.flats_after < 0 or args.dark_level < 0:
        return "--flats-after and --dark-level must be >= 0"
    if not (math.isfinite(args.magnification) and args.magnification >= 1.0):
        return f"--magnification must be >= 1, got {args.magnification}"
    if args.span_deg not in (180.0, 360.0):
        return f"--span-deg must be 180 or 360, got {args.span_deg:g}"
    if not 0 <= args.bad_columns <= args.size // 4:
        return f"--bad-columns must be in [0, {args.size // 4}], got {args.bad_columns}"
    if not abs(args.cor_px) < args.size / 2:
        return f"--cor-px must lie within the frame (|cor| < {args.size / 2:g}), got {args.cor_px}"
    if args.photons + args.dark_level > 6e4:
        return "--photons + --dark-level must stay below the uint16 range (6e4)"
    return None


def run(args: argparse.Namespace) -> int:
    """Simulate and write the scan; 2 with a one-line reason on bad options."""
    from holostream.service.files.nxtomo import write_scan
    from holostream.service.files.volume import write_volume
    import numpy as np

    from holostream.service.progress import ProgressBar
    from holostream.workers.phantom import random_phantom, with_body
    from holostream.workers.simulate import DetectorModel, ground_truth, simulate_scan

    problem = _check(args)
    if problem:
        print(f"holostream simulate: error: {problem}", file=sys.stderr)
        return 2
    if args.distances != 1:
        return simulate_distances.run(args)
    size, pixel = args.size, args.pixel_size_m
    light = (args.delta, args.delta / args.delta_beta)
    materials = (light,) if args.materials == 1 else (
        light, (light[0] * _DENSE_DELTA, light[1] * _DENSE_BETA))
    phantom = random_phantom(args.seed, radius_m=0.4 * size * pixel, height_m=0.85 * size * pixel,
                             n_objects=args.objects, size_range=(0.15, 0.35), materials=materials)
    if args.wide_sample:
        # A fifth of the first material's δ: a light matrix around the objects, cut by the
        # frame's edges at every angle.
        phantom = with_body(phantom, (0.8 * size * pixel, 0.6 * size * pixel, size * pixel),
                            light[0] / 5, light[1] / 5, psi_rad=0.3)
    rng = np.random.default_rng(args.seed + 1)
    columns = rng.choice(np.arange(size // 8, size - size // 8), args.bad_columns, replace=False)
    bad = tuple((int(c), float(rng.choice([-1, 1]) * rng.uniform(0.005, 0.03))) for c in columns)
    start = time.perf_counter()
    scan = simulate_scan(
        phantom, angles_deg=np.linspace(0.0, args.span_deg, args.projections, endpoint=False),
        rows=size, cols=size, pixel_size_m=pixel,
        distance_m=args.distance_m, energy_kev=args.energy_kev, cor_px=args.cor_px,
        supersample=args.supersample,
        detector=DetectorModel(photons=args.photons, dark_level=args.dark_level, bad_columns=bad),
        n_darks=args.darks, n_flats=args.flats, n_flats_after=args.flats_after,
        binning=None, seed=args.seed, progress=ProgressBar("simulate", unit="projection"),
    )
    delta_beta = args.delta_beta if args.materials == 1 else args.delta_beta / 2.0
    try:
        write_scan(args.output, scan, delta_beta=delta_beta, write_cor=not args.axis_unknown,
                   magnification=args.magnification)
    except OSError as err:
        print(f"holostream simulate: error: {args.output}: cannot write ({err})", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {args.darks} darks, {args.flats}+{args.flats_after} flats, "
          f"{args.projections} projections of {size}×{size} uint16, {len(phantom.objects)} objects, "
          f"{args.materials} material(s), δ/β {delta_beta:g}, "
          f"{time.perf_counter() - start:.1f} s")
    if args.ground_truth:
        b = args.ground_truth_binning
        truth = ground_truth(phantom, scan.geometry, b, args.supersample)
        write_volume(args.ground_truth, truth, {"voxel_size_m": b * pixel, "binning": b,
                                                "source": "phantom ground truth"})
        print(f"wrote {args.ground_truth}: ground-truth δ {truth.shape} float32")
    return 0
