"""The FBP-vs-astra benchmark on a small case: both sides run, at equal threads, and agree."""

import pytest

pytest.importorskip("astra")

from holostream.service.bench.fbp import compare_fbp_with_astra  # noqa: E402

pytestmark = pytest.mark.peers


def test_report_compares_at_one_and_two_threads():
    report = compare_fbp_with_astra(size=96, n_angles=60, slices=4, threads=2, repeat=1)
    assert set(report["runs"]) == {"1", "2"}
    for run in report["runs"].values():
        assert run["ours_s"] > 0 and run["astra_cpu_s"] > 0
        assert run["correlation"] > 0.99
        # same phantom, same sinogram: both are about as far from the truth
        assert run["error_vs_truth_ours"] <= 1.1 * run["error_vs_truth_astra"]
