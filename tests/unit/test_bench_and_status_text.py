"""What the closing notes and operators read: the bench's whole-scan stages, the status text of the centre."""

from holostream.service.bench.chain import whole_scan_timings


def test_whole_scan_timings_report_ring_filter_and_centre(cpu_backend):
    out = whole_scan_timings(cpu_backend, size=32, n_angles=24, repeat=1)
    ring = out["ring filter (sorting)"]
    assert ring["projections"] == 24 and ring["seconds"] > 0 and "scaled to 32" in ring["note"]
    assert out["centre estimate"]["seconds_per_scan"] > 0 and out["centre estimate"]["angles"] == 24
    running = out["ring filter (column-mean), running sum"]
    assert running["projections"] == 1 and running["seconds"] > 0
    assert out["ring filter (column-mean), per published volume"]["seconds_per_volume"] > 0


def test_status_text_shows_the_centre_and_a_low_confidence():
    from holostream.service.commands.status import format_status

    text = format_status({"state": "reconstructing", "scan_id": "s", "scan_seq": 1,
                          "n_projections_used": 10, "n_projections_expected": 90,
                          "centre": {"cor_px": 3.25, "cor_source": "estimated", "cor_confidence": 0.3}})
    assert "centre           +3.25 px (estimated, confidence 0.30: LOW, do not trust it)" in text
    given = format_status({"state": "reconstructing", "scan_id": "s",
                           "centre": {"cor_px": 0.0, "cor_source": "given"}})
    assert "centre           +0.00 px (given)" in given


def test_bench_table_prints_per_scan_and_per_volume_rows(cpu_backend):
    from holostream.service.bench.table import format_report

    stages = whole_scan_timings(cpu_backend, size=32, n_angles=24, repeat=1)
    text = format_report({"preset": "demo", "workload": {}, "machine": {}, "stages": stages})
    assert "s per scan" in text and "s per volume" in text and "ring filter (sorting)" in text


def test_status_text_says_which_ring_filter_the_last_volume_had():
    from holostream.service.commands.status import format_status

    text = format_status({"state": "reconstructing", "scan_id": "s", "ring_filter": "none",
                          "settings": {"ring_filter": "column-mean"}})
    assert "ring filter      none on the last volume (setting: column-mean)" in text
    assert "ring filter" not in format_status({"state": "idle", "settings": {"ring_filter": "none"}})
