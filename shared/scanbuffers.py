"""The shared-memory arrays of one scan: frame ring, dark/flat reference, sinogram, volumes.

The ingest process creates them at ``scan_start``; workers and the daemon attach by name.
Segments are named ``<prefix>_<part>`` with ``prefix = holostream_<daemon pid>_<scan seq>``
so the daemon can :func:`sweep` its own leftovers from ``/dev/shm``.

Lifetime is explicit: whoever calls :meth:`~ScanBuffers.unlink` removes the segments;
Python's resource tracker is kept out of it in every process (it would otherwise unlink a
segment when the first attaching process exits, or warn about "leaked" segments that another
process still owns). The daemon sweeps at exit, which also covers crashed children. Linux
only: segments are the files of ``/dev/shm``.
"""

from __future__ import annotations

import logging
import mmap
import os
import sys
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
#: Split mode: the ``handoff`` row of a group is ``(state, angle_deg, weight (rad),
#: n_projections, center_px)``; state is one of the four below. Written by the
#: reconstructor in shared memory, so it survives the reconstructor's death (its queue
#: messages may not: they leave through a feeder thread). ``HANDOFF_ADDING``: being added
#: to ``volume[0]`` right now (a process killed then may leave part of it there).
HANDOFF_COLUMNS = 5
HANDOFF_WAITING, HANDOFF_TAKEN, HANDOFF_COMMITTED, HANDOFF_ADDING = 0.0, 1.0, 2.0, 3.0
_TRACK_KEYWORD = sys.version_info >= (3, 13)  # SharedMemory(track=False) exists from 3.13


@dataclass(frozen=True)
class PartSpec:
    """dtype (numpy name) and shape of one shared array."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Size of the array (bytes)."""
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def layout(frame_shape: tuple[int, int], frame_dtype: str, n_slots: int, n_groups: int,
           binned_shape: tuple[int, int], n_workers: int, binned: bool = False,
           volume_width: int | None = None, n_distances: int = 1,
           transmissions: bool = False) -> dict[str, PartSpec]:
    """The parts of one scan's buffers (docs/architecture.md, "Shared memory of one scan").

    Parameters
    ----------
    frame_shape : (rows, cols)
        Unbinned detector frame shape.
    frame_dtype : str
        Frame dtype on the wire, e.g. ``"uint16"``.
    n_slots : int
        Ring slots (raw projections held at once).
    n_groups : int
        Angle groups of the scan (projections after angle binning).
    binned_shape : (rows_b, cols_b)
        Frame shape after pixel binning.
    n_workers : int
        Partial volumes (and weights): one per worker in pool mode, one in split mode.
    binned : bool
        Add the parts of split mode: ``binned``, the CPU workers' transmissions waiting for
        the reconstructor process, and ``handoff``, which groups it holds or has added to
        ``volume[0]``.

    Returns
    -------
    dict of str to PartSpec
        ``ring`` (n_slots, rows, cols) frame dtype; ``reference`` float32 (2, rows, cols)
        (dark mean, flat mean); ``sinogram`` float32 (n_groups, rows_b, cols_b);
        ``volume`` float32 (n_workers, rows_b, n, n) with ``n = volume_width or cols_b``;
        ``weights`` float64 (n_workers,); ``absorption_sum`` float64 (n_workers, 2, rows_b, cols_b)
        and ``absorption_weights`` float64 (n_workers, 2), each partial's Σ weight·(-ln
        transmission) and Σ weight of its groups in two sets of angles (the ring filter's means);
        with ``binned``, also ``binned`` float32 (n_groups, rows_b, cols_b) and
        ``handoff`` float64 (n_groups, 5); with ``transmissions`` only, ``binned``.
        With ``n_distances > 1`` (docs/multi-distance.md, "Live"): ``reference`` is float32
        (n_distances, 2, rows, cols), and ``beta_sinogram``, ``beta_volume`` (the β twins of
        ``sinogram`` and ``volume``) and ``shifts`` float64 (n_distances, 2) (the offsets in
        use, each distance's own unbinned pixels; NaN until ingest has them) are added.
    n_distances : int
        Propagation distances of the scan (1: a single-distance scan, the layout above).
    transmissions : bool
        Pool mode: add ``binned`` alone, where the workers keep each group's transmission so
        that a new δ/β or phase chain can be retrieved again (``service/daemon/aims.py``).
    """
    rows, cols = frame_shape
    rows_b, cols_b = binned_shape
    n = cols_b if volume_width is None else int(volume_width)
    for name, value in (("n_slots", n_slots), ("n_groups", n_groups), ("n_workers", n_workers),
                        ("rows", rows), ("cols", cols), ("rows_b", rows_b), ("cols_b", cols_b),
                        ("volume_width", n)):
        if value < 1:
            raise ValueError(f"{name}={value}: every dimension of the scan buffers must be >= 1")
    parts = {
        "ring": PartSpec(np.dtype(frame_dtype).name, (n_slots, rows, cols)),
        "reference": PartSpec("float32", (2, rows, cols)),
        "sinogram": PartSpec("float32", (n_groups, rows_b, cols_b)),
        "volume": PartSpec("float32", (n_workers, rows_b, n, n)),
        "weights": PartSpec("float64", (n_workers,)),
        # Σ weight·(-ln transmission) and Σ weight of each partial over two sets of angles
        # (θ mod 180° below/above 90°): the streaming ring filter's means
        "absorption_sum": PartSpec("float64", (n_workers, 2, rows_b, cols_b)),
        "absorption_weights": PartSpec("float64", (n_workers, 2)),
    }
    if n_distances > 1:
        parts["reference"] = PartSpec("float32", (n_distances, 2, rows, cols))
        parts["beta_sinogram"] = parts["sinogram"]
        parts["beta_volume"] = parts["volume"]
        parts["shifts"] = PartSpec("float64", (n_distances, 2))
    if binned or transmissions:
        # indexed by group, like sinogram: a slot is never reused within a scan, so a group
        # whose reconstructor died can never be overwritten while a successor reads it
        parts["binned"] = PartSpec("float32", (n_groups, rows_b, cols_b))
    if binned:
        parts["handoff"] = PartSpec("float64", (n_groups, HANDOFF_COLUMNS))
    return parts


class _Attached:
    """An existing segment mapped straight from ``/dev/shm`` (Python < 3.13).

    ``SharedMemory(name)`` registers the segment with the resource tracker that all
    processes of the daemon share, and unregistering it afterwards races with the other
    attaching processes (the tracker then prints KeyError tracebacks). Mapping the file
    directly keeps the tracker out of it; on Linux a POSIX shared-memory object is that file.
    """

    def __init__(self, name: str):
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
        try:
            self.size = os.fstat(fd).st_size
            self._mmap = mmap.mmap(fd, self.size)
        finally:
            os.close(fd)
        self.buf = memoryview(self._mmap)

    def close(self) -> None:
        self.buf.release()  # raises BufferError while numpy views still use it
        self._mmap.close()


def _create(name: str, size: int) -> SharedMemory:
    """A new segment that no resource tracker will unlink or warn about."""
    if _TRACK_KEYWORD:
        return SharedMemory(name, create=True, size=size, track=False)
    shm = SharedMemory(name, create=True, size=size)
    # Before 3.13 every SharedMemory registers itself; take it back at once (one process,
    # one name: nothing can interleave).
    resource_tracker.unregister(shm._name, "shared_memory")
    return shm


def _attach(name: str) -> SharedMemory | _Attached:
    """Map an existing segment without involving the resource tracker."""
    if _TRACK_KEYWORD:
        return SharedMemory(name, track=False)
    return _Attached(name)


def shm_free_bytes() -> int:
    """Bytes still available in ``/dev/shm`` (tmpfs: touching beyond it kills with SIGBUS)."""
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize


class ScanBuffers:
    """Named shared-memory arrays of one scan, as numpy views.

    Use :meth:`create` (owner) or :meth:`attach` (everyone else); pass
    :meth:`description` through queues. Attributes ``ring``, ``reference``, ``sinogram``,
    ``volume``, ``weights``, ``absorption_sum``, ``absorption_weights`` (and ``binned`` when kept) are the arrays of :func:`layout`;
    ``arrays`` maps every part.
    """

    def __init__(self, prefix: str, specs: dict[str, PartSpec], segments: dict[str, Any]):
        self.prefix = prefix
        self.specs = specs
        self._segments: dict[str, SharedMemory | _Attached] = segments
        self.arrays: dict[str, np.ndarray] = {
            part: np.ndarray(spec.shape, dtype=spec.dtype, buffer=segments[part].buf)
            for part, spec in specs.items()
        }

    # the parts of the standard layout, spelled out for readers and linters
    @property
    def ring(self) -> np.ndarray:
        """Raw frames, ``(n_slots, rows, cols)`` of the frame dtype."""
        return self.arrays["ring"]

    @property
    def reference(self) -> np.ndarray:
        """float32 ``(2, rows, cols)``: dark mean, flat mean."""
        return self.arrays["reference"]

    @property
    def sinogram(self) -> np.ndarray:
        """float32 ``(n_groups, rows_b, cols_b)``: filtered projections in δ pixel units."""
        return self.arrays["sinogram"]

    @property
    def volume(self) -> np.ndarray:
        """float32 ``(n_workers, rows_b, cols_b, cols_b)``: one partial volume per worker."""
        return self.arrays["volume"]

    @property
    def weights(self) -> np.ndarray:
        """float64 ``(n_workers,)``: sum of the angle weights (rad) each worker added."""
        return self.arrays["weights"]

    @property
    def absorption_sum(self) -> np.ndarray:
        """float64 ``(n_workers, 2, rows_b, cols_b)``: Σ weight·(-ln transmission), per worker and angle set."""
        return self.arrays["absorption_sum"]

    @property
    def absorption_weights(self) -> np.ndarray:
        """float64 ``(n_workers, 2)``: the Σ weight of :attr:`absorption_sum`, radians."""
        return self.arrays["absorption_weights"]

    @property
    def binned(self) -> np.ndarray:
        """float32 ``(n_groups, rows_b, cols_b)``: binned transmissions (split mode; pool mode keeping them)."""
        if "binned" not in self.arrays:
            raise KeyError(f"scan buffers {self.prefix} have no 'binned' part (pool mode not keeping "
                           "transmissions, or several distances)")
        return self.arrays["binned"]

    @property
    def handoff(self) -> np.ndarray:
        """float64 ``(n_groups, 5)``: state, angle_deg, weight, n_projections, center_px per group.

        Split mode only. State ``HANDOFF_TAKEN`` once the reconstructor holds the group,
        ``HANDOFF_ADDING`` while it is being added to ``volume[0]``, ``HANDOFF_COMMITTED``
        (with the other columns) once it is there.
        """
        if "handoff" not in self.arrays:
            raise KeyError(f"scan buffers {self.prefix} have no 'handoff' part (pool mode)")
        return self.arrays["handoff"]

    @property
    def nbytes(self) -> int:
        """Total size of all parts (bytes)."""
        return sum(spec.nbytes for spec in self.specs.values())

    @classmethod
    def create(cls, prefix: str, specs: dict[str, PartSpec]) -> "ScanBuffers":
        """Create zero-filled segments ``<prefix>_<part>``.

        Raises
        ------
        MemoryError
            When ``/dev/shm`` has less room than the parts need.
        FileExistsError
            When a segment of that name exists already.
        """
        total = sum(spec.nbytes for spec in specs.values())
        free = shm_free_bytes()
        if total > free:
            raise MemoryError(f"scan buffers need {total / 1e9:.2f} GB of shared memory, "
                              f"{SHM_DIR} has {free / 1e9:.2f} GB free")
        segments: dict[str, SharedMemory] = {}
        try:
            for part, spec in specs.items():
                segments[part] = _create(f"{prefix}_{part}", max(spec.nbytes, 1))
        except BaseException:
            for part, shm in segments.items():
                shm.close()
                os.unlink(os.path.join(SHM_DIR, f"{prefix}_{part}"))
            raise
        # tmpfs pages start as zeros; nothing to clear
        return cls(prefix, specs, segments)

    @classmethod
    def attach(cls, description: dict[str, Any]) -> "ScanBuffers":
        """Attach the segments named in :meth:`description` (another process's buffers)."""
        prefix = description["prefix"]
        specs = {part: PartSpec(d["dtype"], tuple(d["shape"])) for part, d in description["parts"].items()}
        segments: dict[str, Any] = {}
        try:
            for part in specs:
                segments[part] = _attach(f"{prefix}_{part}")
        except BaseException:
            for shm in segments.values():
                shm.close()
            raise
        short = [f"{prefix}_{part} has {segments[part].size} bytes, {spec.nbytes} expected"
                 for part, spec in specs.items() if segments[part].size < spec.nbytes]
        if short:
            for shm in segments.values():
                shm.close()
            raise ValueError("shared memory smaller than described: " + "; ".join(short))
        return cls(prefix, specs, segments)

    def description(self) -> dict[str, Any]:
        """Plain dict (names, dtypes, shapes) from which :meth:`attach` rebuilds the views."""
        return {"prefix": self.prefix,
                "parts": {part: {"name": f"{self.prefix}_{part}", "dtype": spec.dtype,
                                 "shape": list(spec.shape)}
                          for part, spec in self.specs.items()}}

    def close(self) -> None:
        """Drop this process's mapping (the segments stay until unlinked)."""
        self.arrays = {}
        for part, shm in list(self._segments.items()):
            try:
                shm.close()
            except BufferError:
                # someone still holds a view; the mapping goes when that view does
                log.warning("shared array %s_%s still in use; left mapped", self.prefix, part)
            del self._segments[part]

    def unlink(self) -> None:
        """Remove the segments from ``/dev/shm`` (mappings stay valid until closed)."""
        for part in self.specs:
            try:
                os.unlink(os.path.join(SHM_DIR, f"{self.prefix}_{part}"))
            except FileNotFoundError:
                log.debug("segment %s_%s already unlinked", self.prefix, part)

    def __enter__(self) -> "ScanBuffers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sweep(prefix: str) -> list[str]:
    """Unlink every ``/dev/shm/<prefix>*`` segment left over (e.g. by a crashed process).

    Returns
    -------
    list of str
        The names removed.
    """
    if not prefix.startswith("holostream_"):
        raise ValueError(f"refusing to sweep {prefix!r}: holostream segments start with 'holostream_'")
    removed = []
    try:
        names = sorted(os.listdir(SHM_DIR))
    except FileNotFoundError:
        return removed
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
            except FileNotFoundError:
                continue
            removed.append(name)
    if removed:
        log.info("swept %d shared-memory segment(s) %s*", len(removed), prefix)
    return removed


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists, whoever owns it (a zombie counts as alive).

    ``kill(pid, 0)`` rather than ``/proc/<pid>``: under systemd's ``ProtectProc=invisible``
    other users' processes have no ``/proc`` entry but are very much alive.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sweep_orphans() -> list[str]:
    """Unlink ``holostream_<pid>_*`` segments whose daemon process no longer exists.

    A daemon killed with SIGKILL cannot sweep its own; the next one calls this at start.
    Only segments whose owner pid is gone are touched, so daemons running side by side keep
    theirs; all daemons sharing ``/dev/shm`` must share one PID namespace (true on one host
    without containers). A reused pid keeps its segments (erring on the safe side).

    Returns
    -------
    list of str
        The names removed.
    """
    dead: set[str] = set()
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return []
    for name in names:
        pid = name.split("_")[1] if name.startswith("holostream_") and name.count("_") >= 2 else ""
        if pid.isdigit() and pid not in dead and int(pid) != os.getpid() and not pid_alive(int(pid)):
            dead.add(pid)
    removed = []
    for pid in sorted(dead):
        try:
            removed += sweep(f"holostream_{pid}_")
        except PermissionError as exc:  # another user's leftovers (sticky /dev/shm): not ours to remove
            log.warning("cannot sweep leftovers of dead daemon %s: %s", pid, exc)
    return removed
