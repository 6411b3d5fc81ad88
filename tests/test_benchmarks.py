"""The benchmark suite runs end to end (`python -m benchmarks --quick`) and writes a well-formed JSON.

It checks the harness, not the figures: every case is measured against its baseline and nothing failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from benchmarks.ab import parse_tree
from benchmarks.procs import cpu_seconds
from benchmarks.stats import Series, percentile

REPO = Path(__file__).resolve().parent.parent
GROUPS = [
    "memory node RSS", "memory node USS", "memory idle instance RSS", "memory idle instance USS",
    "direct invoke c=1 throughput", "direct invoke c=64 p99", "batching", "cold start trivial p50",
    "cold start heavy p99", "overload 429 p50", "overload accepted throughput", "overload accepted max",
    "events 1 listener", "events 3 listener", "events 8 listener", "events 1 listener(s) CPU per event",
    "events 1 listener(s) throughput, 64 keys, 24 partitions",
    "events 1 listener(s) throughput, unique keys, 24 partitions, 2 nodes",
    "warm invoke c=1 p50", "warm invoke c=64", "idle node CPU, 20 instances, memory limits on",
    "tracing traceparent per event", "tracing OTel export per span", "direct invoke c=1 p50 with traceparent",
    "deploy one function to served",
    "records on, direct invoke c=64 throughput", "records on, events 1 listener throughput",
    "OTel export on, direct invoke c=64 throughput", "OTel export on, direct invoke c=1 p50",
    "OTel export on, events 1 listener throughput", "records producer CPU per record",
    "event scheduling per event, 64 keys", "event scheduling per event, unique keys",
    "warm invoke c=1 p50, against a raw round trip",
]  # fmt: skip


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0


def test_series_reports_median_ratio_and_failures() -> None:
    s = Series("c", "ms", "lower", "base", samples=[1.0, 3.0, 2.0], baseline_samples=[1.0, 1.0, 1.0])
    assert (s.figure, s.baseline, s.ratio) == (2.0, 1.0, 2.0)
    s.fail("boom")
    d = s.to_dict()
    assert d["status"] == "failed" and d["error"] == "boom" and d["figure"] is None and d["baseline"] == 1.0


def test_cpu_seconds_keeps_the_time_of_a_thread_that_ended() -> None:
    """1. Read this process's CPU. 2. A thread uses 0.2 s of CPU and waits; read again. 3. It ends; read
    again. Result: the figure grew by the thread's time and did not fall when the thread ended (the live
    threads' sum alone would, and once made a quick-suite figure negative)."""
    spun, go = threading.Event(), threading.Event()

    def spin() -> None:
        while time.thread_time() < 0.2:
            pass
        spun.set()
        go.wait(10)

    before = cpu_seconds(os.getpid())
    thread = threading.Thread(target=spin)
    thread.start()
    assert spun.wait(30)
    during = cpu_seconds(os.getpid())
    go.set()
    thread.join(10)
    after = cpu_seconds(os.getpid())
    assert during - before >= 0.15
    assert after >= during


@pytest.mark.timeout(260)
def test_quick_suite_writes_well_formed_json(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--output", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=250,
    )  # fmt: skip
    assert out.exists(), f"no JSON written (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
    data = json.loads(out.read_text())
    assert {"date", "cpu", "cores", "python", "loadgen"} <= data["meta"].keys()
    cases = data["cases"]
    for group in GROUPS:
        assert any(c["case"].startswith(group) for c in cases), f"no case {group!r}"
    for c in cases:
        assert {"case", "figure", "baseline", "ratio", "unit", "status", "error"} <= c.keys(), c
    failed = [f"{c['case']}: {c['error']}" for c in cases if c["status"] != "ok"]
    assert not failed, "\n".join(failed) + f"\n{proc.stdout[-3000:]}"
    for c in cases:
        assert all(isinstance(c[k], (int, float)) for k in ("figure", "baseline", "ratio")), c
        assert c["figure"] > 0 and c["baseline"] > 0, c
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "case" in proc.stdout and "ratio" in proc.stdout  # the table was printed


def test_ab_harness_measures_a_tree_and_refuses_a_tree_without_the_framework(tmp_path: Path) -> None:
    """1. `python -m benchmarks.ab` on a folder with no `framework` package, then with a setting that is not
    NAME=VALUE: usage errors naming them. 2. On this repository with records off, one round of 200 events.
    Result: the round and the median lines give events/s and the CPU per event of each part."""
    bad = subprocess.run(
        [sys.executable, "-m", "benchmarks.ab", str(tmp_path)], cwd=REPO, capture_output=True, text=True
    )
    assert bad.returncode == 2 and f"{tmp_path}: no framework package there" in bad.stderr
    ab = [sys.executable, "-m", "benchmarks.ab"]
    bad = subprocess.run([*ab, f"{REPO}:FAAS_RECORDS"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "'FAAS_RECORDS' is not NAME=VALUE" in bad.stderr
    proc = subprocess.run(
        [*ab, "--rounds", "1", "--events", "200", f"{REPO}:FAAS_RECORDS=false"],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("round 1 ", "median "))]
    assert len(lines) == 2, proc.stdout
    for line in lines:
        rate = float(line.split(": ", 1)[1].split()[0])
        assert rate > 0, line
        for part in ("node", "instances", "broker", "client"):
            assert f" {part} " in line, line


def test_ab_tree_arguments_carry_settings() -> None:
    assert parse_tree(".") == (Path(".").resolve(), {})
    assert parse_tree("/x:FAAS_RECORDS=false,FAAS_LOG_LEVEL=DEBUG") == (
        Path("/x"),
        {"FAAS_RECORDS": "false", "FAAS_LOG_LEVEL": "DEBUG"},
    )
    assert parse_tree("/x:A=") == (Path("/x"), {"A": ""})
    with pytest.raises(ValueError, match="'=1' is not NAME=VALUE"):
        parse_tree("/x:=1")
