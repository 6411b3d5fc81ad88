"""Snapshots of the last good handler code: a broken module on disk never reaches a new instance."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support import Node, wait_for, write_project

UUID = "dddddddd-1111-4000-8000-000000000001"
MANIFEST = f"""
functions:
  - name: echo
    uuid: {UUID}
    handler: functions.h:echo
    state: productive
    instances: {{max: 1, idle_timeout: 0.5}}
"""


def handlers(version: str) -> dict[str, str]:
    return {"h": f"async def echo(payload, ctx):\n    return {{'version': {version!r}, 'got': payload}}\n"}


def test_broken_module_never_reaches_a_new_instance(tmp_path: Path, nodes: Callable[..., Node]) -> None:
    """1. A node serves `echo` (idle_timeout 0.5 s). 2. The module is edited so it no longer imports.
    3. The edit is rejected (/readyz names it) and the instance goes cold. 4. Invoke again: a cold start.
    Result: the new instance runs the last good code. 5. A good edit: served within 2 s."""
    root = write_project(tmp_path, MANIFEST, handlers("one"))
    node = nodes(root, None, kafka=False).wait_ready()
    url = f"{node.url}/functions/{UUID}/invoke"
    assert httpx.post(url, json=1, timeout=30).json()["result"]["version"] == "one"
    (root / "functions" / "h.py").write_text("def echo(:\n")
    errors = wait_for(
        lambda: httpx.get(f"{node.url}/readyz").json()["manifest_errors"], 10, message="edit rejected"
    )
    assert any(
        re.search(r"functions\.yaml:4:5: handler 'functions\.h:echo' does not import: SyntaxError", e)
        for e in errors
    ), errors
    wait_for(
        lambda: httpx.get(f"{node.url}/functions").json()["functions"][0]["instances"] == 0,
        10,
        message="instance gone cold",
    )
    body = httpx.post(url, json=2, timeout=30).json()
    assert body["cold_start"] is True and body["result"] == {"version": "one", "got": 2}, node.tail()
    write_project(root, MANIFEST, handlers("three"))
    wait_for(
        lambda: httpx.post(url, json=3, timeout=30).json()["result"]["version"] == "three",
        2.5,
        interval=0.1,
        message="good edit served",
    )
