"""Secret rotation: watch `FAAS_SECRETS_DIR` and tell the runtime when something in it changed.

watchfiles (inotify on Linux) reports changes in the folder and below: a rewritten file, an atomic
replace, and the `..data` symlink swap by which Kubernetes updates a mounted Secret. The runtime then
re-reads the secrets of the functions it serves and gives those whose values changed fresh instances
(in-flight requests finish on the old ones), within the contract's 2 s. Mounts that send no file events
(some network and bind mounts) are covered by a re-check every `RECHECK` seconds. A folder that does not
exist (yet, or any more) is looked for every `APPEAR_POLL` seconds, and its appearing, going or being
replaced (`mv new secrets`: another folder at the same path) is a change like any other: the files it
brings were never written while watched, so no file event would tell (a manifest edit rejected for a secret
it now holds is checked again at once). While watching, every `WATCH_TICK_MS` the watch checks that the
folder is still the one it watches (inotify on a removed folder reports nothing more). The watch never ends
the node.

The folder may be given as a function that says where it is now (`Settings.secrets_path`, which follows a
re-pointed symlinked manifest): a folder somewhere else is then a folder replaced, noticed at the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import stat
import time
from collections.abc import Callable
from pathlib import Path

from framework.tasks import within

log = logging.getLogger("faas.secrets")

DEBOUNCE_MS = 100
"""watchfiles groups changes within this window (an editor's save is several events)."""
RECHECK = 10.0
"""Seconds between re-checks without a file event."""
APPEAR_POLL = 0.5
"""Seconds between looks for a missing folder (a `stat`: the contract gives a changed secret 2 s)."""
WATCH_TICK_MS = 500
"""Milliseconds between looks, while watching, at whether the folder is still the one watched."""


class SecretsWatcher:
    """Calls `on_change(True)` after each change in `folder`, and `on_change(False)` every `RECHECK`
    seconds (a re-check, whether or not anything changed)."""

    def __init__(
        self,
        folder: Path | Callable[[], Path],
        on_change: Callable[[bool], object],
        on_appeared: Callable[[float], object] | None = None,
    ) -> None:
        self._folder = folder
        self.on_change = on_change
        self.on_appeared = on_appeared
        """Called first when the folder appears or is replaced (a folder made in its place may even reuse its
        inode number: its deletion tells), with the `time.monotonic()` at which the watch knew the one before
        was gone: whatever looked at the folder after that saw the new one, or none."""

    @property
    def folder(self) -> Path:
        """The folder to watch, as it is now."""
        return self._folder() if callable(self._folder) else self._folder

    async def run(self, stop: asyncio.Event) -> None:
        recheck = asyncio.create_task(self._recheck(stop))
        known: tuple[int, int] | None = None  # the folder watched last (device, inode); None: none yet
        went_at: float | None = None  # when the watch knew the folder it watched (or none) was not there
        first = True
        try:
            while not stop.is_set():
                now = self._identity()
                if now is None:  # missing: look again soon
                    first = False
                    went_at = time.monotonic() if went_at is None else went_at
                    with contextlib.suppress(TimeoutError):
                        await within(stop.wait(), APPEAR_POLL)
                    continue
                found = not first and now != known  # it appeared, or was replaced: what it holds is new
                first = False
                if found:
                    log.info("the secrets folder %s appeared", self.folder)
                    if self.on_appeared is not None:
                        self.on_appeared(time.monotonic() if went_at is None else went_at)
                    self._changed(True)  # at once; and again once watched (see `_watch`)
                known, went_at = now, None
                gone = False
                try:
                    gone = await self._watch(stop, now, found)
                except Exception as exc:
                    log.warning("watching the secrets folder %s stopped: %s", self.folder, exc)
                if stop.is_set():
                    break
                if gone or self._identity() != now:  # it went, or was replaced: so did every secret in it
                    known, went_at = None, time.monotonic()
                    self._changed(True)
                    continue
                with contextlib.suppress(TimeoutError):  # the watch failed: try again later
                    await within(stop.wait(), RECHECK)
        finally:
            recheck.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recheck

    def _identity(self) -> tuple[int, int] | None:
        """The folder's (device, inode), None when there is none."""
        try:
            st = self.folder.stat()
        except OSError:
            return None
        return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None

    async def _watch(self, stop: asyncio.Event, identity: tuple[int, int], new: bool) -> bool:
        """Report each change until `stop` (False), or until the folder watched is gone or replaced (True:
        inotify then watches nothing, and watchfiles goes on, silent). Gone: its own deletion is among the
        changes (a folder made in its place may even reuse its inode number), or what is at its path is
        another folder (moved away and replaced). For a `new` folder the first yield (a change, or the first
        tick) is reported too: the watch is set up by then, and files written before it would otherwise wait
        for the next re-check."""
        from watchfiles import Change, awatch

        folder = self.folder
        itself = {(Change.deleted, str(folder)), (Change.deleted, str(folder.absolute()))}
        first = new
        async for changes in awatch(
            folder,
            stop_event=stop,
            debounce=DEBOUNCE_MS,
            step=50,
            recursive=True,
            yield_on_timeout=True,
            rust_timeout=WATCH_TICK_MS,
        ):
            if not itself.isdisjoint(changes) or self._identity() != identity:
                return True
            if changes or first:
                first = False
                self._changed(True)
        return False

    async def _recheck(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await within(stop.wait(), RECHECK)
            if not stop.is_set():
                self._changed(False)

    def _changed(self, event: bool) -> None:
        try:
            self.on_change(event)
        except Exception:  # a bug here must not end rotation for good
            log.exception("re-reading the secrets failed")
