"""CURVE building blocks against real ZeroMQ sockets: key files, the ZAP thread, admin keys."""

from __future__ import annotations

import shutil
import stat

import pytest
import zmq

from holostream.service.daemon.curve import (
    Curve, KeyFileError, connect_as_client, is_loopback, make_key_pair, public_keys_in,
)


@pytest.fixture
def keys(tmp_path):
    make_key_pair(tmp_path / "server", "server")
    for name in ("alice", "bob", "mallory"):
        make_key_pair(tmp_path / "own", name)
    (tmp_path / "clients").mkdir()
    (tmp_path / "admins").mkdir()
    for name in ("alice", "bob"):
        shutil.copy(tmp_path / "own" / f"{name}.key", tmp_path / "clients")
    shutil.copy(tmp_path / "own" / "bob.key", tmp_path / "admins")
    return tmp_path


def test_key_pairs_are_made_private_and_never_replaced(tmp_path):
    public, secret = make_key_pair(tmp_path / "k", "detector")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and stat.S_IMODE(public.stat().st_mode) == 0o644
    assert len(public_keys_in(tmp_path / "k")) == 1
    with pytest.raises(KeyFileError, match="exists"):
        make_key_pair(tmp_path / "k", "detector")
    with pytest.raises(KeyFileError, match="key name"):
        make_key_pair(tmp_path / "k", "../escape")


def test_missing_or_wrong_key_files_are_named(keys):
    with pytest.raises(KeyFileError, match="no secret key"):
        Curve.from_files(str(keys / "server" / "server.key"), str(keys / "clients"), None)
    with pytest.raises(KeyFileError, match="does not exist"):
        Curve.from_files(str(keys / "server" / "server.key_secret"), str(keys / "nowhere"), None)


def test_only_listed_clients_connect_and_only_admins_may_change(keys):
    curve = Curve.from_files(str(keys / "server" / "server.key_secret"), str(keys / "clients"),
                             str(keys / "admins"))
    context = zmq.Context()
    auth = curve.start_authenticator(context)
    try:
        server = context.socket(zmq.REP)
        curve.serve(server)
        port = server.bind_to_random_port("tcp://127.0.0.1")

        def ask(name: str | None):
            client = context.socket(zmq.REQ)
            client.linger = 0
            if name is not None:
                connect_as_client(client, str(keys / "own" / f"{name}.key_secret"),
                                  str(keys / "server" / "server.key"))
            client.connect(f"tcp://127.0.0.1:{port}")
            client.send(b"status")
            try:
                if not server.poll(2000):
                    return None  # the handshake was refused: nothing arrives
                frame = server.recv(copy=False)
                server.send(b"ok")
                assert client.recv() == b"ok"
                return frame.get("User-Id")
            finally:
                client.close()

        alice, bob = ask("alice"), ask("bob")
        assert alice and bob and alice != bob
        assert not curve.may_change(alice) and curve.may_change(bob)
        assert ask("mallory") is None  # a key not listed
        assert ask(None) is None  # no CURVE at all
    finally:
        auth.stop()
        context.destroy(linger=0)


@pytest.mark.parametrize("address, local", [
    ("tcp://127.0.0.1:5550", True), ("tcp://127.0.0.2:1", True), ("tcp://localhost:5550", True),
    ("tcp://[::1]:5550", True), ("ipc:///run/holostream/ingest", True), ("inproc://x", True),
    ("tcp://*:5550", False), ("tcp://0.0.0.0:5550", False), ("tcp://10.1.2.3:5550", False),
    ("tcp://eth0:5550", False), ("tcp://beamline-pc:5550", False)])
def test_loopback_addresses_are_told_apart(address, local):
    assert is_loopback(address) is local
