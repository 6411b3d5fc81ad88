"""control.watch: what a reload does with an edit it cannot check."""

from __future__ import annotations

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
