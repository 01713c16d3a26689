"""What the operator re-tunes a scan to, what its volumes then say, and how they are made.

A scan is reconstructed with its ``scan_start`` (δ/β) and the settings in force when it began
(``filter``, ``phase``): its *base*. The operator's *aim* overrides some of these for the
current or the last scan (``set``). :func:`volume_job` checks an aim at once (ValueError with
the reason) and returns the computation for the re-tune thread:

- only the filter differs: the kept ramp-filtered projections, re-filtered
  (``workers/refilter.py``) and back-projected;
- δ/β or the chain differs: phase retrieval again from the binned transmissions
  (``rephase.py``; split mode, or a kept scan that had them), then filter and back-projection.

:func:`retuned_fields` gives the header fields of such a volume: the values used, and
``retuned`` listing each one that differs from the base (``{"from": ..., "to": ...}``).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from holostream.service.daemon.centre import recentred_volume
from holostream.service.daemon.rephase import rephased_volume
from holostream.workers import phasing
from holostream.workers.backend import Backend
from holostream.workers.refilter import WindowChange

#: What ``set`` can re-tune besides the centre, in header order.
RETUNABLE = ("filter", "delta_beta", "phase")
#: Of these, what needs the transmissions (phase retrieval again).
PHASE_KEYS = ("delta_beta", "phase")
#: The window of the projections a re-phasing keeps: the ramp alone, from which every other
#: window is one exact rescaling of the spectrum (``workers/refilter.py``).
KEPT_WINDOW = "ram-lak"


def base_of(scan: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The values a scan was reconstructed with: ``filter``, ``delta_beta``, ``phase``."""
    return {"filter": settings["filter"], "delta_beta": float(scan["delta_beta"]), "phase": settings["phase"]}


def applied(base: dict[str, Any], aim: dict[str, Any]) -> dict[str, Any]:
    """``base`` with the operator's values of :data:`RETUNABLE` in ``aim`` over it."""
    return {**base, **{k: aim[k] for k in RETUNABLE if aim.get(k) is not None}}


def check_aim(aim: dict[str, Any], iterations: int) -> None:
    """Raise ValueError (with the reason) for a δ/β or chain that cannot be used."""
    delta_beta = aim.get("delta_beta")
    if delta_beta is not None and (isinstance(delta_beta, bool) or not isinstance(delta_beta, (int, float))
                                   or not math.isfinite(delta_beta) or delta_beta <= 0):
        raise ValueError(f"delta_beta must be a finite number > 0, got {delta_beta!r}")
    if aim.get("phase") is not None:
        phasing.default_chain(aim["phase"], iterations, float(delta_beta or 1.0))  # parses the chain


def retuned_fields(base: dict[str, Any], aim: dict[str, Any], iterations: int) -> dict[str, Any]:
    """Header fields of a volume made with ``aim`` over ``base``.

    ``filter``, ``delta_beta``, ``phase`` and ``phase_chain`` as used, and ``retuned`` (only
    when something differs): ``{"delta_beta": {"from": 200.0, "to": 400.0}, ...}``.
    """
    used = applied(base, aim)
    chain = phasing.default_chain(used["phase"], iterations, used["delta_beta"])
    out = {"filter": used["filter"], "delta_beta": float(used["delta_beta"]), "phase": used["phase"],
           "phase_chain": phasing.format_chain(chain) if chain else "none"}
    changed = {k: {"from": base[k], "to": used[k]} for k in RETUNABLE if used[k] != base[k]}
    if changed:
        out["retuned"] = changed
    return out


def rephased_with(base: dict[str, Any], aim: dict[str, Any]) -> dict[str, Any]:
    """What projections re-phased for ``aim`` are made with (``filtered_out`` of :func:`volume_job`)."""
    return {**applied(base, aim), "filter": KEPT_WINDOW}


def differs(base: dict[str, Any], aim: dict[str, Any]) -> bool:
    """True when ``aim`` changes anything of ``base``."""
    return applied(base, aim) != base


def volume_job(sinogram: np.ndarray, binned: np.ndarray | None, reference: np.ndarray | None,
               groups: dict[int, tuple[float, float, int]], scan: dict[str, Any], settings: dict[str, Any],
               aim: dict[str, Any], center_px: float, shape: tuple[int, ...], backend: Backend,
               final: bool, sinogram_with: dict[str, Any] | None = None,
               filtered_out: np.ndarray | None = None) -> tuple[Callable[[], np.ndarray], bool]:
    """The computation of a re-tuned volume, checked now; run it later (re-tune thread).

    Parameters
    ----------
    sinogram : ndarray, float32, shape (n_groups, rows_b, cols_b)
        Projections ramp-filtered with the base filter (δ px per pixel).
    binned, reference : ndarray or None
        Binned transmissions (like ``sinogram``) and dark/flat ``(2, rows, cols)``; None when
        the scan has none (pool mode): then a δ/β or chain change raises ValueError.
    groups : dict
        ``group -> (angle_rad, weight, n_projections)``: the groups to use (a snapshot).
    scan, settings : dict
        The scan's ``scan_start`` and settings (the base).
    aim : dict
        The operator's ``filter``, ``delta_beta``, ``phase`` (absent or None: the base's).
    center_px : float
        Axis offset in binned pixels.
    shape : tuple of int
    backend : Backend
    final : bool
        Weights of exactly the arrived angles (True) or the scan's (False).
    sinogram_with : dict or None
        What ``sinogram`` was made with (``filter``, ``delta_beta``, ``phase``; None: the
        base). A kept scan re-phased once holds the new projections (see ``filtered_out``).
    filtered_out : ndarray or None
        When phase retrieval runs again: receives the new projections, filtered with
        :data:`KEPT_WINDOW` (``rephase.py``); what they were made with is
        :func:`rephased_with` of the aim.

    Returns
    -------
    compute : callable
        ``() -> ndarray float32 shape``: δ per voxel.
    rephased : bool
        True when ``compute`` retrieves the phase again (and fills ``filtered_out``).
    """
    base = base_of(scan, settings)
    used = applied(base, aim)
    have = sinogram_with or base
    check_aim(aim, int(settings["iterations"]))
    refilter = None
    if all(used[k] == have[k] for k in PHASE_KEYS) and used["filter"] != have["filter"]:
        try:
            refilter = WindowChange(sinogram.shape[-1], backend, have["filter"], used["filter"])
        except ValueError:
            if binned is None or reference is None:
                raise
            # frequencies the filter removed come back from the transmissions: phase retrieval again
            have = {**have, "delta_beta": None}
    if any(used[k] != have[k] for k in PHASE_KEYS):
        if binned is None or reference is None:
            raise ValueError("delta_beta and phase need the scan's binned transmissions, which this scan "
                             "did not keep (pool mode with [ingest] keep_transmissions = false, or the "
                             "last scan's did not fit in [publish] keep_last_scan_mb): they apply from "
                             "the next scan")
        scan_used = {**scan, "delta_beta": used["delta_beta"]}
        settings_used = {**settings, "phase": used["phase"], "filter": KEPT_WINDOW}
        after = (None if used["filter"] == KEPT_WINDOW else
                 WindowChange(sinogram.shape[-1], backend, KEPT_WINDOW, used["filter"]))
        return (lambda: rephased_volume(binned, reference, groups, scan_used, settings_used, center_px,
                                        shape, backend, final, filtered_out, after)), True
    return (lambda: recentred_volume(sinogram, groups, center_px, shape, backend, final, refilter)), False
