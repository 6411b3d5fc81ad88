"""control.secrets_watch: changes in the secrets folder reach the callback; the watch never ends early."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

import pytest

from framework.control import secrets_watch
from framework.control.secrets_watch import SecretsWatcher
from framework.tasks import within
from tests.runtime.conftest import until


class Recorder(list[bool]):
    """The watcher's callback: records each call; `changed` is set by the first file event."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def __call__(self, event: bool) -> None:
        self.append(event)
        if event:
            self.changed.set()


async def write_until_seen(path: Path, seen: Recorder, timeout: float) -> None:
    """Rewrite `path` every 0.2 s until a change is reported: the watch may still be setting itself up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    n = 0
    while not seen.changed.is_set():
        assert loop.time() < deadline, f"no change reported within {timeout} s"
        n += 1
        await asyncio.to_thread(path.write_text, f"value-{n}")
        with contextlib.suppress(TimeoutError):
            await within(seen.changed.wait(), 0.2)


async def test_a_changed_file_is_reported_within_a_second(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("one-value")
    seen = Recorder()
    stop = asyncio.Event()
    task = asyncio.create_task(SecretsWatcher(tmp_path, seen).run(stop))
    await write_until_seen(tmp_path / "token", seen, 1.5)
    stop.set()
    await within(task, 5)


async def test_a_folder_that_comes_and_goes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1. Watch a folder that does not exist. 2. Create it, change a file. 3. Remove it.
    Result: re-checks run meanwhile, the change in the new folder is reported, and the watch keeps running
    after the folder is gone, until stopped."""
    monkeypatch.setattr(secrets_watch, "RECHECK", 0.2)
    folder = tmp_path / "later"
    seen = Recorder()
    stop = asyncio.Event()
    task = asyncio.create_task(SecretsWatcher(folder, seen).run(stop))
    await until(lambda: False in seen, timeout=5, message="re-check while the folder is missing")
    folder.mkdir()
    await write_until_seen(folder / "token", seen, 5)  # the new folder is watched from the next re-check
    shutil.rmtree(folder)
    count = len(seen)
    await until(lambda: len(seen) > count + 2, timeout=5, message="still re-checking")
    assert not task.done()
    stop.set()
    await within(task, 5)


async def test_a_folder_appearing_going_or_replaced_is_a_change(tmp_path: Path) -> None:
    """1. Watch a folder that does not exist. 2. Create it with a file in it (written before the folder is
    watched). 3. Remove it. 4. Put another folder in its place, then a file in that one right after (before
    the new watch may be set up). 5. Replace it with a third folder (`mv`), then change a file in that.
    Result: each step is reported as a change (True) within 2 s, with no re-check (RECHECK, 10 s) between:
    no file event tells of files a new folder brings, and a watch of a removed folder hears nothing more."""
    folder, seen, stop = tmp_path / "later", Recorder(), asyncio.Event()
    task = asyncio.create_task(SecretsWatcher(folder, seen).run(stop))

    async def reported(step: str) -> None:
        await within(seen.changed.wait(), 2)
        assert False not in seen, step
        seen.changed.clear()

    def staged(name: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / "token").write_text(f"{name}-value")
        return path

    await asyncio.sleep(0)  # the watch has looked once: the folder is missing
    staged("one").rename(folder)  # as a mount appears: whole
    await reported("appeared")
    shutil.rmtree(folder)
    await reported("removed")
    folder.mkdir()
    (folder / "token").write_text("two-value")
    await reported("a new folder, and a file written in it at once")
    await asyncio.sleep(0.7)  # its watch is set up (one tick)
    seen.changed.clear()
    shutil.rmtree(folder)
    staged("three").rename(folder)
    await reported("replaced")
    await asyncio.sleep(0.7)
    seen.changed.clear()
    await write_until_seen(folder / "token", seen, 2)  # the third folder is the one watched
    stop.set()
    await within(task, 5)


async def test_a_folder_given_as_a_function_is_followed_where_it_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. Watch the folder a function names: `a/secrets` (a tick of 0.1 s). 2. The function names
    `b/secrets` from now on (a re-pointed manifest). 3. A file changes in `b/secrets`, then one in
    `a/secrets`. Result: the move is reported as a folder appearing (the runtime hides it) and a change
    within a second; the change in b is reported; the one in a is not (b is the folder watched)."""
    monkeypatch.setattr(secrets_watch, "WATCH_TICK_MS", 100)
    old, new = tmp_path / "a" / "secrets", tmp_path / "b" / "secrets"
    for folder in (old, new):
        folder.mkdir(parents=True)
        (folder / "token").write_text("first-value")
    where, seen, appeared, stop = [old], Recorder(), asyncio.Event(), asyncio.Event()
    watcher = SecretsWatcher(lambda: where[0], seen, lambda _went_at: appeared.set())
    task = asyncio.create_task(watcher.run(stop))
    await write_until_seen(old / "token", seen, 2)  # a is watched
    where[0] = new
    seen.changed.clear()
    await within(appeared.wait(), 1)
    await within(seen.changed.wait(), 1)
    await asyncio.sleep(0.2)  # b's watch is set up (its first tick is reported too)
    seen.changed.clear()
    await write_until_seen(new / "token", seen, 2)
    seen.changed.clear()
    (old / "token").write_text("unwatched-value")
    with pytest.raises(TimeoutError):
        await within(seen.changed.wait(), 0.3)
    stop.set()
    await within(task, 5)


async def test_a_failing_callback_does_not_end_the_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(secrets_watch, "RECHECK", 0.1)
    calls: list[bool] = []

    def broken(event: bool) -> None:
        calls.append(event)
        raise RuntimeError("bug")

    stop = asyncio.Event()
    task = asyncio.create_task(SecretsWatcher(tmp_path, broken).run(stop))
    await until(lambda: len(calls) >= 3, timeout=5, message="called again after failing")
    assert not task.done()
    stop.set()
    await within(task, 5)
