"""A live scan reconstructed by actors on a real local Dask cluster that the daemon starts.

``[cluster] actors = 2``: the daemon's dispatcher starts a local cluster of two worker
processes, one ``LiveActor`` on each; the daemon's workers bin, the actors phase, filter and
back-project. The final volume must be the one-process one (offline and a pool-mode daemon),
and an actor whose worker process, or the dispatcher itself, is killed with SIGKILL mid-scan
must cost no angle.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from holostream.service.bench.serving import stop_process
from test_metrics import scrape, value  # GET /metrics
from test_split_mode import (  # lost, held: from the log
    assert_same_volume, final_of, held_when_killed, lost_projections, offline,
)

pytest.importorskip("distributed")
pytestmark = pytest.mark.integration

DELTA_BETA = 200.0  # of the phantom of the conftest's small_scan
SLOW = {"phase": "ap", "iterations": 6}  # batches that take a while: the kill lands mid-scan


SLURM = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "deploy", "slurm")


def settled(serve, daemon, groups: int = 90) -> dict:
    """The status once the dispatcher's report (sent at most every second) counts every group."""
    def counted():
        status = daemon.status()
        return status if status["reconstructor"]["cluster"]["groups_done"] >= groups else None
    return serve.wait_for(counted, 10, "the actors' report of every group")



def test_two_actors_give_the_one_process_volume(tmp_path, serve, small_scan_data):
    daemon = serve.cluster_daemon(tmp_path / "cluster")
    try:
        serve.wait_actors(daemon)
        volumes = final_of(serve, daemon, small_scan_data, "two_actors", fps=60.0, timeout_s=120)
        status = settled(serve, daemon)
        code, _ = daemon.terminate()
        assert code == 0 and serve.shm(daemon.proc.pid) == []
    finally:
        daemon.close()
    header, final = volumes[-1]
    assert header["n_projections_used"] == 90 and header["shape"] == [64, 64, 64]
    assert not header.get("incomplete")
    assert status["mode"] == "split" and status["reconstructor"]["groups_done"] == 90
    cluster = status["reconstructor"]["cluster"]
    done = [a["groups_done"] for a in cluster["actors"]]
    assert sum(done) == 90 and min(done) > 0, done  # both actors reconstructed a share
    assert cluster["lost"] == 0 and cluster["bytes"]["binned"] == 90 * 64 * 64 * 4
    assert cluster["bytes"]["partials"] >= 2 * 64 ** 3 * 4  # at least one volume from each actor
    log = daemon.log.read_text()
    assert "dispatcher ready: 2 actor(s) on a local cluster, batches of 4" in log

    assert_same_volume(final, offline(small_scan_data))
    pool = serve.Daemon(tmp_path / "pool", workers=2, workers_keys={"mode": "pool"})
    try:
        pool.wait_ready()
        pool_header, pool_final = final_of(serve, pool, small_scan_data, "pool", fps=60.0, timeout_s=120)[-1]
        assert pool.terminate()[0] == 0
    finally:
        pool.close()
    assert pool_header["n_projections_used"] == 90
    assert_same_volume(final, pool_final)


def test_an_actor_killed_mid_scan_costs_no_angle(tmp_path, serve, small_scan_data):
    metrics = f"127.0.0.1:{serve.free_port()}"
    # collected only when idle (no group for 0.1 s): while the scan streams, the victim holds
    # every group it reconstructed, so the kill certainly costs it some
    daemon = serve.cluster_daemon(tmp_path, metrics=metrics, collect_interval_s=600.0)
    try:
        cluster = serve.wait_actors(daemon)
        victim = cluster["actors"][0]["pid"]
        assert victim not in (None, daemon.proc.pid, daemon.status()["reconstructor"]["pid"])

        def kill_when_under_way():
            def under_way():
                actors = daemon.status()["reconstructor"]["cluster"]["actors"]
                return all(a["batches"] >= 2 for a in actors)  # both hold work, not all collected
            serve.wait_for(under_way, 60, "both actors to be under way")
            os.kill(victim, signal.SIGKILL)

        volumes = final_of(serve, daemon, small_scan_data, "kill_actor", fps=30.0,
                           during=kill_when_under_way, timeout_s=120, **SLOW)
        status = settled(serve, daemon)
        # the loss and the redone groups are on the Prometheus endpoint too, once scraped after
        # the report of every group (the endpoint serves the daemon's last status snapshot)
        def reported():
            found = scrape(metrics)
            binned = found and value(found, "holostream_cluster_bytes_total", what="binned") or 0
            return found if binned >= 90 * 64 * 64 * 4 else None
        samples = serve.wait_for(reported, 20, "every group's bytes on /metrics")
        assert value(samples, "holostream_actors_lost_total") >= 1
        assert value(samples, "holostream_groups_redone_total") >= 1
        assert daemon.terminate()[0] == 0
    finally:
        daemon.close()
    header, final = volumes[-1]
    assert header["n_projections_used"] == 90 and not header.get("incomplete"), header
    cluster = status["reconstructor"]["cluster"]
    assert cluster["lost"] >= 1 and cluster["redone"] >= 1, cluster
    assert status["reconstructor"]["restarts"] == 0  # the dispatcher itself lived on
    assert victim not in [a["pid"] for a in cluster["actors"]]
    log = daemon.log.read_text()
    assert f"(pid {victim}) lost" in log and "sent again to the other actors" in log
    assert_same_volume(final, offline(small_scan_data, **SLOW))


def test_a_silent_actor_is_taken_as_lost_and_costs_no_angle(tmp_path, serve, small_scan_data):
    # A stopped worker process (SIGSTOP: as a hung device looks from outside) keeps its place in
    # the cluster; only its silence tells. Past [cluster] actor_timeout_s its groups are redone.
    daemon = serve.cluster_daemon(tmp_path, collect_interval_s=600.0, actor_timeout_s=3.0)
    victim = None
    try:
        victim = serve.wait_actors(daemon)["actors"][0]["pid"]

        def stop_when_under_way():
            def under_way():
                actors = daemon.status()["reconstructor"]["cluster"]["actors"]
                return all(a["batches"] >= 2 for a in actors)
            serve.wait_for(under_way, 60, "both actors to be under way")
            os.kill(victim, signal.SIGSTOP)

        volumes = final_of(serve, daemon, small_scan_data, "silent_actor", fps=30.0,
                           during=stop_when_under_way, timeout_s=120, **SLOW)
        status = settled(serve, daemon)
    finally:
        if victim is not None:
            os.kill(victim, signal.SIGCONT)  # let its cluster shut down
        daemon.close()
    header, final = volumes[-1]
    assert header["n_projections_used"] == 90 and not header.get("incomplete"), header
    cluster = status["reconstructor"]["cluster"]
    assert cluster["lost"] >= 1 and cluster["redone"] >= 1, cluster
    assert "([cluster] actor_timeout_s)" in daemon.log.read_text()
    assert_same_volume(final, offline(small_scan_data, **SLOW))


def test_actors_on_a_remote_scheduler_with_mutual_tls(tmp_path, serve, small_scan_data):
    """``[cluster] address = "tls://..."``: a scheduler and two workers started apart from the
    daemon (as deploy/slurm/ does on a cluster) with the facility CA's certificates."""
    tls = tmp_path / "tls"
    subprocess.run(["bash", os.path.join(SLURM, "make-certs.sh"), str(tls)], check=True, capture_output=True,
                   timeout=60)
    args = ["--tls-ca-file", tls / "ca.pem", "--tls-cert", tls / "cert.pem", "--tls-key", tls / "key.pem"]
    address = f"tls://127.0.0.1:{serve.free_port()}"
    with open(tmp_path / "cluster.log", "w") as log:
        cluster = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                     "--port", address.rsplit(":", 1)[1], "--no-dashboard", *map(str, args)],
                                    stdout=log, stderr=subprocess.STDOUT)]
        cluster += [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                      "--no-dashboard", "--death-timeout", "60", *map(str, args)],
                                     stdout=log, stderr=subprocess.STDOUT) for _ in range(2)]
    daemon = None
    try:
        daemon = serve.cluster_daemon(tmp_path / "daemon", address=address, tls=str(tls))
        serve.wait_actors(daemon)
        header, final = final_of(serve, daemon, small_scan_data, "remote", fps=60.0, timeout_s=120)[-1]
        status = settled(serve, daemon)
        assert daemon.terminate()[0] == 0
    finally:
        if daemon is not None:
            daemon.close()
        for proc in reversed(cluster):
            stop_process(proc, 20.0)
    assert header["n_projections_used"] == 90
    assert min(a["groups_done"] for a in status["reconstructor"]["cluster"]["actors"]) > 0
    assert f"dispatcher ready: 2 actor(s) on {address}" in daemon.log.read_text()
    assert_same_volume(final, offline(small_scan_data))


def test_a_killed_dispatcher_takes_its_local_cluster_along_and_its_groups_are_redone(
        tmp_path, serve, small_scan_data):
    """The dispatcher dying is split mode's reconstructor dying: replaced, and the groups it held
    (in its backlog, at its actor, collected or not) are redone by its successor from
    ``binned``, so every angle is in the final volume; its local cluster's worker processes
    must not outlive it. One actor: the dispatcher's own path, at the least cost."""
    daemon = serve.cluster_daemon(tmp_path, actors=1)
    try:
        cluster = serve.wait_actors(daemon, count=1)
        dispatcher = daemon.status()["reconstructor"]["pid"]
        actors = [a["pid"] for a in cluster["actors"]]

        def kill_when_under_way():
            serve.wait_for(lambda: daemon.status()["reconstructor"]["cluster"]["groups_done"] >= 8, 60,
                           "the actor to be under way")
            os.kill(dispatcher, signal.SIGKILL)

        header, final = final_of(serve, daemon, small_scan_data, "kill_dispatcher", fps=30.0,
                                 during=kill_when_under_way, timeout_s=120, **SLOW)[-1]
        serve.wait_for(lambda: not any(serve.pid_alive(pid) for pid in actors), 30,
                       "the dead dispatcher's actors to exit")
        status = daemon.status()
        assert status["reconstructor"]["restarts"] == 1 and status["reconstructor"]["pid"] != dispatcher
        serve.wait_actors(daemon, count=1)  # the successor has a cluster of its own
        assert daemon.terminate()[0] == 0 and serve.shm(daemon.proc.pid) == []
    finally:
        daemon.close()
    log = daemon.log.read_text()
    assert "reconstructor (pid" in log and "replacing it" in log
    held = held_when_killed(log)
    print(f"groups the dead dispatcher held: {sorted(held)}; redone: {status['reconstructor']['redone']}")
    assert held and not lost_projections(log)
    assert len(held) <= status["reconstructor"]["redone"]
    assert header["n_projections_used"] == 90 and not header.get("incomplete"), header
    # no half-collected partial, no group added twice
    assert_same_volume(final, offline(small_scan_data, **SLOW))
