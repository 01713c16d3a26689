"""CURVE on a real daemon: only listed keys get in, only admin keys change things (issue 9, 9)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request

import pytest
import zmq

from holostream.service.clients.control import NoAnswer, request
from holostream.service.clients.detector import stream_scan
from holostream.service.clients.subscriber import decode
from holostream.service.daemon.curve import connect_as_client

pytestmark = pytest.mark.integration


def make_keys(folder, *names):
    result = subprocess.run([sys.executable, "-m", "holostream.service.cli", "keys", str(folder), *names],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_only_listed_keys_connect_and_only_admin_keys_set(tmp_path, serve, small_scan_data):
    keys = tmp_path / "keys"
    make_keys(keys / "server", "server")
    make_keys(keys / "own", "viewer", "operator", "stranger")
    for name, folders in (("viewer", ["clients"]), ("operator", ["clients", "admins"])):
        for folder in folders:
            (keys / folder).mkdir(exist_ok=True)
            shutil.copy(keys / "own" / f"{name}.key", keys / folder)
    server_public = str(keys / "server" / "server.key")
    as_ = {name: (str(keys / "own" / f"{name}.key_secret"), server_public)
           for name in ("viewer", "operator", "stranger")}
    daemon = serve.Daemon(tmp_path, extra_toml=f'[security]\nserver_key = "{keys}/server/server.key_secret"\n'
                                               f'client_keys = "{keys}/clients"\nadmin_keys = "{keys}/admins"\n')
    context = zmq.Context()
    try:
        def ready():
            assert daemon.proc.poll() is None, daemon.log.read_text()
            try:
                return request(daemon.control, {"cmd": "status"}, 1.0, curve=as_["viewer"])
            except NoAnswer:
                return None
        assert serve.wait_for(ready, 60, "the daemon to answer a listed key")["status"]["curve"] == "on"
        with pytest.raises(NoAnswer):  # no CURVE at all
            request(daemon.control, {"cmd": "status"}, 1.0)
        with pytest.raises(NoAnswer):  # a key that is not listed
            request(daemon.control, {"cmd": "status"}, 1.0, curve=as_["stranger"])
        refused = request(daemon.control, {"cmd": "set", "params": {"binning": 2}}, 2.0, curve=as_["viewer"])
        assert not refused["ok"] and "admin" in refused["error"]
        changed = request(daemon.control, {"cmd": "set", "params": {"binning": 1}}, 2.0, curve=as_["operator"])
        assert changed["ok"], changed

        def status_of(name):
            return request(daemon.control, {"cmd": "status"}, 2.0, curve=as_[name])["status"]

        def subscriber(curve):
            sock = context.socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            if curve:
                connect_as_client(sock, *curve)
            sock.connect(daemon.publish)
            return sock
        port = serve.free_port()  # `holostream view` with the viewer's key: its page gets the status
        page = subprocess.Popen([sys.executable, "-m", "holostream.service.cli", "view", "--publish",
                                 daemon.publish, "--control", daemon.control, "--listen", f"127.0.0.1:{port}",
                                 "--curve-key", as_["viewer"][0], "--server-key", server_public],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            def page_state():
                assert page.poll() is None, page.stderr.read()
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=2) as reply:
                        return json.loads(reply.read())["status"]
                except OSError:
                    return None
            assert serve.wait_for(page_state, 60, "the keyed viewer to show the daemon's status")
        finally:
            page.terminate()
            page.wait(10)
        listed, plain = subscriber(as_["viewer"]), subscriber(None)
        assert listed.poll(10_000), "a listed key receives status"
        assert decode(listed.recv_multipart())[0] == "status"
        assert not plain.poll(1500), "a subscriber without a key receives nothing"

        with pytest.raises(TimeoutError):  # a detector without a key gets nowhere
            stream_scan(daemon.ingest, small_scan_data, "plain", timeout_s=2.0)
        stream_scan(daemon.ingest, small_scan_data, "signed", timeout_s=60.0, curve=as_["viewer"])
        serve.wait_for(lambda: status_of("viewer")["scans_completed"] == 1, 120, "the signed scan to complete")
        # the commands' own key options: `holostream subscribe` receives the final volume, republished
        # until it has (it may connect after any one republication)
        keyed = ["--curve-key", as_["viewer"][0], "--server-key", server_public]
        watcher = subprocess.Popen([sys.executable, "-m", "holostream.service.cli", "subscribe",
                                    "--publish", daemon.publish, "--final-only", "--count", "1",
                                    "--timeout", "120", *keyed], stdout=subprocess.PIPE, text=True)
        try:
            def received():
                if watcher.poll() is not None:
                    return True
                assert request(daemon.control, {"cmd": "republish"}, 2.0, curve=as_["viewer"])["ok"]
                return False
            serve.wait_for(received, 120, "the keyed subscribe command to receive the final volume", interval_s=1.0)
            printed, _ = watcher.communicate(timeout=30)
        finally:
            watcher.kill()
        assert watcher.returncode == 0 and printed.startswith("signed") and "FINAL" in printed, printed
        # scan_start, 5 darks, 5 flats, 90 projections, scan_end; none of "plain" (ingest reports 4 times a s)
        serve.wait_for(lambda: status_of("viewer")["frames_received"] == 102, 10, "ingest's count of the signed scan")
        streamed = subprocess.run([sys.executable, "-m", "holostream.service.cli", "stream", "--simulate",
                                   "--size", "32", "--projections", "20", "--darks", "2", "--flats", "2",
                                   "--scan-id", "cli", "--delta-beta", "100", "--address", daemon.ingest,
                                   "--timeout", "60", *keyed], capture_output=True, text=True, timeout=120)
        assert streamed.returncode == 0, streamed.stderr
        serve.wait_for(lambda: status_of("viewer")["frames_received"] == 102 + 26, 30,
                       "ingest's count of the scan sent by `holostream stream` with keys")
    finally:
        context.destroy(linger=0)
        daemon.close()


def test_network_address_without_keys_does_not_start(tmp_path):
    config = tmp_path / "open.toml"
    config.write_text('[ingest]\naddress = "tcp://0.0.0.0:5550"\n')
    result = subprocess.run([sys.executable, "-m", "holostream.service.cli", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "CURVE is required" in result.stderr and "tcp://0.0.0.0:5550" in result.stderr
