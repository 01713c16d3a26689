"""A quick look at a scan: a few slices of the volume, without reconstructing all of it.

``holostream reconstruct --slices z:32,y:64`` goes through the same pipeline as the whole
volume (flat-field, binning, phase retrieval of whole frames: it mixes rows, so no frame can be
cut before it) but ramp-filters and back-projects only what the slices need:

- ``z:K`` (a horizontal slice, ``volume[K]``): the binned detector row K only;
- ``y:K`` / ``x:K`` (a vertical plane, ``volume[:, K]`` / ``volume[:, :, K]``): every row, but
  only the ``n`` voxels of one line per row, ``n`` times fewer than the whole volume.

Indices are those of the whole volume (``rows // b`` by ``n × n``); the result equals the
corresponding cut of :func:`holostream.service.offline.reconstruct_scan`.
"""

from __future__ import annotations

import math
import re

import numpy as np

from holostream.service.offline import estimate_centre, plan_reconstruction
from holostream.shared.settings import ReconstructionSettings
from holostream.workers.backend import Backend

AXES = ("z", "y", "x")


def parse_slices(text: str) -> list[tuple[str, int]]:
    """``"z:32,y:64"`` as ``[("z", 32), ("y", 64)]``.

    Raises
    ------
    ValueError
        An entry that is not ``AXIS:INDEX`` with AXIS one of z, y, x and INDEX ≥ 0.
    """
    out = []
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"([zyx])\s*:\s*(\d+)", part)
        if not match:
            raise ValueError(f"--slices: {part!r} is not AXIS:INDEX with AXIS z, y or x (e.g. z:32,y:64)")
        out.append((match.group(1), int(match.group(2))))
    if not out:
        raise ValueError("--slices: no slice given")
    return out


def plane(filtered, angles_rad, weights, center_px: float, n: int, axis: str, index: int,
          backend: Backend):
    """Back-projection of filtered projections onto one vertical plane of the ``n × n`` grid.

    The same sampling as :func:`holostream.workers.fbp.backproject` (``u = x cos θ + y sin θ
    + (cols - 1)/2 + center_px``, linear interpolation, 0 outside the detector), restricted
    to the line ``y = index`` (axis ``"y"``) or ``x = index`` (axis ``"x"``).

    Parameters
    ----------
    filtered : array of shape (b, rows, cols), float32
        Ramp-filtered projections.
    angles_rad, weights : array_like of shape (b,)
        Angles (radians) and angle weights.
    center_px : float
        Axis offset from ``(cols - 1) / 2`` in the pixels of ``filtered``.
    n : int
        Side of the volume's square grid.
    axis : {"y", "x"}
    index : int
        The plane's index along ``axis``, ``0 <= index < n``.

    Returns
    -------
    array of shape (rows, n), float32: ``Σ_i w_i q_i`` on the plane (not yet normalised).
    """
    xp = backend.xp
    b, rows, cols = filtered.shape
    coords = xp.arange(n, dtype=xp.float32) - xp.float32((n - 1) / 2)
    fixed = np.float32(index - (n - 1) / 2)
    c0 = (cols - 1) / 2 + float(center_px)
    out = xp.zeros((rows, n), dtype=xp.float32)
    for i in range(b):
        cos, sin = math.cos(angles_rad[i]), math.sin(angles_rad[i])
        # along the line: x runs over the grid on a y plane, y on an x plane
        u = coords * xp.float32(cos) + xp.float32(fixed * sin + c0) if axis == "y" else \
            coords * xp.float32(sin) + xp.float32(fixed * cos + c0)
        u = xp.clip(u, -1.0, float(cols))
        floor = xp.floor(u)
        frac = (u - floor)[None, :]
        j = floor.astype(xp.intp) + 1
        table = xp.zeros((rows, cols + 3), dtype=xp.float32)
        table[:, 1 : cols + 1] = filtered[i] * xp.float32(weights[i])
        out += table[:, j] + frac * (table[:, j + 1] - table[:, j])
    return out


def reconstruct_slices(scan, settings: ReconstructionSettings, delta_beta: float, cor_px: float | None,
                       slices: list[tuple[str, int]], backend: Backend, batch: int = 8,
                       ) -> tuple[list[np.ndarray], dict]:
    """The slices ``[(axis, index), ...]`` of the scan's δ volume; arrays and attributes.

    Parameters as :func:`holostream.service.offline.reconstruct_scan`; ``slices`` index the
    whole volume ``(rows // b, n, n)``.

    Returns
    -------
    images : list of float32 arrays, ``(n, n)`` for z, ``(rows // b, n)`` for y and x
    attrs : dict with ``cor_px``, ``cor_source``, ``shape`` (of the whole volume), ``slices``

    Raises
    ------
    ValueError
        An index outside the volume, or a ring filter (it needs every row's sinogram).
    """
    from holostream.workers import fbp

    if settings.ring_filter != "none":
        raise ValueError("--slices does not apply a ring filter yet (it needs whole sinograms): "
                         "use --ring-filter none, or reconstruct the whole volume")
    cor_source = "given"
    if cor_px is None:
        cor_px, cor_source = estimate_centre(scan, backend, getattr(scan, "cor_guess_px", None)).cor_px, "estimated"
    plan = plan_reconstruction(scan, settings, delta_beta, cor_px, backend)
    pipeline, groups, angles_deg, weights = plan.pipeline, plan.groups, plan.angles_deg, plan.weights
    rows_b, cols_b = pipeline.binned_shape
    center, half, n, column_weights = plan.center_px, plan.half, plan.width, plan.column_weights
    shape = (rows_b, n, n)
    for axis, index in slices:
        if not 0 <= index < shape[AXES.index(axis)]:
            raise ValueError(f"--slices {axis}:{index} is outside the volume {shape} (z, y, x)")
    z_rows = sorted({i for a, i in slices if a == "z"})
    verticals = [(a, i) for a, i in slices if a != "z"]
    xp = backend.xp
    z_volume = xp.zeros((len(z_rows), n, n), dtype=xp.float32)
    planes = {s: xp.zeros((rows_b, n), dtype=xp.float32) for s in verticals}
    for start in range(0, len(groups), batch):
        chunk = groups[start : start + batch]
        delta = pipeline.delta_from_transmission(pipeline.transmissions(
            [scan.projections[g.start : g.stop] for g in chunk],
            [np.arange(g.start, g.stop) for g in chunk]))
        if column_weights is not None:
            delta = delta * column_weights
        rad = np.radians(angles_deg[start : start + len(chunk)])
        w = np.asarray(weights[start : start + len(chunk)], dtype=np.float64)
        if verticals:  # every row, ramp-filtered
            filtered = pipeline.ramp(delta)
            for (axis, index), acc in planes.items():
                acc += plane(filtered, rad, w, center, n, axis, index, backend)
            rows = filtered[:, z_rows] if z_rows else None
        else:  # the z slices' rows only
            rows = pipeline.ramp(xp.ascontiguousarray(delta[:, z_rows])) if z_rows else None
        if rows is not None:
            fbp.backproject(z_volume, xp.ascontiguousarray(rows), rad, w, center, backend)
    scale = np.float32(math.pi / float(np.sum(weights)))
    images = []
    for axis, index in slices:
        image = z_volume[z_rows.index(index)] if axis == "z" else planes[(axis, index)]
        images.append(backend.to_host(image * scale).astype(np.float32, copy=False))
    attrs = {"cor_px": float(cor_px), "cor_source": cor_source, "shape": list(shape),
             "slices": [f"{a}:{i}" for a, i in slices], "voxel_size_m": pipeline.voxel_size_m,
             "half_acquisition": half, "delta_beta": float(delta_beta)}
    return images, attrs
