"""control.watch: what a reload does with an edit it cannot check."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from framework.control import watch
from framework.control.manifest import load_manifest
from framework.control.watch import ManifestWatcher
from tests.support import write_project

MANIFEST = """\
functions:
  - name: alpha
    uuid: 0b6f3c1e-3f1d-4c1a-9a7e-5d2f8e4b6a01
    handler: functions.mod:handle
"""


async def test_an_edit_whose_check_fails_unexpectedly_is_an_error_not_the_end_of_the_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check raises something else than a manifest error (a bug; a YAML tag once raised TypeError).
    Result: the edit is rejected with a line naming the error, and reload returns: the watch, and the node
    with it, goes on (the exception used to end the watch task, which stopped the node)."""
    root = write_project(tmp_path, MANIFEST, {"mod": "async def handle(payload, ctx):\n    return 1\n"})
    path = root / "functions.yaml"
    changes: list[Any] = []
    errors: list[list[str]] = []
    watcher = ManifestWatcher(path, load_manifest(path), lambda m, c: changes.append(m), errors.append)

    def broken(*args: Any) -> Any:
        raise TypeError("'NoneType' object is not iterable")

    monkeypatch.setattr(watch, "load_manifest", broken)
    await watcher.reload()
    assert changes == [] and errors == [
        ["functions.yaml: the edit could not be checked: TypeError: 'NoneType' object is not iterable"]
    ]
    monkeypatch.setattr(watch, "load_manifest", load_manifest)
    await watcher.reload()
    assert len(changes) == 1 and errors == errors[:1]


async def test_a_package_folder_deleted_and_made_again_is_watched_again(tmp_path: Path) -> None:
    """1. A watcher on a project whose handler package is `functions/`. 2. The folder is deleted and made
    again with a changed module (a checkout, a deploy script's `rm -rf` and copy). 3. The module is edited
    again. Result: 2 and 3 each reach `on_change` with the new code (the watch used to stay on the deleted
    folder: neither was seen)."""
    module = "async def handle(payload, ctx):\n    return {v!r}\n"
    root = write_project(tmp_path, MANIFEST, {"mod": module.format(v=1)})
    path = root / "functions.yaml"
    seen: list[str] = []
    errors: list[list[str]] = []

    def changed(manifest: Any, code: Any) -> None:
        seen.append((root / "functions" / "mod.py").read_text())

    watcher = ManifestWatcher(path, load_manifest(path), changed, errors.append)
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    try:
        while not seen:  # an edit seen: the watch is up
            (root / "functions" / "mod.py").write_text(module.format(v=1))
            await until(lambda: bool(seen), "the first edit seen", timeout=1, fail=False)
        shutil.rmtree(root / "functions")
        await until(lambda: bool(errors) or bool(seen), "the deletion seen")
        write_project(tmp_path, MANIFEST, {"mod": module.format(v=2)})
        await until(lambda: any("return 2" in s for s in seen), "the folder made again seen")
        (root / "functions" / "mod.py").write_text(module.format(v=3))
        await until(lambda: any("return 3" in s for s in seen), "an edit in the new folder seen")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def until(condition: Callable[[], bool], what: str, timeout: float = 15, fail: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            assert not fail, f"{what}: not within {timeout} s"
            return
        await asyncio.sleep(0.05)
