"""The daemon configuration: every bad key is named, the shipped example loads."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from holostream.service.config import (
    Config,
    ConfigError,
    config_from_dict,
    default_worker_count,
    load_config,
    section_keys,
)
from holostream.shared.settings import ReconstructionSettings

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "holostream.toml"


def test_defaults_follow_the_protocol():
    config = load_config(None)
    assert config.ingest.address == "tcp://127.0.0.1:5550"
    assert config.publish.address == "tcp://127.0.0.1:5560"
    assert config.control.address == "tcp://127.0.0.1:5570"
    assert config.ingest.mode == "bind" and config.ingest.ring_slots == 64
    assert config.publish.status_interval_s == 1.0 and config.publish.output_dir is None
    assert config.workers.count == default_worker_count() <= 4
    assert config.reconstruction == ReconstructionSettings()


def test_example_file_loads_and_documents_every_key():
    config = load_config(EXAMPLE)
    assert config.workers.count == 4 and config.workers.device == "auto"
    assert config.publish.output_dir == "/var/lib/holostream/volumes"
    text = EXAMPLE.read_text()
    sections = {**section_keys(), "reconstruction": list(ReconstructionSettings.keys())}
    for section, keys in sections.items():
        assert f"[{section}]" in text
        for key in keys:
            assert re.search(rf"^{key} = ", text, re.MULTILINE), f"{section}.{key} not in example"


@pytest.mark.parametrize(
    "tables, key",
    [
        ({"ingest": {"adress": "tcp://127.0.0.1:1"}}, "ingest.adress"),
        ({"ingest": {"address": "127.0.0.1:5550"}}, "ingest.address"),
        ({"ingest": {"mode": "listen"}}, "ingest.mode"),
        ({"ingest": {"ring_slots": 1}}, "ingest.ring_slots"),
        ({"ingest": {"ring_slots": "64"}}, "ingest.ring_slots"),
        ({"ingest": {"rcvhwm": 0}}, "ingest.rcvhwm"),
        ({"ingest": {"drop_policy": "newest"}}, "ingest.drop_policy"),
        ({"ingest": {"max_frame_bytes": True}}, "ingest.max_frame_bytes"),
        ({"publish": {"sndhwm": -1}}, "publish.sndhwm"),
        ({"publish": {"status_interval_s": 0}}, "publish.status_interval_s"),
        ({"publish": {"status_interval_s": 5}}, "publish.status_interval_s"),
        ({"publish": {"output_dir": 3}}, "publish.output_dir"),
        ({"publish": {"save_intermediate": "yes"}}, "publish.save_intermediate"),
        ({"control": {"address": "http://localhost"}}, "control.address"),
        ({"workers": {"count": 0}}, "workers.count"),
        ({"workers": {"device": "tpu"}}, "workers.device"),
        ({"service": {"log_level": "loud"}}, "service.log_level"),
        ({"service": {"watchdog": 1}}, "service.watchdog"),
        ({"reconstruction": {"binning": 0}}, "reconstruction.binning"),
        ({"reconstruction": {"phaze": "ctf"}}, "reconstruction.phaze"),
        ({"reconstruction": {"filter": "gauss"}}, "reconstruction.filter"),
        ({"detector": {}}, "detector"),
        ({"ingest": 5}, "ingest"),
    ],
)
def test_each_bad_key_is_named(tables, key):
    with pytest.raises(ConfigError) as info:
        config_from_dict(tables)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ") and info.value.reason


def test_toml_file_errors_name_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[workers]\ncount = 2\n[publish]\nsndhwm = "many"\n')
    with pytest.raises(ConfigError, match=r"^publish\.sndhwm: expected an integer"):
        load_config(path)
    path.write_text("[workers\ncount = 2\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_command_line_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[ingest]\naddress = "tcp://127.0.0.1:6000"\nring_slots = 8\n'
                    '[reconstruction]\nbinning = 2\n')
    config = load_config(path, {"ingest": {"address": "tcp://127.0.0.1:7000"},
                                "workers": {"count": 3}})
    assert config.ingest.address == "tcp://127.0.0.1:7000"
    assert config.ingest.ring_slots == 8  # untouched keys of the file stay
    assert config.workers.count == 3 and config.reconstruction.binning == 2
    with pytest.raises(ConfigError, match="control.address"):
        load_config(path, {"control": {"address": "nowhere"}})


def test_to_dict_round_trips():
    config = config_from_dict({"publish": {"output_dir": "/tmp/x"}, "reconstruction": {"phase": "ctf"}})
    assert isinstance(config, Config)
    assert config_from_dict(config.to_dict()) == config


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path):
    unit = (EXAMPLE.parent / "holostream.service").read_text()
    for needed in ("Type=notify", "NotifyAccess=main", "WatchdogSec=", "Restart=on-failure",
                   "DynamicUser=yes", "ProtectSystem=strict", "ProtectHome=yes", "NoNewPrivileges=yes",
                   "PrivateTmp=yes", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
                   "SystemCallFilter=@system-service", "MemoryMax=", "DeviceAllow=/dev/nvidiactl",
                   "ReadWritePaths=/var/lib/holostream",
                   "serve --config /etc/holostream/holostream.toml"):
        assert needed in unit, needed
    # verify against the holostream executable of this environment (ExecStart must exist)
    exe = Path(sys.executable).with_name("holostream")
    local = tmp_path / "holostream.service"
    local.write_text(unit.replace("/usr/local/bin/holostream", str(exe)))
    result = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert "holostream.service" not in result.stderr, result.stderr  # no warnings about our unit
