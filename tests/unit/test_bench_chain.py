"""The chain benchmark's arithmetic: per-volume figures from stage timings."""

import pytest

from holostream.service.bench.chain import PRESETS, chain_summary


def stages(iterations, seconds):
    return {name: {"seconds": s, "projections": 4}
            for name, s in zip(("flatfield+binning", f"paganin+ap{iterations}", "ramp filter",
                                "back-projection"), seconds)}


def test_id16b_volume_counts_833_binned_projections():
    preset = PRESETS["id16b"]
    # 2500 raw frames of a tomogram, averaged by three: 833 projections per volume, not 833 / 3
    assert preset["n_projections"] == preset["raw_frames"] // preset["angle_binning"] == 833
    summary = chain_summary(stages(10, [0.4, 2.0, 0.1, 0.5]), preset, 10)
    # per projection: 3 raw frames × 0.1 s + 0.5 + 0.025 + 0.125
    assert summary["projections_per_volume"] == 833
    assert summary["seconds_per_volume"] == pytest.approx(833 * (3 * 0.1 + 0.5 + 0.025 + 0.125))
    assert summary["projections_per_s"] == pytest.approx(1 / 0.95)


def test_table_gives_one_line_per_thread_count_of_the_fbp_comparison():
    from holostream.service.bench.table import format_report

    run = {"ours_s": 1.0, "astra_cpu_s": 13.0, "speed_ratio_ours_over_astra": 13.0, "correlation": 0.9998}
    report = {"stages": {}, "peers": {"fbp_vs_astra": {"size": 682, "runs": {"1": run, "2": dict(run, ours_s=0.5)}}}}
    text = format_report(report)
    assert "fbp vs astra 1 thr" in text and "fbp vs astra 2 thr" in text and "13×" in text
