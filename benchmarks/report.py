"""The run's header (machine, interpreter, load generator), the printed table and the JSON file."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path
from typing import Any

import orjson

from benchmarks.stats import Series


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "processor": platform.processor(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def table(meta: dict[str, Any], cases: list[Series]) -> str:
    lines = [
        f"faas benchmarks ({meta['profile']}) {meta['date']} | cpu: {meta['cpu']} | cores: {meta['cores']} | "
        f"python {meta['python']}",
        f"load generator: {meta['loadgen']['name']} (ceiling {_fmt(meta['loadgen'].get('ceiling_rps_c64'))} "
        f"req/s at c=64 against a canned-response server) | repeats: {meta['repeats']}, median reported",
        "",
    ]
    rows = [("case", "figure", "baseline", "ratio", "unit")]
    for s in cases:
        ratio = "-" if s.ratio is None else f"{s.ratio:.2f}x"
        figure = _fmt(s.figure) if s.figure is not None or not s.error else "FAILED"
        rows.append((s.case, figure, _fmt(s.baseline), ratio, s.unit))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:4], widths[1:4], strict=True)]
        lines.append("  ".join([*cells, row[4]]))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("baselines (same run, same machine):")
    legend: dict[str, list[str]] = {}
    for s in cases:
        prefix = " ".join(s.case.split()[:2]).rstrip(",:")
        if prefix not in legend.setdefault(s.baseline_name, []):
            legend[s.baseline_name].append(prefix)
    lines += [f"  {', '.join(prefixes)}: {name}" for name, prefixes in legend.items()]
    for s in cases:
        d = s.to_dict()
        if d["error"]:
            lines.append(f"FAILED {s.case}: {d['error']}")
    lines.append(f"wall time {meta.get('wall_s', 0):.0f} s; JSON: {meta.get('output', '')}")
    return "\n".join(lines)


def write_json(path: Path, meta: dict[str, Any], cases: list[Series]) -> None:
    data = {"meta": meta, "cases": [s.to_dict() for s in cases]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")  # written whole, then renamed: never a half-written latest.json
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    tmp.replace(path)
