"""Secret rotation: watch `FAAS_SECRETS_DIR` and tell the runtime when something in it changed.

watchfiles (inotify on Linux) reports changes in the folder and below: a rewritten file, an atomic
replace, and the `..data` symlink swap by which Kubernetes updates a mounted Secret. The runtime then
re-reads the secrets of the functions it serves and gives those whose values changed fresh instances
(in-flight requests finish on the old ones), within the contract's 2 s. Mounts that send no file events
(some network and bind mounts) are covered by a re-check every `RECHECK` seconds. A folder that does not
exist (yet, or any more) is looked for every `APPEAR_POLL` seconds, and its appearing (or going) is a
change like any other: the files it brings were never written while watched, so no file event would tell
(a manifest edit rejected for a secret it now holds is checked again at once). The watch never ends the
node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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


class SecretsWatcher:
    """Calls `on_change(True)` after each change in `folder`, and `on_change(False)` every `RECHECK`
    seconds (a re-check, whether or not anything changed)."""

    def __init__(self, folder: Path, on_change: Callable[[bool], object]) -> None:
        self.folder = folder
        self.on_change = on_change

    async def run(self, stop: asyncio.Event) -> None:
        recheck = asyncio.create_task(self._recheck(stop))
        present = self.folder.is_dir()
        try:
            while not stop.is_set():
                if self.folder.is_dir():
                    if not present:  # it appeared: what it holds is new
                        present = True
                        log.info("the secrets folder %s appeared", self.folder)
                        self._changed(True)
                    try:
                        await self._watch(stop)
                    except Exception as exc:  # e.g. the folder was removed while watched
                        log.warning("watching the secrets folder %s stopped: %s", self.folder, exc)
                if present and not self.folder.is_dir() and not stop.is_set():
                    present = False  # it went: so did every secret in it
                    self._changed(True)
                if not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await within(stop.wait(), APPEAR_POLL if not present else RECHECK)
        finally:
            recheck.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recheck

    async def _watch(self, stop: asyncio.Event) -> None:
        from watchfiles import awatch

        async for _ in awatch(self.folder, stop_event=stop, debounce=DEBOUNCE_MS, step=50, recursive=True):
            self._changed(True)

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
