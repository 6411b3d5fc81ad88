"""Keeping `FAAS_CACHE_DIR` in step with the deployment log while a node runs (DESIGN.md section 12).

Two loops, started once the log is read, the first of which also marks the code in use:
- Missing code: every `CODE_CHECK_EVERY` seconds the code of each served revision must be unpacked. Code
  whose folder went (the cache deleted under a running node: `git clean -fdX`, a temp cleaner) is unpacked
  again from the zip beside it, the working copy, or the folder a re-pointed manifest left, else from the
  log's code record, read from the log's start by a reader of its own. Each code is tried at most every
  `FETCH_EVERY` seconds (a disk that refuses it, full or read-only, is not tried, and logged, every check).
  Until then no new instance of that revision can start; running ones go on.
- Pruning: every `PRUNE_EVERY` seconds (or half of FAAS_CACHE_IDLE, if shorter) the cache loses the code
  the log no longer holds (a code record is tombstoned with the last kept revision that used it) that no
  instance of this node runs and that went unused for FAAS_CACHE_IDLE seconds (`CodeCache.prune`). Watch
  mode makes a revision per save: without this the folder grew by an unpacked package per save.
- Marking: every `TOUCH_EVERY` seconds (or half of FAAS_CACHE_IDLE, if shorter) the code this node keeps is
  marked used, so nodes sharing the folder but reading other logs keep each other's code while they run,
  as long as each one's FAAS_CACHE_IDLE is over a minute.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Collection
from pathlib import Path

from framework.control.code_cache import CodeCache
from framework.control.deployment_log import DeploymentLog

log = logging.getLogger("faas.deployments")

CODE_CHECK_EVERY = 2.0
"""Seconds between checks that the code of every served revision is unpacked."""
FETCH_EVERY = 30.0
"""Seconds between attempts to unpack each missing code again (from this node's copies, or else the log)."""
PRUNE_EVERY = 600.0
"""Seconds between sweeps of the code cache at most (the first one that long after the log is read)."""
TOUCH_EVERY = 30.0
"""Seconds between markings of the code this node keeps as used, at most."""


class CodeUpkeep:
    """The code cache's two loops (module docstring); `store` unpacks code (False: it could not)."""

    def __init__(
        self,
        deployment_log: DeploymentLog,
        cache: CodeCache,
        store: Callable[[str, bytes], bool],
        elsewhere: Callable[[str], bytes | None],
        idle: float,
    ) -> None:
        self.log = deployment_log
        self.cache = cache
        self._store = store
        self._elsewhere = elsewhere
        """The zip of code `sha` from outside the cache (the working copy, an old cache), or None."""
        self.idle = idle
        """Seconds forgotten code stays in the cache after its last use (FAAS_CACHE_IDLE)."""
        self.in_use: Callable[[], Collection[Path]] = tuple
        """The code folders this node's instances run from (retiring ones too): never pruned."""
        self._tasks: list[asyncio.Task[None]] = []
        self._touched_at = -math.inf
        """When the code this node keeps was last marked used (loop time)."""
        self._tried: dict[str, float] = {}
        """When the code of each sha256 found missing was last unpacked again (loop time): a disk that
        refuses it (full, read-only) is tried every FETCH_EVERY seconds, not every check."""

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._check_forever(), name="check-code"),
                asyncio.create_task(self._prune_forever(), name="prune-code"),
            ]

    def tasks(self) -> list[asyncio.Task[None]]:
        return self._tasks

    # ---- missing code ----

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(CODE_CHECK_EVERY)
            try:
                missing = self.check()
                if missing:  # each at most every FETCH_EVERY seconds (`check`)
                    await self._fetch(missing)
                now = asyncio.get_running_loop().time()
                if now - self._touched_at >= min(TOUCH_EVERY, self.idle / 2):
                    self._touched_at = now
                    await asyncio.to_thread(self.cache.touch, self.kept())
            except Exception as exc:  # the next check tries again
                log.error("code cache %s: the check failed: %r", self.cache.base, exc)

    def check(self) -> list[str]:
        """Unpack again, from what this node holds, the code of served revisions whose folder went;
        returns the sha256s found nowhere here (only the log has them)."""
        state = self.log.state
        shas = {r.code_sha256 for r in state.live().values() if r.code_sha256}
        gone = sorted(s for s in shas if not self.cache.has(s) and s not in state.unstored)
        now = asyncio.get_running_loop().time()
        self._tried = {sha: at for sha, at in self._tried.items() if sha in gone}
        missing = []
        for sha in gone:
            if now - self._tried.get(sha, -math.inf) < FETCH_EVERY:
                continue
            self._tried[sha] = now
            data = self.cache.zip_bytes(sha) or self._elsewhere(sha)
            if data is None:
                missing.append(sha)  # only the log has it
            elif self._store(sha, data):  # a disk that refuses it is said by `store`
                log.warning(
                    "the code %s of a served revision was gone from %s: unpacked again",
                    sha[:12],
                    self.cache.base,
                )
        return missing

    async def _fetch(self, shas: list[str]) -> None:
        log.warning(
            "the code of served revisions (%s) is gone from %s: reading it from the deployment log",
            ", ".join(sha[:12] for sha in shas),
            self.cache.base,
        )
        found = await self.log.code_records(shas)
        for sha in shas:
            data = found.get(sha)
            if data is None:
                log.error("the code %s of a served revision is not on the deployment log either", sha[:12])
            elif self._store(sha, data):
                log.warning("the code %s of a served revision was unpacked again from the log", sha[:12])

    # ---- pruning ----

    async def _prune_forever(self) -> None:
        while True:
            await asyncio.sleep(max(min(PRUNE_EVERY, self.idle / 2), 1.0))
            try:
                await self.prune(self.idle)
            except Exception as exc:  # the next sweep tries again
                log.error("code cache %s: the sweep failed: %r", self.cache.base, exc)

    def kept(self) -> set[str]:
        """The code this node keeps: what its log holds (and kept revisions use), and what its instances
        run from."""
        state = self.log.state
        keep = {*state.codes, *state.unstored}
        keep.update(r.code_sha256 for u in list(state.revisions) for r in state.kept(u) if r.code_sha256)
        keep.update(path.name for path in self.in_use() if path.parent == self.cache.base)
        return keep

    async def prune(self, idle: float) -> list[str]:
        """Remove the cached code nothing needs any more and untouched for `idle` seconds (module
        docstring); returns the sha256s removed."""
        removed = await asyncio.to_thread(self.cache.prune, self.kept(), idle)
        if removed:
            log.info(
                "code cache %s: removed the code of %d forgotten revision(s) (%s)",
                self.cache.base,
                len(removed),
                ", ".join(sha[:12] for sha in removed),
            )
        return removed
