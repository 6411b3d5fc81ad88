"""Scheduled invocations under a retry policy, end to end on a `faas run --no-kafka` node (DESIGN.md 15)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.support import Node, wait_for, write_project

MANIFEST = """
functions:
  - name: nightly
    uuid: 2e721e00-0000-4000-8000-0000000000c1
    handler: functions.s:nightly
    state: productive
    env: {{OUT: "{out}"}}
    schedules:
      - cron: "* * * * * */2"  # every 2 s: seconds are the 6th field
        payload: {{kind: tick}}
    retry: {{attempts: 2, backoff: 0.1, on: [FunctionError]}}
"""
MODULES = {
    "s": """
import json, os

async def nightly(payload, ctx):
    with open(os.path.join(os.environ["OUT"], "runs.jsonl"), "a") as f:
        f.write(json.dumps({"id": ctx.invocation_id, "attempt": ctx.attempt, "trigger": ctx.trigger}) + "\\n")
    if ctx.attempt < 2:
        raise RuntimeError("first attempt of every tick fails")
    return payload
"""
}


def test_scheduled_run_retried_with_derived_ids(tmp_path: Path) -> None:
    """1. `nightly` fires every 2 s, fails the first attempt of each run, retries FunctionError after 0.1 s.
    2. Wait for a tick's two attempts.
    Result: attempt 1 has the tick's id `nightly:0:<epoch>`, attempt 2 the same id plus `:2`, both with the
    schedule trigger; the run's last result (GET /functions) is ok."""
    out = tmp_path / "out"
    out.mkdir()
    root = write_project(tmp_path / "proj", MANIFEST.format(out=out), MODULES)
    node = Node(root, None, kafka=False).wait_ready()
    try:

        def pair() -> list[dict[str, Any]] | None:
            path = out / "runs.jsonl"
            rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
            firsts = [r for r in rows if r["attempt"] == 1]
            for first in firsts:
                second = [r for r in rows if r["id"] == f"{first['id']}:2"]
                if second:
                    return [first, second[0]]
            return None

        first, second = wait_for(pair, timeout=60, message=f"a retried tick\n{node.tail()}")
        assert first["id"].startswith("nightly:0:") and first["trigger"] == second["trigger"] == "schedule"
        assert second["attempt"] == 2

        def last_ok() -> bool:
            listed = httpx.get(f"{node.url}/functions", timeout=5).json()["functions"]
            last = listed[0]["schedules"][0].get("last")
            return bool(last and last["ok"])

        wait_for(last_ok, timeout=30, message="a schedule result ok")
    finally:
        node.kill()
