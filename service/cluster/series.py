"""A series of scans reconstructed in parallel: one NeXus/HDF5 volume per scan, restartable.

Each scan is one task: the whole ``holostream reconstruct`` of that file, run where the
engine puts it (a worker process of a local cluster or of the facility's Dask cluster), or
in this process when there is no cluster. A scan whose volume already exists is skipped, and
a volume appears under its final name only once it is complete (written to ``.part``, then
renamed), so a series stopped at any moment is finished by running the same command again.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

#: File names taken as scans when a folder is given.
SCAN_PATTERNS = ("*.nx", "*.nxs", "*.h5", "*.hdf5")
#: Suffix of the volume written for each scan, beside its stem, in the output folder.
VOLUME_SUFFIX = "_volume.h5"


class SeriesError(ValueError):
    """Inputs that do not name any scan, or an output that is not a folder."""


def find_scans(inputs: Iterable[str]) -> list[Path]:
    """The scan files named by ``inputs``: files, folders (their ``SCAN_PATTERNS``) and globs.

    Returns the files sorted by path, each once. Volumes written by a series
    (``*_volume.h5``) are never taken as scans.

    Raises
    ------
    SeriesError
        An input that names nothing, or no scan at all.
    """
    found: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = [p for pattern in SCAN_PATTERNS for p in path.glob(pattern)]
        elif path.is_file():
            matches = [path]
        else:
            matches = [Path(p) for p in glob.glob(item) if Path(p).is_file()]
        if not matches:
            raise SeriesError(f"{item}: no scan file there")
        found.update(p.resolve() for p in matches if not p.name.endswith(VOLUME_SUFFIX))
    if not found:
        raise SeriesError("no scan files among the inputs")
    return sorted(found)


def volume_path(scan: Path, out_dir: Path) -> Path:
    """Where the volume of ``scan`` goes: ``out_dir/<scan stem>_volume.h5``."""
    return out_dir / f"{scan.stem}{VOLUME_SUFFIX}"


#: Options of the command that belong to the series, not to each scan's reconstruction.
SERIES_OPTIONS = ("input", "output", "quiet", "series", "cluster", "cluster_workers", "cluster_tls", "command",
                  "verbose")


def reconstruct_one(scan: str, output: str, options: dict[str, Any]) -> dict[str, Any]:
    """Reconstruct one scan as ``holostream reconstruct SCAN -o OUTPUT`` does; the task.

    ``options`` are the command's parsed options (``vars(args)``) applied to this scan, those
    of :data:`SERIES_OPTIONS` excepted. Runs in whichever process the engine chose. The volume
    is written to ``OUTPUT.part`` and renamed once complete. Returns ``{"scan", "output",
    "rc", "seconds", "error", "host"}`` (``error``: the command's own message on failure).
    """
    from holostream.service.cli import build_parser
    from holostream.service.commands import reconstruct

    part = f"{output}.part"
    argv = ["reconstruct", scan, "-o", part, "--quiet"]
    args = build_parser(argv).parse_args(argv)
    for key, value in options.items():
        if key not in SERIES_OPTIONS:
            setattr(args, key, value)
    messages = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(messages), contextlib.redirect_stderr(messages):
        rc = int(reconstruct.run(args) or 0)
    if rc == 0:
        os.replace(part, output)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(part)
    text = messages.getvalue().strip()
    return {"scan": scan, "output": output, "rc": rc, "seconds": time.perf_counter() - start,
            "error": None if rc == 0 else (text.splitlines() or ["failed"])[-1], "host": os.uname().nodename}


@dataclass
class SeriesReport:
    """What a series run did: counts, per-scan results, wall time."""

    done: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"scans": len(self.done) + len(self.failed) + len(self.skipped), "done": len(self.done),
                "failed": len(self.failed), "skipped": len(self.skipped), "seconds": round(self.seconds, 3)}


def run_series(scans: list[Path], out_dir: Path, options: dict[str, Any], client: Any = None,
               on_result: Callable[[dict[str, Any]], None] | None = None) -> SeriesReport:
    """Reconstruct every scan whose volume is not in ``out_dir`` yet.

    Parameters
    ----------
    scans : list of Path
        From :func:`find_scans`.
    out_dir : Path
        Output folder (created).
    options : dict
        ``holostream reconstruct``'s parsed options, applied to every scan (see :func:`reconstruct_one`).
    client : distributed.Client, optional
        Where the tasks run; None: one after the other in this process.
    on_result : callable, optional
        Called with each task's result as it comes (progress bars, logs).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    report = SeriesReport()
    start = time.perf_counter()
    todo = []
    for scan in scans:
        target = volume_path(scan, out_dir)
        if target.exists():
            report.skipped.append(str(scan))
        else:
            todo.append((str(scan), str(target)))
    if client is None:
        results: Iterable[dict[str, Any]] = (reconstruct_one(s, o, options) for s, o in todo)
    else:
        from distributed import as_completed

        futures = [client.submit(reconstruct_one, s, o, options, key=f"holostream-reconstruct-{Path(s).name}",
                                 pure=False, retries=1) for s, o in todo]
        results = (future.result() for future in as_completed(futures))
    for result in results:
        (report.done if result["rc"] == 0 else report.failed).append(result)
        if on_result is not None:
            on_result(result)
    report.seconds = time.perf_counter() - start
    return report


def _progress(total: int) -> Callable[[dict[str, Any]], None]:
    """A tqdm bar on a terminal, else one line per scan (logs, batch jobs)."""
    import sys

    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, unit="scan", desc="series")

        def update(result: dict[str, Any]) -> None:
            bar.update(1)
            if result["rc"] != 0:
                bar.write(f"failed: {result['scan']}: {result['error']}")
            if bar.n == bar.total:
                bar.close()
        return update

    count = [0]

    def line(result: dict[str, Any]) -> None:
        count[0] += 1
        state = "done" if result["rc"] == 0 else f"FAILED ({result['error']})"
        print(f"[{count[0]}/{total}] {result['scan']}: {state} in {result['seconds']:.1f} s on {result['host']}",
              file=sys.stderr, flush=True)
    return line


def run_command(args: Any) -> int:
    """``holostream reconstruct --series``: the exit code (0 all done, 1 some failed, 2 bad use)."""
    import json
    import sys

    from holostream.service.cluster.engine import ClusterError, TLSFiles, close, connect

    try:
        scans = find_scans(args.input)
    except SeriesError as err:
        print(f"holostream reconstruct: {err}", file=sys.stderr)
        return 2
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        print(f"holostream reconstruct: --series needs -o to be a folder, {out_dir} is a file", file=sys.stderr)
        return 2
    client = None
    try:
        if args.cluster:
            tls = TLSFiles.from_dir(args.cluster_tls) if args.cluster_tls else None
            client = connect(None if args.cluster == "local" else args.cluster, args.cluster_workers, tls)
        todo = sum(not volume_path(s, out_dir).exists() for s in scans)
        report = run_series(scans, out_dir, vars(args), client, None if args.quiet else _progress(todo))
    except ClusterError as err:
        print(f"holostream reconstruct: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("holostream reconstruct: interrupted; run the same command again to finish the series",
              file=sys.stderr)
        return 130
    finally:
        if client is not None:
            close(client)
    print(json.dumps(report.summary()))
    return 1 if report.failed else 0
