"""The cluster's connections are authenticated: mutual TLS with the facility's CA.

A real Dask scheduler and worker started with certificates from deploy/slurm/make-certs.sh:
a client with a certificate of that CA reconstructs a series; one without certificates, or
with a certificate of another CA, is refused with one line. The SLURM batch script runs too,
outside SLURM (it then starts its scheduler and workers on this machine).
"""

import json
import os
import subprocess
import sys
import time

import pytest

from holostream.service.bench.serving import stop_process

pytest.importorskip("distributed", reason="the cluster extra (dask[distributed]) is not installed")

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLURM = os.path.join(ROOT, "deploy", "slurm")


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """Two independent CAs: ``good`` (the cluster's) and ``other``."""
    base = tmp_path_factory.mktemp("tls")
    for name in ("good", "other"):
        subprocess.run(["bash", os.path.join(SLURM, "make-certs.sh"), str(base / name)], check=True,
                       capture_output=True, timeout=60)
    return base


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    from holostream.service.bench.cluster import simulated_series

    return simulated_series(tmp_path_factory.mktemp("tls_series"), 2, size=32, n_projections=20)


@pytest.fixture(scope="module")
def tls_cluster(certs, tmp_path_factory):
    """A scheduler and one worker on loopback that take only peers of the ``good`` CA."""
    tls = certs / "good"
    args = ["--tls-ca-file", tls / "ca.pem", "--tls-cert", tls / "cert.pem", "--tls-key", tls / "key.pem"]
    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("tls_logs") / "cluster.log", "w")
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", str(port), "--no-dashboard", *map(str, args)],
                                 stdout=log, stderr=subprocess.STDOUT)
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                               "--no-dashboard", "--death-timeout", "60", *map(str, args)],
                              stdout=log, stderr=subprocess.STDOUT)
    yield address
    for proc in (worker, scheduler):
        stop_process(proc, 20.0)
    log.close()


def reconstruct_series(series, out, *extra):
    return subprocess.run([sys.executable, "-m", "holostream.service.cli", "reconstruct", "--series", str(series),
                           "-o", str(out), "--phase", "paganin", *map(str, extra)],
                          capture_output=True, text=True, timeout=240)


def test_a_client_of_the_clusters_ca_gets_its_series_done(tls_cluster, certs, series, tmp_path):
    result = reconstruct_series(series, tmp_path / "out", "--cluster", tls_cluster, "--cluster-tls",
                                certs / "good")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1])["done"] == 2


def test_a_client_without_the_clusters_certificate_is_refused(tls_cluster, certs, series, tmp_path):
    bare = reconstruct_series(series, tmp_path / "a", "--cluster", tls_cluster)
    assert bare.returncode == 2 and "needs --cluster-tls" in bare.stderr
    start = time.monotonic()
    stranger = reconstruct_series(series, tmp_path / "b", "--cluster", tls_cluster, "--cluster-tls",
                                  certs / "other")
    assert stranger.returncode == 2 and "cannot reach the scheduler" in stranger.stderr, stranger.stderr[-2000:]
    assert time.monotonic() - start < 120
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").glob("*_volume.h5"))


def test_the_slurm_batch_script_runs_a_series_outside_slurm(certs, series, tmp_path):
    env = dict(os.environ, HOLOSTREAM_CLUSTER_TLS=str(certs / "good"), HOLOSTREAM_PYTHON=sys.executable,
               HOLOSTREAM_SCHEDULER_PORT=str(free_port()), HOLOSTREAM_LOCAL_WORKERS="2")
    env.pop("SLURM_JOB_ID", None)
    result = subprocess.run(["bash", os.path.join(SLURM, "holostream-series.sbatch"), str(series),
                             str(tmp_path / "out"), "--phase", "paganin"],
                            capture_output=True, text=True, timeout=300, env=env, start_new_session=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1])["done"] == 2
    assert len(list((tmp_path / "out").glob("*_volume.h5"))) == 2
