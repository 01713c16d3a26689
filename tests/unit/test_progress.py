"""Progress bars only on a terminal; the benchmark table for people."""

import io

from holostream.service.bench.table import format_report
from holostream.service.progress import ProgressBar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_is_drawn_on_a_terminal_and_nothing_elsewhere():
    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        bar = ProgressBar("reconstruct", unit="group", stream=stream)
        for done in range(1, 91):
            bar(done, 90)
    assert "reconstruct" in terminal.getvalue() and "90/90" in terminal.getvalue()
    assert pipe.getvalue() == ""


def test_the_bench_table_lists_stages_chain_and_peers():
    report = {"preset": "demo", "device": "cpu", "iterations": 10,
              "workload": {"size": 128, "n_projections": 180, "binning": 2, "angle_binning": 1},
              "machine": {"cpu": "AMD EPYC", "cores": 2},
              "stages": {"paganin": {"seconds": 0.08, "projections": 16, "projections_per_s": 200.0},
                         "back-projection": {"seconds": 0.64, "projections": 16, "projections_per_s": 25.0}},
              "chain": {"projections_per_s": 22.2, "seconds_per_volume": 8.1},
              "peers": {"fbp_vs_astra": {"ours_s": 0.6, "astra_cpu_s": 3.0, "speed_ratio_ours_over_astra": 5.0,
                                         "correlation": 0.999668}},
              "ingest": {"frames": 100, "ingest_frames_per_s": 1234.5}}
    lines = format_report(report).splitlines()
    assert lines[0].startswith("holostream bench, preset demo: 128 px, 180 projections")
    assert lines[3].split() == ["paganin", "200", "5"]
    assert lines[4].split() == ["back-projection", "25", "40"]
    assert lines[5].split()[:4] == ["whole", "chain", "22.2", "45.05"]
    assert lines[-5].split() == ["fbp", "vs", "astra", "0.6", "3", "5×", "correlation", "0.99967"]
    assert lines[-1].split() == ["ingest_frames_per_s", "1.23e+03"]
