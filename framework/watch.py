"""Manifest hot reload: watch `functions.yaml` and the modules under its folder, validate, swap.

watchfiles (inotify on Linux) reports changes; an edit is applied only when it passes everything
`faas validate` checks, handlers importing included. A rejected edit leaves the last good manifest serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from framework.errors import ManifestError
from framework.manifest import Manifest, load_manifest

log = logging.getLogger("faas.reload")

DEBOUNCE_MS = 150
"""watchfiles groups changes within this window; a deploy is served well within the contract's 2 s."""


class ManifestWatcher:
    """Calls `on_change(manifest, changed_modules)` after a valid edit, `on_error(lines)` after a bad one."""

    def __init__(
        self,
        path: Path,
        on_change: Callable[[Manifest, set[Path]], None],
        on_error: Callable[[list[str]], None],
    ) -> None:
        self.path = path.resolve()
        self.root = self.path.parent
        self.on_change = on_change
        self.on_error = on_error

    def _relevant(self, path: Path) -> bool:
        return path == self.path or (path.suffix == ".py" and ".venv" not in path.parts)

    async def run(self, stop: asyncio.Event) -> None:
        from watchfiles import awatch

        async for changes in awatch(
            self.root,
            stop_event=stop,
            debounce=DEBOUNCE_MS,
            step=50,
            recursive=True,
            ignore_permission_denied=True,
        ):
            paths = {Path(p) for _, p in changes}  # absolute: the watched root is resolved
            relevant = {p for p in paths if self._relevant(p)}
            if relevant:
                await self.reload({p for p in relevant if p.suffix == ".py"})

    async def reload(self, changed_modules: set[Path] | None = None) -> None:
        try:
            # Handlers are imported in a subprocess: keep the loop free meanwhile.
            manifest = await asyncio.to_thread(load_manifest, self.path)
        except ManifestError as exc:
            log.error("manifest edit rejected, still serving the last good one:\n%s", "\n".join(exc.errors))
            self.on_error(exc.errors)
            return
        except OSError as exc:  # the file is mid-replace or gone: keep serving, say why
            log.error("manifest not readable, still serving the last good one: %s", exc)
            self.on_error([f"{self.path.name}: {exc}"])
            return
        self.on_change(manifest, changed_modules or set())
