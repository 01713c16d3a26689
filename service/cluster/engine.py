"""The distributed engine: a Dask ``distributed`` client, on a cluster or on this machine.

holostream schedules nothing itself: series of scans go to a Dask scheduler that the
facility runs (started by SLURM, Kubernetes or by hand, see deploy/slurm/), or to a local
cluster of worker processes when no address is given. Connections to a remote scheduler are
authenticated and encrypted with mutual TLS (Dask's ``Security``), the equivalent of the
daemon's CURVE keys: only holders of a certificate signed by the facility's CA get in.

Dask is an optional extra (``pip install holostream[cluster]``); nothing here is imported
by the daemon or by a single-machine reconstruction.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any


class ClusterError(RuntimeError):
    """The engine is missing, or the cluster cannot be reached; ``str()`` says why."""


@dataclass(frozen=True)
class TLSFiles:
    """Paths of the PEM files of mutual TLS: the CA that signs every member, and our own pair."""

    ca_file: str
    cert_file: str
    key_file: str

    @classmethod
    def from_dir(cls, folder: str | os.PathLike) -> "TLSFiles":
        """``ca.pem``, ``cert.pem`` and ``key.pem`` in ``folder`` (see deploy/slurm/README.md)."""
        paths = [os.path.join(os.fspath(folder), name) for name in ("ca.pem", "cert.pem", "key.pem")]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise ClusterError(f"TLS files missing: {', '.join(missing)}")
        return cls(*paths)

    def security(self) -> Any:
        """The ``distributed.Security`` that requires encryption and a valid client certificate."""
        from distributed.security import Security

        return Security(tls_ca_file=self.ca_file, tls_client_cert=self.cert_file,
                        tls_client_key=self.key_file, require_encryption=True)


def _distributed():
    try:
        import distributed
    except ImportError as exc:
        raise ClusterError("the cluster engine is not installed: pip install 'holostream[cluster]'") from exc
    return distributed


def connect(address: str | None, workers: int = 2, tls: TLSFiles | None = None,
            timeout_s: float = 30.0, direct_to_workers: bool = False) -> Any:
    """A ``distributed.Client`` for ``address``, or for a new local cluster.

    Parameters
    ----------
    address : str or None
        Scheduler address (``tls://host:8786``; ``tcp://`` only on a trusted network).
        None: start a local cluster of ``workers`` processes (one thread each) on loopback.
    workers : int
        Worker processes of a local cluster.
    tls : TLSFiles, optional
        Mutual TLS for a remote scheduler (required for ``tls://`` addresses).
    timeout_s : float
        How long to wait for the scheduler.
    direct_to_workers : bool
        Talk to the workers directly, not through the scheduler: required for actors (live
        scans), whose calls would otherwise carry every array through the scheduler's node.

    Raises
    ------
    ClusterError
        Engine not installed, scheduler unreachable, or ``tls://`` without certificates.
    """
    distributed = _distributed()
    if address is None:
        # The scheduler serves HTTP (health, metrics) even without a dashboard, on :8787
        # unless told otherwise: an ephemeral loopback port keeps two daemons (or a user's
        # own Dask dashboard) from competing for it.
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                           scheduler_kwargs={"dashboard": False},
                                           silence_logs=logging.WARNING)
        return distributed.Client(cluster, timeout=timeout_s, direct_to_workers=direct_to_workers)
    if address.startswith("tls://") and tls is None:
        raise ClusterError(f"{address}: a tls:// scheduler needs --cluster-tls DIR (ca.pem, cert.pem, key.pem)")
    try:
        return distributed.Client(address, security=tls.security() if tls else None, timeout=timeout_s,
                                  direct_to_workers=direct_to_workers)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"cannot reach the scheduler at {address}: {exc}") from exc


def close(client: Any) -> None:
    """Close the client and, if it started one, its local cluster."""
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()
