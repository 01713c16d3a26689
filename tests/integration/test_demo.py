"""`holostream demo` as a new user runs it: service, simulated detector and subscriber in one go."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_publishes_live_volumes_and_a_final_one_matching_the_phantom(tmp_path: Path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "holostream.service.cli", "demo", "--out", str(out), "--size", "128",
         "--projections", "120", "--fps", "40", "--publish-interval-s", "0.5", "--phase", "paganin"],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads((out / "figures.json").read_text())
    assert figures["live_volumes"] >= 2, figures
    assert figures["n_projections_used"] == figures["n_projections_expected"] == 120, figures
    assert figures["correlation_with_phantom"] >= 0.97, figures
    assert abs(figures["scale_ratio_to_phantom"] - 1) <= 0.1, figures
    assert figures["daemon_exit_code"] == 0, figures
    for cut in "zyx":
        assert (out / f"demo_0001_slice_{cut}.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "demo_0001_final.h5").stat().st_size > 0
