"""Manifest hot reload: watch `functions.yaml` and the handler packages it names, validate, swap.

watchfiles (inotify on Linux) reports changes. Only the manifest's folder (not recursively: a project
folder may hold a `.venv` of thousands of folders) and the top-level packages of the handlers are
watched. An edit is applied only when it passes everything `faas validate` checks, handlers importing
included; a rejected edit leaves the last good manifest serving.

A watched folder that is deleted and made again (a `git checkout` of a branch without it, a deploy script's
`rm -rf` and copy) takes its inotify watch with it: `_changes` notices the folder gone or replaced (another
inode, at its next batch or its next `RECHECK_MS`), waits for it to be back, watches it again and reloads
once, since what was written meanwhile was not seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import stat
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from framework.control.manifest import Manifest, load_manifest
from framework.control.snapshot import is_code, top_level
from framework.control.working_copy import CodeZips
from framework.errors import ManifestError

log = logging.getLogger("faas.reload")

DEBOUNCE_MS = 150
"""watchfiles groups changes within this window; a deploy is served well within the contract's 2 s."""
RECHECK_MS = 1000
"""Milliseconds between checks that the watched folders are still there, when no change comes."""
GONE_POLL = 0.2
"""Seconds between looks for a watched folder that was deleted."""


def handler_packages(manifest: Manifest) -> set[Path]:
    """Folders of the handlers' top-level packages (a module beside the manifest needs none)."""
    found = (top_level(spec) for spec in manifest.functions)
    return {path.resolve() for path in found if path is not None and path.is_dir()}


class ManifestWatcher:
    """Calls `on_change(manifest, code)` after a valid edit (`code`: the zips it was checked with, None when
    code is not checked), `on_error(lines)` after a bad one."""

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        on_change: Callable[[Manifest, CodeZips | None], None],
        on_error: Callable[[list[str]], None],
        secrets_dir: Path | None = None,
        max_code_bytes: int | None = None,
    ) -> None:
        self.path = path
        """As the node was given it (FAAS_MANIFEST): errors name it so, as `faas validate` does."""
        self.resolved = path.resolve()
        """Where changes are looked for: watchfiles reports absolute paths."""
        self.secrets_dir = secrets_dir
        """Where listed secrets must exist for an edit to pass (as `faas validate` checks them)."""
        self.max_code_bytes = max_code_bytes
        """FAAS_MAX_CODE_BYTES: an edit whose code zips to more is rejected, as `faas validate` rejects it
        (None: not checked)."""
        self.on_change = on_change
        self.on_error = on_error
        self.packages = handler_packages(manifest)
        self._packages_changed = asyncio.Event()
        self._replaced = False
        """A package folder was replaced: its new watch starts with a reload."""

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(self._watch_manifest(stop), self._watch_packages(stop))

    async def _watch_manifest(self, stop: asyncio.Event) -> None:
        async for paths in _changes([self.resolved.parent], stop, recursive=False):
            # absolute paths: the watched folder is resolved
            if paths is not None and paths & self.packages:  # a package folder deleted or made again
                self._replaced = True  # watched anew (its old watch went with the old folder), and
                self._packages_changed.set()  # reloaded once that watch is up
            if (
                paths is None
                or self.resolved in paths
                or any(p.suffix == ".py" or p in self.packages for p in paths)
            ):
                await self.reload()

    async def _watch_packages(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self.packages:
                await _first(stop, self._packages_changed)
                self._packages_changed.clear()
                continue
            either = asyncio.Event()  # restart the watch when a reload names other packages
            relay = asyncio.create_task(_relay(either, stop, self._packages_changed))
            try:
                replaced, self._replaced = self._replaced, False
                async for paths in _changes(sorted(self.packages), either, recursive=True, again=replaced):
                    if paths is None or any(self._is_code(p) for p in paths):
                        await self.reload()
            finally:
                relay.cancel()
            self._packages_changed.clear()

    def _is_code(self, path: Path) -> bool:
        """Whether a changed file is part of a package's code (a data file too: its revision holds it), not
        the `.pyc` an import writes, nor a file of the secrets folder (watched on its own)."""
        if self.secrets_dir is not None and path.is_relative_to(self.secrets_dir.resolve()):
            return False
        for package in self.packages:
            if path.is_relative_to(package):
                return is_code(path.relative_to(package))
        return False

    async def reload(self) -> None:
        try:
            # Handlers are imported in a subprocess: keep the loop free meanwhile.
            code = None if self.max_code_bytes is None else CodeZips(self.max_code_bytes, self.secrets_dir)
            manifest = await asyncio.to_thread(load_manifest, self.path, True, self.secrets_dir, code)
        except ManifestError as exc:
            log.error("manifest edit rejected, still serving the last good one:\n%s", "\n".join(exc.errors))
            self.on_error(exc.errors)
            return
        except OSError as exc:  # the file is mid-replace or gone: keep serving, say why
            log.error("manifest not readable, still serving the last good one: %s", exc)
            self.on_error([f"{self.path.name}: {exc}"])
            return
        except Exception as exc:  # a bug in the check must not end the watch, and with it the node
            log.exception("manifest edit could not be checked, still serving the last good one")
            self.on_error([f"{self.path.name}: the edit could not be checked: {type(exc).__name__}: {exc}"])
            return
        packages = handler_packages(manifest)
        if packages != self.packages:
            self.packages = packages
            self._packages_changed.set()
        self.on_change(manifest, code)


async def _changes(
    folders: Sequence[Path], stop: asyncio.Event, recursive: bool, again: bool = False
) -> AsyncIterator[set[Path] | None]:
    """The paths changed under `folders`, batch by batch, until `stop`; None once the folders, gone for a
    while (or replaced: `again`), are watched again (what was written meanwhile was not seen)."""
    from watchfiles import awatch

    while not stop.is_set():
        watched = _identities(folders)
        if watched is None:
            again = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), GONE_POLL)
            continue
        async for changes in awatch(
            *folders,
            stop_event=stop,
            debounce=DEBOUNCE_MS,
            step=50,
            recursive=recursive,
            rust_timeout=RECHECK_MS,
            yield_on_timeout=True,  # an empty batch now and then: the folders are looked at
        ):
            if again:  # the first batch comes once the watch is set up: a reload sees what came before
                again = False
                yield None
            if changes:
                yield {Path(p) for _, p in changes}
            if _identities(folders) != watched:  # gone, or made again already: a new folder to watch
                again = True
                break


def _identities(folders: Sequence[Path]) -> list[tuple[int, int]] | None:
    """(device, inode) of each folder, or None when one is not a folder (any more)."""
    found = []
    for folder in folders:
        try:
            st = folder.stat()
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return None
        found.append((st.st_dev, st.st_ino))
    return found


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def _relay(target: asyncio.Event, *sources: asyncio.Event) -> None:
    await _first(*sources)
    target.set()
