"""Manifest hot reload: watch `functions.yaml` and the handler packages it names, validate, swap.

watchfiles (inotify on Linux) reports changes. Only the manifest's folder (not recursively: a project
folder may hold a `.venv` of thousands of folders) and the top-level packages of the handlers are
watched. An edit is applied only when it passes everything `faas validate` checks, handlers importing
included; a rejected edit leaves the last good manifest serving.

- Cost: checks run one at a time, in a thread, through a `ManifestCache` kept for the watch, so an edit
  costs what it changed (an edit of one handler module of 1,000 imports that handler alone; the
  manifest's text is parsed again only when its bytes changed). The cache is filled once when the watch
  starts, in the background, so the first edit is as cheap as the next.
- Edits that come while a check runs are checked together, once it ends. A check whose current import
  has gone on for `STALE_IMPORT` seconds (a module that hangs at import holds its check for the 30 s
  import limit) is stopped as soon as a newer edit is waiting, since its result would be replaced anyway:
  the newer edit is checked at once. `checking()` says what runs and since when (for `/readyz`), and a
  check that takes over `SLOW_CHECK` seconds is logged with the handler it is importing.
- A symlinked manifest (a Kubernetes ConfigMap mount: `functions.yaml -> ..data/functions.yaml`, `..data`
  re-pointed by renaming a new link over it) is followed: the folder holding the link as named is watched
  besides the folder of the file it points to, the link is resolved again after every batch of changes
  (and once a second), and a new target is loaded, its folder watched instead of the old one. The
  project folder (handlers, FAAS_SECRETS_DIR, FAAS_CACHE_DIR) is the target's folder, as everywhere else
  (`load_manifest`), so handlers are imported from the new target's folder from then on.

A watched folder that is deleted and made again (a `git checkout` of a branch without it, a deploy script's
`rm -rf` and copy) takes its inotify watch with it: `_changes` notices the folder gone or replaced (another
inode, at its next batch or its next `RECHECK_MS`), waits for it to be back, watches it again and reloads
once, since what was written meanwhile was not seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import stat
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from framework.control.handler_check import CheckCancelled
from framework.control.manifest import ManifestCache, load_manifest, read_head
from framework.control.snapshot import is_code, top_level_name
from framework.control.spec import Manifest
from framework.control.working_copy import CodeZips
from framework.errors import ManifestError

log = logging.getLogger("faas.reload")

DEBOUNCE_MS = 150
"""watchfiles groups changes within this window; a deploy is served well within the contract's 2 s."""
RECHECK_MS = 1000
"""Milliseconds between checks that the watched folders are still there (and the manifest's link still
points where it did), when no change comes."""
GONE_POLL = 0.2
"""Seconds between looks for a watched folder that was deleted."""
STALE_IMPORT = 1.0
"""Seconds one handler's import may run, while a newer edit waits, before its check is stopped for the
newer one. Imports take milliseconds; a check of many handlers, each quick, runs to its end."""
SLOW_CHECK = 2.0
"""Seconds after which a running check is logged (the contract serves an edit within 2 s)."""
POLL = 0.1
"""Seconds between looks at a running check (a newer edit waiting, the log line due)."""

_Outcome = tuple[Manifest, CodeZips | None] | list[str] | None
"""A check's result: the manifest and its code look, the errors of a rejected edit, or None (stopped)."""


_HANDLER = re.compile(r"""handler\s*:\s*["']?([A-Za-z_][A-Za-z0-9_]*)""")
"""A `handler:` value's top-level name, read from the manifest's text: a hint of what to watch, taken from
an edit that was rejected too (its handler's package may be what comes next)."""


def handler_tops(path: Path) -> set[str]:
    """The top-level package or module names the `handler:` lines of the manifest at `path` name now."""
    try:
        text = read_head(path).decode("utf-8", "replace")
    except OSError:
        return set()
    return set(_HANDLER.findall(text))


class ManifestWatcher:
    """Calls `on_change(manifest, code)` after a valid edit (`code`: the zips it was checked with, None when
    code is not checked), `on_error(lines)` after a bad one."""

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        on_change: Callable[[Manifest, CodeZips | None], None],
        on_error: Callable[[list[str]], None],
        secrets_dir: Path | Callable[[], Path] | None = None,
        max_code_bytes: int | None = None,
    ) -> None:
        self.path = path
        """As the node was given it (FAAS_MANIFEST): errors name it so, as `faas validate` does."""
        self.link_folder = path.absolute().parent
        """The folder holding the name the node was given: where a link to the manifest is re-pointed."""
        self.resolved = path.resolve()
        """The file the manifest is now (the link's target): watchfiles reports absolute paths."""
        self._secrets_dir = secrets_dir
        """Where listed secrets must exist for an edit to pass (as `faas validate` checks them); a function
        when it follows the manifest (a relative folder moves with a re-pointed link)."""
        self.max_code_bytes = max_code_bytes
        """FAAS_MAX_CODE_BYTES: an edit whose code zips to more is rejected, as `faas validate` rejects it
        (None: not checked)."""
        self.on_change = on_change
        self.on_error = on_error
        self.tops = {top_level_name(spec.handler) for spec in manifest.functions}
        """The handlers' top-level names in the manifest's text as last read, a rejected edit's included: a
        folder of such a name made in the project is a change to check, and is watched from then on."""
        self.packages = self._package_folders()
        self.cache = ManifestCache()
        """What the checks keep between edits (`ManifestCache`), so an edit costs what it changed."""
        self._packages_changed = asyncio.Event()
        self._replaced = False
        """A package folder was replaced: its new watch starts with a reload."""
        self._asked = 0
        """Checks asked for (`_ask`), counted; `_answered` of them are done."""
        self._answered = 0
        self._warm = False
        """A check that fills the cache without applying anything is wanted (the watch's start)."""
        self._checker: asyncio.Task[None] | None = None
        self._answer = asyncio.Event()
        """Set (and replaced) each time checks were answered."""
        self._since: float | None = None
        """When the running check started (seconds since the epoch), None when none runs."""
        self._closing = False

    async def run(self, stop: asyncio.Event) -> None:
        self._warm = True
        self._start_checker()
        try:
            await asyncio.gather(self._watch_manifest(stop), self._watch_packages(stop))
        finally:
            self._closing = True
            self.cache.imports.cancel()
            if self._checker is not None:
                await asyncio.gather(self._checker, return_exceptions=True)
            self.cache.close()

    # ---- what to check ----

    async def reload(self) -> None:
        """Check the working copy as it is now and apply it: returns once a check that started after this
        call has ended (the edits that came meanwhile included)."""
        wanted = self._ask()
        while self._answered < wanted and not self._closing:
            await self._answer.wait()

    def _ask(self) -> int:
        self._asked += 1
        self._start_checker()
        return self._asked

    def _start_checker(self) -> None:
        if self._checker is None or self._checker.done():
            self._checker = asyncio.get_running_loop().create_task(self._check_all(), name="manifest-check")

    async def _check_all(self) -> None:
        """Check until every check asked for is answered, one at a time."""
        try:
            while (self._answered < self._asked or self._warm) and not self._closing:
                asked, warm = self._asked, self._answered == self._asked
                self._warm = False
                outcome = await self._check(asked)
                if outcome is None and self._asked > asked:  # stopped for a newer edit: that one now
                    continue
                if not warm:
                    self._apply(outcome)
                    self._answered = asked
                self._wake()
        finally:
            self._wake()

    def _wake(self) -> None:
        answer, self._answer = self._answer, asyncio.Event()
        answer.set()

    def _apply(self, outcome: _Outcome) -> None:
        if outcome is None:
            return
        self._follow_packages()
        if isinstance(outcome, list):
            self.on_error(outcome)
            return
        manifest, code = outcome
        self.on_change(manifest, code)

    def _follow_packages(self) -> None:
        """Watch the folders of the handlers the manifest names now, those of a rejected edit too: a package
        made after the edit that names it is then seen, and its files as they are written."""
        packages = self._package_folders()
        if packages != self.packages:
            if packages - self.packages:
                self._replaced = True  # a new folder: what was written in it before its watch began is read
            self.packages = packages
            self._packages_changed.set()

    def _package_folders(self) -> set[Path]:
        """The folders of the handlers' top-level packages in the project (a module beside the manifest
        needs none)."""
        root = self.resolved.parent
        return {(root / top).resolve() for top in self.tops if (root / top).is_dir()}

    async def _check(self, asked: int) -> _Outcome:
        """One check, in a thread (handlers are imported in a subprocess: the loop stays free); stopped when
        its current import is stale and a newer check is asked for."""
        self._since = time.time()
        work = asyncio.ensure_future(asyncio.to_thread(self._load))
        logged = False
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=POLL)
                if work.done():
                    break
                progress = self.cache.imports.progress()
                if self._asked > asked and progress is not None and time.time() - progress[1] >= STALE_IMPORT:
                    log.warning(
                        "stopping the check of an earlier edit (importing handler %r for %.1f s): a newer "
                        "edit is checked instead",
                        progress[0],
                        time.time() - progress[1],
                    )
                    self.cache.imports.cancel()
                if not logged and time.time() - self._since >= SLOW_CHECK:
                    logged = True
                    log.warning("%s", self.checking())
            return await work
        finally:
            self._since = None

    @property
    def secrets_dir(self) -> Path | None:
        """The secrets folder now."""
        where = self._secrets_dir
        return where() if callable(where) else where

    def _load(self) -> _Outcome:
        """Load and check the manifest (in a worker thread); never raises."""
        self.tops = handler_tops(self.path)
        try:
            secrets_dir = self.secrets_dir
            code = None if self.max_code_bytes is None else CodeZips(self.max_code_bytes, secrets_dir)
            return load_manifest(self.path, True, secrets_dir, code, self.cache), code
        except CheckCancelled:
            return None
        except ManifestError as exc:
            log.error("manifest edit rejected, still serving the last good one:\n%s", "\n".join(exc.errors))
            return exc.errors
        except OSError as exc:  # the file is mid-replace or gone: keep serving, say why
            log.error("manifest not readable, still serving the last good one: %s", exc)
            return [f"{self.path.name}: {exc}"]
        except Exception as exc:  # a bug in the check must not end the watch, and with it the node
            log.exception("manifest edit could not be checked, still serving the last good one")
            return [f"{self.path.name}: the edit could not be checked: {type(exc).__name__}: {exc}"]

    def busy(self) -> bool:
        """Whether a check runs or is wanted (the warm-up included)."""
        return self._since is not None or self._warm or self._answered < self._asked

    def checking(self) -> str | None:
        """What runs, for `/readyz` and the log: e.g. `functions.yaml: checking the working copy since
        12:00:01 UTC (31.2 s): importing handler 'functions.slow:handle' for 31.0 s`; None when no check
        runs."""
        since = self._since
        if since is None:
            return None
        now = time.time()
        at = datetime.fromtimestamp(since, UTC).strftime("%H:%M:%S")
        line = f"{self.path.name}: checking the working copy since {at} UTC ({now - since:.1f} s)"
        progress = self.cache.imports.progress()
        if progress is not None:
            line += f": importing handler {progress[0]!r} for {now - progress[1]:.1f} s"
        return line

    # ---- watching ----

    def _manifest_folders(self) -> list[Path]:
        """The folder of the manifest's file, and the folder holding its link when that is another."""
        folders = [self.resolved.parent]
        with contextlib.suppress(OSError):
            if self.link_folder.resolve() != self.resolved.parent:
                folders.append(self.link_folder.resolve())
        return folders

    def _concerns(self, paths: set[Path]) -> bool:
        names = {self.path.name, self.resolved.name, *self.tops}
        return any(p.name in names or p.suffix == ".py" or p in self.packages for p in paths)

    async def _watch_manifest(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            folders = self._manifest_folders()
            moved = asyncio.Event()  # the link points to another folder: watched anew
            relay = asyncio.create_task(_relay(moved, stop))
            try:
                async with contextlib.aclosing(_changes(folders, moved, recursive=False)) as changes:
                    async for paths in changes:
                        target = self.path.resolve()
                        if target != self.resolved:
                            log.info("manifest %s now points to %s: loading it", self.path, target)
                            self.resolved = target
                            self._ask()
                            if self._manifest_folders() != folders:
                                break
                            continue
                        if paths and paths & self.packages:  # a package folder deleted or made again
                            self._replaced = True  # watched anew (its old watch went with the old folder),
                            self._packages_changed.set()  # and reloaded once that watch is up
                        if paths is None or self._concerns(paths):
                            self._ask()
            finally:
                relay.cancel()

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
                        self._ask()
            finally:
                relay.cancel()
            self._packages_changed.clear()

    def _is_code(self, path: Path) -> bool:
        """Whether a changed file is part of a package's code (a data file too: its revision holds it), not
        the `.pyc` an import writes, nor a file of the secrets folder (watched on its own)."""
        secrets_dir = self.secrets_dir
        if secrets_dir is not None and path.is_relative_to(secrets_dir.resolve()):
            return False
        for package in self.packages:
            if path.is_relative_to(package):
                return is_code(path.relative_to(package))
        return False


async def _changes(
    folders: Sequence[Path], stop: asyncio.Event, recursive: bool, again: bool = False
) -> AsyncGenerator[set[Path] | None]:
    """The paths changed under `folders`, batch by batch, until `stop`; None once the folders, gone for a
    while (or replaced: `again`), are watched again (what was written meanwhile was not seen); an empty
    batch now and then (every `RECHECK_MS`, every `GONE_POLL` while a folder is gone), so the caller can
    look at what no event reports."""
    from watchfiles import awatch

    while not stop.is_set():
        watched = _identities(folders)
        if watched is None:
            again = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), GONE_POLL)
            yield set()
            continue
        try:
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
                yield {Path(p) for _, p in changes}
                if _identities(folders) != watched:  # gone, or made again already: a new folder to watch
                    again = True
                    break
        except Exception as exc:
            failure = _watcher_failure(exc)
            if failure is None:
                raise
            # One file named in bytes that are not UTF-8 ended watchfiles' watch, and the node with it.
            log.warning("watching %s: %s; watching again", ", ".join(map(str, folders)), failure)
            again = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), GONE_POLL)


def _watcher_failure(exc: BaseException) -> str | None:
    """The message of watchfiles' own error (a path it cannot decode: a file name that is not UTF-8),
    raised alone or in a task group's ExceptionGroup; None for any other error."""
    from watchfiles._rust_notify import WatchfilesRustInternalError  # not exported by the package

    if isinstance(exc, WatchfilesRustInternalError):
        text = str(exc)
        return text if "decode path" in text else None  # another of its errors ends the watch, as before
    if isinstance(exc, BaseExceptionGroup):
        found = [_watcher_failure(e) for e in exc.exceptions]
        if found and all(f is not None for f in found):
            return "; ".join(f for f in found if f is not None)
    return None


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
