"""The reconstructor actor of a live scan on a Dask cluster: binned groups in, a partial volume out.

One :class:`LiveActor` lives on each Dask worker process that the daemon uses (one per GPU
on a cluster; one per worker process of a local cluster). The daemon's dispatcher
(``service/daemon/actors.py``, ``dispatcher.py``) sends it batches of binned, flat-fielded, group-averaged
transmissions (split mode's ``binned`` part); the actor phases and ramp-filters them
(:meth:`~holostream.workers.pipeline.ProjectionPipeline.filtered_from_transmission`),
back-projects them into its own partial volume of the scan (angle split: FBP is linear, the
published volume is the sum of the partials) and returns the filtered projections, which the
daemon keeps in the scan's ``sinogram`` part (final re-weighting, live re-centring).
:meth:`LiveActor.collect` hands over what was added since the last collect, with the list of
the groups it holds, and starts a new partial: a group counts as reconstructed only once its
contribution is in the daemon's shared memory, so an actor lost at any moment loses only
groups that the dispatcher still holds in ``binned`` and redoes elsewhere.

Dask runs an actor's methods one at a time on one thread of its worker, in whatever order
the calls arrive; every method is therefore complete on its own (a collect says which groups
it holds rather than assuming the order of the calls).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from holostream.shared.messages import ScanInfo
from holostream.shared.settings import ReconstructionSettings
from holostream.workers import fbp
from holostream.workers.backend import Backend


@dataclass(frozen=True)
class ScanSetup:
    """What an actor needs to reconstruct one scan's groups (sent once per scan and actor).

    Attributes
    ----------
    scan : dict
        ``ScanInfo.to_dict()`` of the scan.
    settings : dict
        ``ReconstructionSettings.to_dict()`` it runs with.
    half_acquisition : bool
        360° offset-axis scan (detector weights before the ramp).
    reference : numpy.ndarray of float32, shape (2, rows, cols)
        Dark and flat means (counts); the pipeline is built from them, although only its
        second half (phase, filter) runs here.
    volume_shape : tuple of int
        ``(rows_b, cols_b, cols_b)`` of the partial volume.
    centre_deferred : bool
        A 360° scan without ``cor_px`` (``service/daemon/halfscan.py``): its axis is found by
        the daemon, so the actor returns each group's projected δ and back-projects nothing.
    """

    scan: dict[str, Any]
    settings: dict[str, Any]
    half_acquisition: bool
    reference: np.ndarray
    volume_shape: tuple[int, int, int]
    centre_deferred: bool = False


@dataclass(frozen=True)
class _Reference:
    """The one part of the scan's buffers that ``build_pipeline`` reads."""

    reference: np.ndarray


class _ActorScan:
    """One scan on one actor: its pipeline, its partial volume and the groups in it."""

    def __init__(self, setup: ScanSetup, backend: Backend):
        # imported here: the daemon's worker module is what builds the pipeline everywhere
        from holostream.service.daemon.worker import build_pipeline

        scan = ScanInfo.from_dict(setup.scan)
        settings = ReconstructionSettings.from_dict(setup.settings)
        self.backend = backend
        self.pipeline = build_pipeline(scan, settings, _Reference(np.asarray(setup.reference)), backend,
                                       setup.half_acquisition)
        self.center_px = self.pipeline.center_px(scan.cor_px or 0.0)
        self.deferred = setup.centre_deferred
        self.partial = backend.xp.zeros(tuple(setup.volume_shape), dtype=np.float32)
        self.groups: list[int] = []  # back-projected into partial since the last collect
        self.weight = 0.0


class LiveActor:
    """A reconstructor of live angle groups on one Dask worker (created with ``actor=True``).

    Parameters
    ----------
    device : {"cpu", "gpu", "auto"}
        Where to compute; "auto" is resolved here, on the worker.
    threads : int
        CPU threads (FFT, back-projection) of this actor.
    """

    def __init__(self, device: str = "cpu", threads: int = 1):
        from holostream.service.daemon.worker import choose_backend

        self.backend = choose_backend(device, threads)
        self.scans: dict[str, _ActorScan] = {}

    def info(self) -> dict[str, Any]:
        """``{"pid", "host", "backend"}`` of the worker process holding this actor."""
        return {"pid": os.getpid(), "host": socket.gethostname(), "backend": self.backend.name}

    def run(self, key: str, groups: list[int], stack: np.ndarray, angles_rad: np.ndarray,
            weights: np.ndarray, setup: ScanSetup | None = None) -> dict[str, Any]:
        """Phase, filter and back-project one batch of a scan's groups into its partial volume.

        Parameters
        ----------
        key : str
            The scan (its shared-memory prefix on the ingest node, unique per scan).
        groups : list of int
            The groups of the batch.
        stack : numpy.ndarray of float32, shape (n, rows_b, cols_b)
            Their binned transmissions.
        angles_rad : numpy.ndarray of float64, shape (n,)
            Their mean angles (rad).
        weights : numpy.ndarray of float64, shape (n,)
            Their angle weights (rad).
        setup : ScanSetup, optional
            Required with the first batch of a scan on this actor.

        Returns
        -------
        dict
            ``filtered``: float32 (n, rows_b, cols_b), the ramp-filtered δ projections (a
            deferred-centre scan's: the projected δ, neither weighted nor filtered);
            ``center_px``: the axis offset (binned px); ``seconds``: compute time here.

        Raises
        ------
        KeyError
            A scan this actor has not been set up for.
        """
        start = time.perf_counter()
        if key not in self.scans:
            if setup is None:
                raise KeyError(f"scan {key} was never set up on this actor")
            self.scans[key] = _ActorScan(setup, self.backend)
        work = self.scans[key]
        if work.deferred:  # axis unknown: δ for the daemon, which filters it (daemon/halfscan.py)
            filtered = work.pipeline.delta_from_transmission(self.backend.asarray(stack))
        else:
            filtered = work.pipeline.filtered_from_transmission(self.backend.asarray(stack))
            fbp.backproject(work.partial, filtered, np.asarray(angles_rad, dtype=np.float64),
                            np.asarray(weights, dtype=np.float64), work.center_px, self.backend)
        work.groups += [int(g) for g in groups]
        work.weight += float(np.sum(weights))
        return {"filtered": np.ascontiguousarray(self.backend.to_host(filtered), dtype=np.float32),
                "center_px": work.center_px, "seconds": time.perf_counter() - start}

    def collect(self, key: str) -> dict[str, Any]:
        """What was back-projected since the last collect, and a fresh partial volume.

        Returns
        -------
        dict
            ``groups``: list of int; ``weight``: their summed angle weights (rad);
            ``volume``: float32 (rows_b, cols_b, cols_b), or None when there are no groups;
            ``center_px``: the axis offset it was back-projected with (binned px).
        """
        work = self.scans.get(key)
        if work is None or not work.groups:
            return {"groups": [], "weight": 0.0, "volume": None, "center_px": None}
        volume = np.ascontiguousarray(self.backend.to_host(work.partial), dtype=np.float32)
        groups, weight = work.groups, work.weight
        work.partial = self.backend.xp.zeros_like(work.partial)
        work.groups, work.weight = [], 0.0
        return {"groups": groups, "weight": weight, "volume": volume, "center_px": work.center_px}

    def forget(self, key: str) -> None:
        """Drop a scan (its pipeline and partial volume); its groups must have been collected."""
        self.scans.pop(key, None)
