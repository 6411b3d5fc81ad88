"""Deployments with real nodes and a real broker (DESIGN.md section 12): the log decides what is served."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from framework.kafka.embedded import EmbeddedBroker
from tests.support import Node, new_id, run_cli, wait_for, write_project

NO_WATCH = {"FAAS_WATCH": "false"}


def module(version: str, delay: float = 0.0) -> str:
    return f"""
import asyncio

VERSION = {version!r}

async def handle(payload, ctx):
    if isinstance(payload, dict) and payload.get("sleep"):
        await asyncio.sleep(payload["sleep"])
    return {{"v": VERSION, "rev": ctx.revision}}
"""


def manifest(uuid: str, state: str = "productive", env: str = "Hello") -> str:
    return f"""
functions:
  - name: alpha
    uuid: {uuid}
    handler: functions.m:handle
    state: {state}
    env: {{GREETING: {env}}}
"""


def served(n: Node, uuid: str) -> dict[str, Any] | None:
    r = httpx.post(f"{n.url}/functions/{uuid}/invoke", json={}, timeout=30)
    return r.json()["result"] if r.status_code == 200 else None


def entry(n: Node, uuid: str) -> dict[str, Any]:
    functions = httpx.get(f"{n.url}/functions", timeout=10).json()["functions"]
    return next(f for f in functions if f["uuid"] == uuid)


def kept(n: Node, uuid: str) -> list[int]:
    r = httpx.get(f"{n.url}/functions/{uuid}/revisions", timeout=10)
    assert r.status_code == 200, r.text
    return [x["revision"] for x in r.json()["revisions"]]


def cli_env(n: Node, bootstrap: str) -> dict[str, str]:
    return {
        "FAAS_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "FAAS_DEPLOYMENTS_TOPIC": n.deployments,
        "FAAS_WATCH": "false",
    }


def deploy(root: Path, env: dict[str, str], *args: str) -> str:
    r = run_cli(root, "deploy", *args, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_nodes_serve_code_deployed_from_another_folder(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]
) -> None:
    """1. Two nodes (watch off) share a broker, each with its own folder holding alpha v1.
    2. A third folder holds alpha v2; `faas deploy alpha` there. 3. A fourth node starts later from a
    folder that still holds v1. Result: both nodes serve v2 as revision 2 although their folders never
    changed; the late node serves revision 2 too, not its working copy, and lists it as modified.
    """
    u = new_id()
    tag = new_id()[:8]
    one = write_project(tmp_path / "one", manifest(u), {"m": module("v1")})
    two = write_project(tmp_path / "two", manifest(u), {"m": module("v1")})
    a = nodes(one, broker.bootstrap, tag=tag, env=NO_WATCH).wait_ready()
    b = nodes(two, broker.bootstrap, tag=tag, env=NO_WATCH).wait_ready()
    assert served(a, u) == {"v": "v1", "rev": 1} and served(b, u) == {"v": "v1", "rev": 1}
    third = write_project(tmp_path / "three", manifest(u), {"m": module("v2")})
    out = deploy(third, cli_env(a, broker.bootstrap), "alpha", "-m", "from the third folder")
    assert "alpha: revision 2 deployed" in out
    for n in (a, b):
        wait_for(lambda: served(n, u) == {"v": "v2", "rev": 2}, 10, message="revision 2 served")  # noqa: B023
    assert "v1" in (one / "functions" / "m.py").read_text()
    late = nodes(one, broker.bootstrap, tag=tag, env=NO_WATCH).wait_ready()
    assert served(late, u) == {"v": "v2", "rev": 2}
    assert entry(late, u)["modified"] is True and entry(late, u)["revision"] == 2
    assert kept(late, u) == [2, 1]
