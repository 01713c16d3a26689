"""The benchmark report as a table for people (the JSON report stays the record)."""

from __future__ import annotations

from typing import Any


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.4g}"


def _flat(prefix: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [row for k, v in value.items() for row in _flat(f"{prefix}.{k}" if prefix else k, v)]
    if isinstance(value, list):
        return [(prefix, ", ".join(_number(v) for v in value))]
    return [(prefix, _number(value))]


def format_report(report: dict[str, Any]) -> str:
    """Aligned text of a ``holostream bench`` report: stages, the whole chain, peers, the rest."""
    work, machine = report.get("workload", {}), report.get("machine", {})
    lines = [f"holostream bench, preset {report.get('preset')}: {work.get('size')} px, "
             f"{work.get('n_projections')} projections, binning {work.get('binning')}, "
             f"angle binning {work.get('angle_binning')}, {report.get('iterations')} iterations; "
             f"{report.get('device')} on {machine.get('gpu') or machine.get('cpu')} "
             f"({machine.get('cores')} cores)", ""]
    stages = report.get("stages") or {}
    if stages:
        lines.append(f"{'stage':<24}{'projections/s':>15}{'ms/projection':>16}")
        for name, row in stages.items():
            if "projections_per_s" not in row:  # once per scan or per volume, not per projection
                per = next((k for k in row if k.startswith("seconds_per_")), None)
                lines.append(f"{name:<24}{'':>15}{'':>16}   "
                             + (f"{row[per]:.3g} s {per[len('seconds_'):].replace('_', ' ')}" if per else ""))
                continue
            lines.append(f"{name:<24}{row['projections_per_s']:>15.4g}"
                         f"{1e3 * row['seconds'] / row['projections']:>16.4g}")
    chain = report.get("chain")
    if chain:
        lines.append(f"{'whole chain':<24}{chain['projections_per_s']:>15.4g}"
                     f"{1e3 / chain['projections_per_s']:>16.4g}   "
                     f"({chain['seconds_per_volume']:.3g} s per volume)")
    peers = report.get("peers") or {}
    if peers:
        lines += ["", f"{'comparison':<24}{'ours (s)':>10}{'peer (s)':>10}{'ours faster':>13}  agreement"]
        # a comparison made at several thread counts ("runs") gives one line per count
        rows = [(f"{name} {t} thr" if "runs" in row else name, r)
                for name, row in peers.items()
                for t, r in (row["runs"].items() if "runs" in row else [(None, row)])]
        for name, row in rows:
            peer_s = next((v for k, v in row.items() if k.endswith("_s") and k != "ours_s"), None)
            ratio = next((v for k, v in row.items() if k.startswith("speed_ratio")), None)
            lines.append(f"{name.replace('_', ' '):<24}{_number(row.get('ours_s')):>10}{_number(peer_s):>10}"
                         f"{(_number(ratio) + '×') if ratio is not None else '-':>13}  "
                         f"correlation {row.get('correlation', float('nan')):.5f}")
    for section in ("phase_peers", "pool_binning", "ingest"):
        if report.get(section):
            lines += ["", section.replace("_", " ")]
            lines += [f"  {key:<44}{value}" for key, value in _flat("", report[section])]
    return "\n".join(lines)
