"""The fault scenarios' project: small functions with the behaviours each scenario needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import write_project


@pytest.fixture(autouse=True)
def _faults_kill_brokers(broker_kills: None) -> None:
    """Every fault scenario may kill a broker under the test's own clients (`broker_kills`)."""


TICK = "ffffffff-0000-4000-8000-000000000001"
HOLD = "ffffffff-0000-4000-8000-000000000002"
STUCK = "ffffffff-0000-4000-8000-000000000003"
BUSY_A = "ffffffff-0000-4000-8000-000000000004"
BUSY_B = "ffffffff-0000-4000-8000-000000000005"
SLOW = "ffffffff-0000-4000-8000-000000000006"
KEYED = "ffffffff-0000-4000-8000-000000000007"

MANIFEST = f"""
functions:
  - name: tick
    uuid: {TICK}
    handler: functions.f:tick
    state: productive
    events: [fault.tick]
  - name: hold
    uuid: {HOLD}
    handler: functions.f:hold
    state: productive
    events: [fault.hold]
    instances: {{max: 1, concurrency: 500}}
  - name: stuck
    uuid: {STUCK}
    handler: functions.f:stuck
    state: productive
    timeout: 1
    instances: {{max: 1, concurrency: 100}}
  - name: busy-a
    uuid: {BUSY_A}
    handler: functions.f:busy
    state: productive
    instances: {{max: 2, concurrency: 20}}
  - name: busy-b
    uuid: {BUSY_B}
    handler: functions.f:busy
    state: productive
    instances: {{max: 2, concurrency: 20}}
  - name: slow
    uuid: {SLOW}
    handler: functions.f:slow
    state: productive
    instances: {{max: 1, concurrency: 4, queue: 8}}
  - name: keyed
    uuid: {KEYED}
    handler: functions.f:keyed
    state: productive
    events: [fault.keyed]
    timeout: 5
"""

MODULES = {
    "f": """
import asyncio, os, select

async def tick(payload, ctx):
    await asyncio.sleep(0.002)
    return {"node": os.environ.get("T_NODE")}

async def hold(payload, ctx):
    payload = payload or {}
    if payload.get("pidfile"):
        with open(payload["pidfile"], "w") as f:
            f.write(str(os.getpid()))
    await asyncio.sleep(payload.get("sleep", 0))
    return {"pid": os.getpid()}

async def stuck(payload, ctx):
    if payload and payload.get("block"):
        select.select([], [], [], 8)  # a C-level wait: the loop cannot cancel it
    else:
        await asyncio.sleep(0.3)
    return {"pid": os.getpid()}

async def busy(payload, ctx):
    await asyncio.sleep(2.5)
    return {"pid": os.getpid()}

async def slow(payload, ctx):
    await asyncio.sleep(0.1)
    return "done"

async def keyed(payload, ctx):
    import json, time
    started = time.time()
    await asyncio.sleep(0.1)
    run = {"key": ctx.key, "node": os.environ.get("T_NODE"), "start": started, "end": time.time()}
    with open(os.environ["T_RUNS"], "a") as f:  # one short append per run: whole lines
        f.write(json.dumps(run) + "\\n")
    return {"node": os.environ.get("T_NODE")}
"""
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path, MANIFEST, MODULES)
