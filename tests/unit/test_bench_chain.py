"""``holostream bench``'s whole-scan stages run and report what the closing notes quote."""

from holostream.service.bench.chain import whole_scan_timings


def test_whole_scan_timings_report_ring_filter_and_centre(cpu_backend):
    out = whole_scan_timings(cpu_backend, size=32, n_angles=24, repeat=1)
    ring = out["ring filter (sorting)"]
    assert ring["projections"] == 24 and ring["seconds"] > 0 and "scaled to 32" in ring["note"]
    assert out["centre estimate"]["seconds_per_scan"] > 0 and out["centre estimate"]["angles"] == 24
