"""A symlinked manifest re-pointed to another copy of the project: the whole node follows the new folder."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import Node, wait_for, write_project

pytestmark = pytest.mark.timeout(60)

UUID = "7c0de5ee-0000-4000-8000-00000000d1a7"
MANIFEST = f"""
functions:
  - name: where
    uuid: {UUID}
    handler: functions.m:handle
    state: productive
    secrets: [token]
"""
MODULE = """
import hashlib, os

async def handle(payload, ctx):
    return {{"v": {version!r}, "cwd": os.getcwd(), "file": __file__,
            "token": hashlib.sha256(ctx.secrets["token"].encode()).hexdigest()}}
"""


def release(releases: Path, version: str, token: str) -> Path:
    """A copy of the project in `releases/<version>`, its handler answering `version`."""
    root = write_project(releases / version, MANIFEST, {"m": MODULE.format(version=version)})
    (root / "secrets").mkdir()
    (root / "secrets" / "token").write_text(token + "\n")
    return root


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def test_a_re_pointed_manifest_serves_the_new_folders_code_secrets_and_working_folder(tmp_path: Path) -> None:
    """1. `current -> releases/a` and a node (no Kafka: watch mode on) whose FAAS_MANIFEST is
    `current/functions.yaml`, serving a function that returns its version, its working folder, the file it
    was imported from and a digest of its secret. 2. `releases/b`: the same project with another handler and
    another secret value. 3. `current` is re-pointed to it (a new link renamed over the old, as `ln -sfn`
    does). 4. Once b is served, `releases/a` is deleted and the function invoked again.
    Result: b's code is served with b's secret value, its instances run in releases/b and import their
    code from releases/b/.faas (the cache moved with the project, so deleting a changes nothing served)."""
    releases = tmp_path / "releases"
    a, b = release(releases, "a", "value-of-a"), release(releases, "b", "value-of-b")
    current = tmp_path / "current"
    current.symlink_to(a, target_is_directory=True)
    node = Node(tmp_path, None, kafka=False, env={"FAAS_MANIFEST": str(current / "functions.yaml")})
    url = f"{node.url}/functions/{UUID}/invoke"

    def answer() -> dict[str, Any] | None:
        reply = httpx.post(url, content=b"null", timeout=10)
        return reply.json()["result"] if reply.status_code == 200 else None

    try:
        node.wait_ready()
        first = answer()
        assert first is not None, node.tail()
        assert first["v"] == "a" and first["token"] == sha("value-of-a") and first["cwd"] == str(a.resolve())
        assert first["file"].startswith(str(a.resolve() / ".faas")), first
        link = tmp_path / "current.new"
        link.symlink_to(b, target_is_directory=True)
        os.replace(link, current)
        wait_for(lambda: (answer() or {}).get("v") == "b", timeout=6, interval=0.05, message="b served")
        shutil.rmtree(a)
        served = answer()
        assert served is not None, node.tail()
        assert served["v"] == "b" and served["token"] == sha("value-of-b"), served
        assert served["cwd"] == str(b.resolve()), served
        assert served["file"].startswith(str(b.resolve() / ".faas")), served
        assert not a.exists()  # nothing wrote into the old folder after it was deleted
    finally:
        node.stop()
