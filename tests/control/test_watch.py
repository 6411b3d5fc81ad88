"""control.watch: what a reload does with an edit it cannot check."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
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


MODULE = "async def handle(payload, ctx):\n    return {v!r}\n"


def watched(
    tmp_path: Path, limit: int | None = None
) -> tuple[Path, ManifestWatcher, list[str], list[list[str]]]:
    """A project whose module returns 1, its watcher, the module's text at each change it reports, and the
    errors it reports."""
    root = write_project(tmp_path, MANIFEST, {"mod": MODULE.format(v=1)})
    path = root / "functions.yaml"
    seen: list[str] = []
    errors: list[list[str]] = []

    def changed(manifest: Any, code: Any) -> None:
        seen.append((root / "functions" / "mod.py").read_text())

    watcher = ManifestWatcher(path, load_manifest(path), changed, errors.append, max_code_bytes=limit)
    return root, watcher, seen, errors


async def test_a_package_folder_deleted_and_made_again_is_watched_again(tmp_path: Path) -> None:
    """1. A watcher on a project whose handler package is `functions/`. 2. The folder is deleted and made
    again with a changed module (a checkout, a deploy script's `rm -rf` and copy). 3. The module is edited
    again. Result: 2 and 3 each reach `on_change` with the new code (the watch used to stay on the deleted
    folder: neither was seen)."""
    root, watcher, seen, errors = watched(tmp_path)
    async with running(watcher):
        while not seen:  # an edit seen: the watch is up
            (root / "functions" / "mod.py").write_text(MODULE.format(v=1))
            await until(lambda: bool(seen), "the first edit seen", timeout=1, fail=False)
        shutil.rmtree(root / "functions")
        await until(lambda: bool(errors) or bool(seen), "the deletion seen")
        write_project(tmp_path, MANIFEST, {"mod": MODULE.format(v=2)})
        await until(lambda: any("return 2" in s for s in seen), "the folder made again seen")
        (root / "functions" / "mod.py").write_text(MODULE.format(v=3))
        await until(lambda: any("return 3" in s for s in seen), "an edit in the new folder seen")


async def test_a_file_named_in_bytes_that_are_not_utf8_neither_ends_the_watch_nor_deploys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. A watcher on a project. 2. A file whose name is not UTF-8 (`bad\\xffname.txt`, as an archive of
    cp437 names unpacks) lands in the handler package. 3. The module is edited.
    Result: 2 is rejected, saying which file and why, and logged as a watch restarted (watchfiles raised on
    its name and ended the watch: the node stopped, with `FAAS_WATCH` on or off); once the file is removed,
    3 reaches `on_change`."""
    root, watcher, seen, errors = watched(tmp_path, limit=1 << 20)
    bad = os.path.join(os.fsencode(root / "functions"), b"bad\xffname.txt")
    async with running(watcher):
        while not seen:  # an edit seen: the watch is up
            (root / "functions" / "mod.py").write_text(MODULE.format(v=1))
            await until(lambda: bool(seen), "the first edit seen", timeout=1, fail=False)
        os.close(os.open(bad, os.O_CREAT | os.O_WRONLY, 0o644))
        await until(lambda: any("is not UTF-8" in line for e in errors for line in e), "the name refused")
        assert "watching again" in caplog.text, caplog.text
        os.unlink(bad)
        (root / "functions" / "mod.py").write_text(MODULE.format(v=2))
        await until(lambda: any("return 2" in s for s in seen), "the next edit seen")


def configmap_swap(mount: Path, stamp: str, files: dict[str, str]) -> Path:
    """Kubernetes' atomic update of a ConfigMap volume: the files in a new timestamped folder, a new
    `..data_tmp` link to it renamed over `..data`, then the old folder removed. Returns the new folder."""
    folder = mount / f"..{stamp}"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    old = (mount / "..data").resolve() if (mount / "..data").is_symlink() else None
    os.symlink(folder.name, mount / "..data_tmp")
    os.rename(mount / "..data_tmp", mount / "..data")
    for name in files:  # the user-facing names: links through `..data`, made once
        if not (mount / name).is_symlink():
            os.symlink(f"..data/{name}", mount / name)
    if old is not None:
        shutil.rmtree(old)
    return folder


async def test_a_configmap_manifest_swapped_is_followed(tmp_path: Path) -> None:
    """1. A watcher on `functions.yaml -> ..data/functions.yaml` of a ConfigMap mount, its handler module
    `mod.py` beside it the same way. 2. The ConfigMap is updated (a new `..2026_b` folder, `..data`
    re-pointed to it by a rename, the old folder removed), adding a function. 3. Updated again to `..2026_c`
    with another module version. Result: each update reaches `on_change` with its manifest, handlers
    imported from the new folder (the watch used to stay on the first folder: neither was seen)."""
    entry = "  - name: {n}\n    uuid: 0b6f3c1e-3f1d-4c1a-9a7e-5d2f8e4b6a0{i}\n    handler: mod:handle\n"
    module = "async def handle(payload, ctx):\n    return {v}\n"

    def files(names: list[str], v: int) -> dict[str, str]:
        text = "functions:\n" + "".join(entry.format(n=n, i=i) for i, n in enumerate(names))
        return {"functions.yaml": text, "mod.py": module.format(v=v)}

    mount = tmp_path / "config"
    mount.mkdir()
    configmap_swap(mount, "2026_12_06_a", files(["alpha"], 1))
    path = mount / "functions.yaml"
    seen: list[tuple[list[str], Path]] = []
    errors: list[list[str]] = []

    def changed(manifest: Any, code: Any) -> None:
        seen.append(([f.name for f in manifest.functions], manifest.functions[0].root))

    watcher = ManifestWatcher(path, load_manifest(path), changed, errors.append)
    async with running(watcher):
        await until(lambda: not watcher.busy(), "the warm-up done")
        b = configmap_swap(mount, "2026_12_06_b", files(["alpha", "beta"], 2))
        await until(lambda: any(names == ["alpha", "beta"] for names, _ in seen), "the first swap seen")
        assert seen[-1][1] == b and watcher.resolved == b / "functions.yaml"
        c = configmap_swap(mount, "2026_12_06_c", files(["gamma"], 3))
        await until(lambda: any(names == ["gamma"] for names, _ in seen), "the second swap seen")
        assert seen[-1][1] == c and errors == []


async def test_an_edit_that_fixes_a_hanging_import_is_not_held_by_its_check(tmp_path: Path) -> None:
    """1. A watcher on a working project. 2. The handler module is edited to hang at import (sleeps for
    minutes). 3. Once `checking()` names the handler being imported, the module is fixed. Result: the fix
    reaches `on_change` within seconds, not after the 30 s import limit of the hanging check, which was
    stopped (nothing of it was applied, no error was reported); `checking()` is None again."""
    module = "async def handle(payload, ctx):\n    return {v}\n"
    root = write_project(tmp_path, MANIFEST, {"mod": module.format(v=1)})
    path = root / "functions.yaml"
    seen: list[str] = []
    errors: list[list[str]] = []

    def changed(manifest: Any, code: Any) -> None:
        seen.append((root / "functions" / "mod.py").read_text())

    watcher = ManifestWatcher(path, load_manifest(path), changed, errors.append)
    async with running(watcher):
        await until(lambda: not watcher.busy(), "the warm-up done")
        (root / "functions" / "mod.py").write_text("import time\ntime.sleep(300)\n")
        await until(lambda: "functions.mod:handle" in (watcher.checking() or ""), "the hanging check shown")
        line = watcher.checking() or ""
        assert line.startswith("functions.yaml: checking the working copy since "), line
        started = time.monotonic()
        (root / "functions" / "mod.py").write_text(module.format(v=2))
        await until(lambda: any("return 2" in s for s in seen), "the fix applied", timeout=20)
        assert time.monotonic() - started < 10
        assert errors == [] and not any("sleep" in s for s in seen)
        await until(lambda: watcher.checking() is None, "no check running")


async def test_a_package_made_after_the_edit_naming_it_is_seen(tmp_path: Path) -> None:
    """1. A watcher on a project serving `functions/`. 2. The manifest gains a function whose handler is in
    `latepkg`, not there yet: rejected. 3. `latepkg/` is made, then its modules written. Result: the edit
    is applied with the new package, without another touch of the manifest (the new folder was not
    watched, and the node kept the error until an unrelated edit)."""
    root = write_project(tmp_path, MANIFEST, {"mod": "async def handle(payload, ctx):\n    return 1\n"})
    path = root / "functions.yaml"
    applied: list[list[str]] = []
    errors: list[list[str]] = []
    watcher = ManifestWatcher(
        path, load_manifest(path), lambda m, c: applied.append([f.name for f in m.functions]), errors.append
    )
    late = "  - name: late\n    uuid: 77777777-2222-4333-8444-555555555555\n    handler: latepkg.mod:handle\n"
    async with running(watcher):
        while not errors:  # until the watch is up and has seen the edit
            path.write_text(MANIFEST + late)
            await until(lambda: bool(errors), "the edit naming latepkg rejected", timeout=1, fail=False)
        assert any("latepkg" in line for line in errors[-1]), errors[-1]
        (root / "latepkg").mkdir()
        await asyncio.sleep(0.3)  # the folder alone first, as `mkdir` then an editor would make it
        (root / "latepkg" / "__init__.py").write_text("")
        (root / "latepkg" / "mod.py").write_text("def handle(payload, ctx):\n    return 'late'\n")
        await until(lambda: ["alpha", "late"] in applied, "the edit applied once latepkg is there")


@contextlib.asynccontextmanager
async def running(watcher: ManifestWatcher) -> AsyncIterator[None]:
    """`watcher` watching for the block's duration; stopped (and its task awaited) after it."""
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    try:
        yield
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
