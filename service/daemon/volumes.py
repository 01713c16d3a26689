"""Volumes assembled from the partial accumulators in shared memory, and their headers.

The live volume is the sum of the partials normalised by the weights so far; the final
one is the one-shot FBP of exactly the angles that arrived. :class:`LiveScan` is the
daemon's view of one scan from ``scan_open`` to its final volume.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from holostream.service.daemon import aims
from holostream.service.daemon.centre import LiveCentre, recentred_volume
from holostream.service.daemon.halfscan import centre_deferred, deferred_columns, deferred_volume, ramp_of
from holostream.service.daemon.rings import LiveRings, stripes_for
from holostream.shared.scanbuffers import ScanBuffers
from holostream.workers import fbp, phasing
from holostream.workers.backend import Backend

#: Weight changes below this (radians; weights are >= π/100 000) are float noise, not gaps.
_WEIGHT_TOLERANCE_RAD = 1e-9


def volume_header(scan: dict[str, Any], settings: dict[str, Any], *, scan_seq: int, seq: int,
                  final: bool, n_used: int, shape: tuple[int, ...]) -> dict[str, Any]:
    """The JSON header of a ``volume`` message.

    Parameters
    ----------
    scan : dict
        ``ScanInfo.to_dict()`` of the scan (``scan_start`` fields).
    settings : dict
        The reconstruction settings this scan runs with (``ReconstructionSettings.to_dict()``).
    scan_seq : int
        The daemon's running number of the scan.
    seq : int
        Running number of this scan's volumes (0, 1, ...; the final one is the last).
    final : bool
        True for the volume published once the scan is complete.
    n_used : int
        Projections that went into this volume.
    shape : tuple of int
        ``(nz, ny, nx)`` of the float32 payload.
    """
    binning = int(settings["binning"])
    chain = phasing.default_chain(settings["phase"], int(settings["iterations"]), float(scan["delta_beta"]))
    return {
        "type": "volume", "scan_id": scan["scan_id"], "scan_seq": scan_seq, "seq": seq,
        "final": bool(final),
        "n_projections_used": int(n_used), "n_projections_expected": int(scan["n_projections"]),
        "shape": [int(n) for n in shape], "dtype": "float32", "quantity": "delta",
        "voxel_size_m": _effective_geometry(scan)["pixel_size_m"] * binning,
        "timestamp": time.time(),
        "binning": binning, "angle_binning": int(settings["angle_binning"]),
        "phase": settings["phase"], "phase_chain": phasing.format_chain(chain) if chain else "none",
        "iterations": int(settings["iterations"]),
        "filter": settings["filter"], "pad_mode": settings.get("pad_mode"),
        # LiveScan.header replaces these with its centre (estimated or the operator's)
        "cor_px": float(scan.get("cor_px") or 0.0),
        "cor_source": "given" if scan.get("cor_px") is not None else "estimated",
        **({} if scan.get("cor_px") is not None else {"cor_confidence": 0.0}),  # not estimated yet
        # sinogram ring filters need the whole scan: only `holostream reconstruct` applies them
        "ring_filter": "none",
        "delta_beta": float(scan["delta_beta"]), "energy_kev": float(scan["energy_kev"]),
        **_effective_geometry(scan),
    }


def _effective_geometry(scan: dict[str, Any]) -> dict[str, float]:
    """``distance_m``, ``pixel_size_m`` (effective) and ``magnification`` of a scan's dict."""
    from holostream.shared.messages import ScanInfo

    info = ScanInfo.from_dict(scan)
    return {"distance_m": info.distance_m, "pixel_size_m": info.pixel_size_m,
            "magnification": info.magnification}


def live_volume(partials: np.ndarray, weights: np.ndarray) -> np.ndarray | None:
    """Sum of the workers' partial volumes, normalised as if every angle had arrived.

    Parameters
    ----------
    partials : ndarray, float32, shape (n_workers, nz, ny, nx)
        Each worker's Σ weight·back-projection (shared memory; read while workers add).
    weights : ndarray, float64, shape (n_workers,)
        Each worker's Σ of angle weights (radians).

    Returns
    -------
    ndarray, float32, shape (nz, ny, nx), δ per voxel; None while no weight has arrived.
    """
    weights = np.array(weights, dtype=np.float64)  # a snapshot, taken before the volumes
    if weights.sum() <= 0.0:
        return None
    return fbp.combine_partials(partials, weights)


def final_volume(partials: np.ndarray, weights: np.ndarray, sinogram: np.ndarray,
                 groups: np.ndarray, angles_rad: np.ndarray, used_weights: np.ndarray,
                 center_px: float, backend: Backend) -> np.ndarray:
    """The final volume: the one-shot FBP of exactly the angle groups that arrived.

    The groups were accumulated with weights computed for the whole scan. When groups
    are missing, the weights of the arrived ones are recomputed
    (:func:`fbp.angle_weights` of their angles) and the difference is back-projected
    from ``sinogram``, so that gaps do not leave the arrived angles under-weighted.

    Parameters
    ----------
    partials, weights : see :func:`live_volume`.
    sinogram : ndarray, float32, shape (n_groups, nz, nx)
        Ramp-filtered projections (δ px) written by the workers.
    groups : ndarray of int, shape (k,)
        Indices of the groups that were reconstructed.
    angles_rad : ndarray, shape (k,)
        Their angles (mean of each group), radians.
    used_weights : ndarray, shape (k,)
        The weights they were accumulated with, radians.
    center_px : float
        Rotation-axis offset from ``(nx - 1)/2`` in binned pixels, as the workers used it.
    backend : Backend
        Where the correction is back-projected (the daemon uses the CPU).

    Returns
    -------
    ndarray, float32, shape (nz, ny, nx): δ per voxel.
    """
    groups = np.asarray(groups, dtype=np.intp)
    if groups.size == 0:
        raise ValueError("final_volume needs at least one reconstructed group")
    data = backend.asarray(partials.sum(axis=0, dtype=np.float32))  # no copy on the CPU
    # only the neighbours of a gap change weight: a scan cut short corrects two groups
    total = float(np.sum(weights)) + fbp.reweight(
        data, lambda idx: backend.asarray(sinogram[groups[idx]]), angles_rad, used_weights,
        fbp.angle_weights(angles_rad), center_px, backend, _WEIGHT_TOLERANCE_RAD)
    return fbp.combine_partials(backend.to_host(data)[None], [total])


#: Why a deferred-centre scan refuses a new filter, δ/β or chain.
DEFERRED_RETUNE = ("a 360° scan whose axis is found from the data (no cor_px) can be re-tuned in its centre "
                   "only: its filter, delta_beta and phase apply from the next scan")

#: Why a scan at several distances refuses a new filter, δ/β or chain (its β would not follow).
DISTANCES_RETUNE = ("a scan at several distances can be re-tuned in its centre only: its filter, delta_beta "
                    "and phase apply from the next scan")


@dataclass
class LiveScan:
    """One scan as the daemon follows it, from ``scan_open`` to its final volume.

    The workers report every group (``group_done``/``group_failed`` events: angle, weight,
    projections, worker); ingest reports the end (``scan_complete``). This keeps both and
    assembles the volumes from the scan's shared memory.
    """

    seq: int
    scan: dict[str, Any]
    settings: dict[str, Any]
    buffers: ScanBuffers
    next_publish: float
    groups: dict[int, tuple[float, float, int]] = field(default_factory=dict)  # g -> rad, weight, n
    failed: set[int] = field(default_factory=set)
    first_error: str | None = None  # why the first failed group failed
    center_px: float = 0.0
    published_groups: int = 0
    volume_seq: int = 0
    complete: dict[str, Any] | None = None
    last_result: float = field(default_factory=time.monotonic)
    centre: LiveCentre | None = None  # the axis the volumes use (given, estimated, operator)
    aim: dict[str, Any] = field(default_factory=dict)  # the operator's filter, delta_beta, phase (aims.py)
    final_job: bool = False  # its final volume is being made by the re-tune thread
    rephased: tuple | None = None  # (filtered, made with, group keys) of a re-phased final volume
    rings: LiveRings | None = None  # the streaming ring filter (service/daemon/rings.py)
    deferred: bool | None = None  # a 360° scan without cor_px: sinogram holds δ (daemon/halfscan.py)
    job_beta: np.ndarray | None = None  # several distances: β of the re-tune thread's last live volume

    def __post_init__(self):
        if self.centre is None:
            self.centre = LiveCentre.of_scan(self.scan, self.settings)
        if self.rings is None:
            self.rings = LiveRings.of_scan(self.scan, self.settings)
        if self.deferred is None:
            from holostream.shared.messages import ScanInfo

            self.deferred = centre_deferred(ScanInfo.from_dict(self.scan))

    @classmethod
    def open(cls, event: dict[str, Any], now: float) -> "LiveScan":
        """Attach the buffers of a ``scan_open`` event (raises OSError/ValueError if gone)."""
        buffers = ScanBuffers.attach(event["buffers"])
        return cls(int(event["scan_seq"]), event["scan"], event["settings"], buffers,
                   next_publish=now + float(event["settings"]["publish_interval_s"]))

    @property
    def scan_id(self) -> str:
        return self.scan["scan_id"]

    @property
    def n_used(self) -> int:
        """Projections in the groups reconstructed so far."""
        return sum(n for _, _, n in self.groups.values())

    def record(self, event: dict[str, Any], now: float) -> None:
        """Take one ``group_done`` or ``group_failed`` event of this scan."""
        self.last_result = now
        group = int(event["group"])
        if event["type"] == "group_failed":
            self.failed.add(group)
            self.first_error = self.first_error or f"group {group}: {event.get('error')}"
            return
        self.groups[group] = (math.radians(float(event["angle_deg"])), float(event["weight"]),
                              int(event["n_projections"]))
        self.center_px = float(event["center_px"])

    def live_due(self, now: float) -> bool:
        """True once per ``publish_interval_s`` when new groups arrived since the last volume."""
        if now < self.next_publish:
            return False
        self.next_publish = now + float(self.settings["publish_interval_s"])
        return len(self.groups) > self.published_groups

    def missing(self) -> set[int]:
        """Groups ingest saw finished whose result has not reached the daemon yet."""
        arrived = set((self.complete or {}).get("groups_arrived", []))
        return arrived - set(self.groups) - self.failed

    def _parts(self, quantity: str) -> tuple[np.ndarray, np.ndarray]:
        """``(sinogram, partial volumes)`` of ``"delta"`` or (several distances) ``"beta"``."""
        prefix = "" if quantity == "delta" else f"{quantity}_"
        return self.buffers.arrays[f"{prefix}sinogram"], self.buffers.arrays[f"{prefix}volume"]

    def volume_of(self, quantity: str, final: bool, backend: Backend) -> np.ndarray | None:
        """The live or final volume of ``quantity`` (``"delta"``, or ``"beta"`` of several distances)."""
        return self.final_volume(backend, quantity) if final else self.live_volume(backend, quantity)

    def needs_fbp(self) -> bool:
        """True when volumes must be made anew: another centre than the workers', or an aim.

        A deferred-centre scan's volumes are always made anew (its workers back-project nothing).
        """
        return bool(self.deferred) or self.centre.differs_from(self.center_px) or aims.differs(
            aims.base_of(self.scan, self.settings), self.aim)

    def check_aim(self, aim: dict[str, Any], backend: Backend) -> None:
        """Raise ValueError (with the reason) for an aim this scan's volumes cannot be made with."""
        if aims.differs(aims.base_of(self.scan, self.settings), aim):
            if self.deferred:
                raise ValueError(DEFERRED_RETUNE)
            if self.scan.get("distances"):
                raise ValueError(DISTANCES_RETUNE)
        aims.volume_job(self.buffers.sinogram, self.buffers.arrays.get("binned"), self.buffers.reference, {},
                        self.scan, self.settings, aim, 0.0, (1, 1, 1), backend, final=True)

    def volume_job(self, backend: Backend, final: bool, filtered_out: np.ndarray | None = None):
        """The computation of this scan's volume with its centre and aim (``aims.volume_job``).

        The groups are a snapshot (the loop adds more meanwhile); ValueError for an aim that
        cannot be made (e.g. δ/β in pool mode, without transmissions). Returns the
        computation and whether it retrieves the phase again (then it fills ``filtered_out``,
        ``(len(groups), rows_b, cols_b)`` float32, in sorted group order). The computation
        subtracts the streaming ring filter's stripes (``rings.py``) where they are known.
        """
        groups, centre = dict(self.groups), self.centre.binned_px
        if self.deferred:
            self.check_aim(self.aim, backend)
            return (lambda: self._deferred_volume(backend, final, groups, centre)), False
        base = aims.base_of(self.scan, self.settings)
        used = aims.applied(base, self.aim)
        compute, rephased = aims.volume_job(self.buffers.sinogram, self.buffers.arrays.get("binned"),
                                            self.buffers.reference, groups, self.scan, self.settings,
                                            dict(self.aim), centre, tuple(self.buffers.volume.shape[1:]),
                                            backend, final, filtered_out=filtered_out)

        def with_rings() -> np.ndarray:
            own = self.stripes(backend)  # before the volume: its weights are never behind it
            volume = compute()
            if self.scan.get("distances"):  # β of the same groups and axis, for the publisher
                sinogram, partials = self._parts("beta")
                self.job_beta = recentred_volume(sinogram, groups, centre, partials.shape[1:], backend, final)
            return self.rings.subtract(volume, stripes_for(own, base, used, backend), groups, centre, final,
                                       backend, base=own)
        return with_rings, rephased

    def live_volume(self, backend: Backend, quantity: str = "delta") -> np.ndarray | None:
        """The current normalised sum of the partials (None before the first group).

        With a centre other than the workers' (estimated or set by the operator), an aim, or
        a deferred centre, the one-shot FBP of the arrived groups from the sinogram instead.
        """
        if quantity != "delta":
            return self._beta_volume(backend, final=False)
        self.published_groups = len(self.groups)
        self.centre.refine(self.buffers.sinogram, self.groups, self.scan_id)
        if self.groups and self.needs_fbp():
            return self.volume_job(backend, final=False)[0]()
        stripes = self.stripes(backend)  # before the volume: its weights are never behind it
        volume = live_volume(self.buffers.volume, self.buffers.weights)
        if volume is None:
            return None
        return self.rings.subtract(volume, stripes, self.groups, self.center_px, False, backend)

    def final_volume(self, backend: Backend, quantity: str = "delta") -> np.ndarray:
        """The one-shot FBP of the groups that arrived (see :func:`final_volume`)."""
        if quantity != "delta":
            return self._beta_volume(backend, final=True)
        self.centre.refine(self.buffers.sinogram, self.groups, self.scan_id, final=True)
        if self.needs_fbp():
            return self.volume_job(backend, final=True)[0]()
        stripes = self.stripes(backend)
        volume = self._final_of(self.buffers.volume, self.buffers.sinogram, backend)
        return self.rings.subtract(volume, stripes, self.groups, self.center_px, True, backend)

    def _final_of(self, partials: np.ndarray, sinogram: np.ndarray, backend: Backend) -> np.ndarray:
        """:func:`final_volume` of these partials and sinogram (δ's or β's), the arrived groups."""
        groups = np.array(sorted(self.groups))
        angles = np.array([self.groups[g][0] for g in groups])
        used = np.array([self.groups[g][1] for g in groups])
        return final_volume(partials, self.buffers.weights, sinogram, groups, angles, used, self.center_px, backend)

    def _deferred_volume(self, backend: Backend, final: bool, groups: dict[int, tuple[float, float, int]],
                         centre: float) -> np.ndarray:
        """A deferred-centre scan's volume of ``groups`` about ``centre`` (daemon/halfscan.py)."""
        columns = deferred_columns(self.buffers.sinogram.shape[2], centre)
        stripes = self.rings.stripes(self.buffers, columns is not None, backend, columns)
        volume = deferred_volume(self.buffers.sinogram, groups, centre,
                                 ramp_of(self.scan, self.settings, backend), backend, final)
        return self.rings.subtract(volume, stripes, groups, centre, final, backend)

    def stripes(self, backend: Backend):
        """The streaming ring filter's ramp-filtered stripes so far (None: none to subtract)."""
        return self.rings.stripes(self.buffers, self.buffers.volume.shape[-1] != self.buffers.sinogram.shape[-1],
                                  backend)

    def _beta_volume(self, backend: Backend, final: bool) -> np.ndarray | None:
        """β of a scan at several distances, about δ's centre (no aim: such scans refuse one)."""
        sinogram, partials = self._parts("beta")
        if self.groups and self.centre.differs_from(self.center_px):
            return recentred_volume(sinogram, self.groups, self.centre.binned_px, partials.shape[1:], backend,
                                    final=final)
        if not final:
            return live_volume(partials, self.buffers.weights)
        return self._final_of(partials, sinogram, backend)

    def header(self, volume: np.ndarray, final: bool) -> dict[str, Any]:
        """The header of this scan's next volume message."""
        header = volume_header(self.scan, self.settings, scan_seq=self.seq, seq=self.volume_seq,
                               final=final, n_used=self.n_used, shape=volume.shape)
        header.pop("cor_confidence", None)  # only an estimate has one
        header.update(self.centre.fields(), ring_filter=self.rings.applied)
        # the volume is wider than the binned detector only for a 360° offset-axis scan
        header["half_acquisition"] = volume.shape[-1] != int(self.scan["shape"][1]) // int(
            self.settings["binning"])
        header.update(aims.retuned_fields(aims.base_of(self.scan, self.settings), self.aim,
                                          int(self.settings["iterations"])))
        if self.scan.get("distances"):
            from holostream.service.daemon.distances import header_fields
            header.update(header_fields(self.scan, self.buffers, self.complete, final))
        why = (self.complete or {}).get("incomplete")
        if final and why:  # a stalled scan: the volume of what arrived, saying so
            header.update(incomplete=True, incomplete_reason=why)
        self.volume_seq += 1
        return header

    def close(self) -> None:
        """Unlink and unmap the scan's shared memory."""
        self.rings.release()
        self.buffers.unlink()
        self.buffers.close()
