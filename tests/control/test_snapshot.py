"""Snapshots of the last good handler code: a broken module on disk never reaches a new instance."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support import Node, run_cli, wait_for, write_project

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


PROBE = {
    "h": """
import importlib, sys

async def echo(payload, ctx):
    try:
        module = importlib.import_module(payload)
    except ModuleNotFoundError as exc:
        return {"missing": exc.name}
    return {"from": module.__file__}
"""
}


def test_instances_never_import_the_rest_of_the_working_copy(
    tmp_path: Path, nodes: Callable[..., Node]
) -> None:
    """1. A project holds `functions/h.py` and, beside the package, `helpers.py`; a node serves `echo` from
       the project folder (its working directory), which imports what it is asked to.
    2. `echo` imports `functions.h`, then `helpers`.
    Result: its own module is the revision's (under FAAS_CACHE_DIR, not the project); `helpers`, which no
    revision carries, is not found, though it is in the node's and the instance's working directory."""
    root = write_project(tmp_path / "project", MANIFEST, PROBE)
    (root / "helpers.py").write_text("VALUE = 1\n")
    cache = tmp_path / "cache"
    node = nodes(root, None, kafka=False, env={"FAAS_CACHE_DIR": str(cache)}).wait_ready()
    url = f"{node.url}/functions/{UUID}/invoke"
    own = httpx.post(url, json="functions.h", timeout=30).json()["result"]
    assert Path(own["from"]).is_relative_to(cache), own
    assert httpx.post(url, json="helpers", timeout=30).json()["result"] == {"missing": "helpers"}


def test_validate_refuses_a_module_the_revision_would_not_carry(tmp_path: Path) -> None:
    """1. A handler's module imports `helpers`, a module beside its package in the project.
    2. `faas validate`.
    Result: exit 1, the handler does not import (`No module named 'helpers'`), as its instance would fail:
    a revision carries the handler's top-level package only. 3. With `helpers` moved into the package
    (a relative import), the same project validates."""
    root = write_project(
        tmp_path, MANIFEST, {"h": "import helpers\n\nasync def echo(payload, ctx):\n    return 1\n"}
    )
    (root / "helpers.py").write_text("VALUE = 1\n")
    bad = run_cli(root, "validate")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert re.search(
        r"functions\.yaml:4:5: handler 'functions\.h:echo' does not import: ModuleNotFoundError: "
        r"No module named 'helpers'",
        bad.stdout + bad.stderr,
    ), bad.stdout + bad.stderr
    (root / "helpers.py").rename(root / "functions" / "helpers.py")
    (root / "functions" / "h.py").write_text(
        "from . import helpers\n\nasync def echo(payload, ctx):\n    return 1\n"
    )
    good = run_cli(root, "validate")
    assert good.returncode == 0, good.stdout + good.stderr
