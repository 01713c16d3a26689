"""The systemd unit's exposure, as `systemd-analyze security` scores it (issue 9: at most 2.0)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "holostream.service"
MAX_EXPOSURE = 2.0


def offline_security(unit: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_exposure_is_at_most_two(tmp_path):
    probe = offline_security(UNIT)
    if "--offline" in probe.stderr and probe.returncode != 0:
        pytest.skip(f"systemd-analyze cannot score offline (systemd < 250): {probe.stderr.strip()}")
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", probe.stdout)
    assert score, probe.stdout[-2000:] + probe.stderr
    assert float(score.group(1)) <= MAX_EXPOSURE, probe.stdout


def test_unit_keeps_the_gpu_usable():
    unit = "\n".join(line for line in UNIT.read_text().splitlines() if not line.startswith("#"))
    # the NVIDIA nodes are allowed on a closed device list, and cupy has a writable kernel cache
    assert "PrivateDevices=yes" not in unit and "DevicePolicy=closed" in unit
    for needed in ("DeviceAllow=char-nvidia-frontend rw", "DeviceAllow=char-nvidia-uvm rw",
                   "DeviceAllow=/dev/nvidiactl rw", "CacheDirectory=holostream",
                   "CUPY_CACHE_DIR=/var/cache/holostream/cupy"):
        assert needed in unit, needed
    assert "ProcSubset=pid" not in unit  # the CUDA driver reads /proc/driver/nvidia
