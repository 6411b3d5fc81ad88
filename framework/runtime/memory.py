"""`instances.memory_mb` (DESIGN.md section 14): the node samples each limited instance's resident memory.

Every `PERIOD` seconds the guard reads `/proc/PID/statm` of each ready instance whose function has a
limit (one `pread` on a descriptor kept open per instance: no open/close per sample), and kills the ones
over it: their in-flight requests are answered `InstanceCrashed` naming the limit, and the next request
gets a fresh instance. At 0.1 s, a handler allocating 100 MB/s is caught at most ~10 MB past its limit.
Functions without a limit cost nothing: the guard's task starts with the first limited pool. Cost, from
`make bench`: about 0.3 % of one core for 20 idle limited instances (200 samples a second).

Resident memory is the process's whole RSS, pages it still shares with the template it was forked from
included (a fresh instance holds ~20-30 MB of them), as `ps` and the container runtimes count it.
Platforms without `/proc` (macOS) cannot be sampled; the guard then logs that once and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from framework.runtime.handle import InstanceHandle

PERIOD = 0.1
"""Seconds between two samples of the same instance."""
MIB = 1024 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

log = logging.getLogger("faas.runtime")


def resident_bytes(pid: int) -> int | None:
    """Resident memory of process `pid` in bytes, None when it is gone (or there is no /proc)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def over_limit(inst: InstanceHandle, rss: int | None, limit_mb: int) -> str | None:
    """What the requests of `inst` are told when its resident memory `rss` (bytes; None: unknown) is over
    `limit_mb` (InstanceCrashed); None when it is within it."""
    if rss is None or rss <= limit_mb * MIB:
        return None
    return (
        f"instance {inst.id} of function {inst.spec.name} was killed: its resident memory "
        f"({rss / MIB:.0f} MB) went over the function's memory limit (instances.memory_mb: {limit_mb})"
    )


def check_at_start(inst: InstanceHandle) -> str | None:
    """`over_limit` of `inst`, just ready (an import that allocates): checked once at its HELLO, before it
    serves a request, since the guard samples only every PERIOD seconds. None without a limit too."""
    limit_mb = inst.spec.instances.memory_mb
    if limit_mb is None or not inst.pid:
        return None
    return over_limit(inst, resident_bytes(inst.pid), limit_mb)


class MemoryGuard:
    """Kills instances over their function's `memory_mb`; `limited()` lists (instance, limit MiB) pairs."""

    def __init__(self, limited: Callable[[], Iterable[tuple[InstanceHandle, int]]]) -> None:
        self._limited = limited
        self._task: asyncio.Task[None] | None = None
        self._warned = False
        self._fds: dict[int, int] = {}
        """pid -> open descriptor of its /proc/PID/statm."""

    def ensure_started(self) -> None:
        """Start sampling (on the running loop) unless it runs already."""
        if self._task is not None and not self._task.done():
            return
        if not Path("/proc/self/statm").exists():
            if not self._warned:
                self._warned = True
                log.warning("no /proc on this platform: instances.memory_mb is not enforced")
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="faas-memory-guard")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._close(set(self._fds))

    def _close(self, pids: set[int]) -> None:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.close(self._fds.pop(pid))

    def _resident(self, pid: int) -> int | None:
        fd = self._fds.get(pid)
        try:
            if fd is None:
                fd = self._fds[pid] = os.open(f"/proc/{pid}/statm", os.O_RDONLY)
            return int(os.pread(fd, 128, 0).split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):  # the process is gone
            self._close({pid} & set(self._fds))
            return None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(PERIOD)
            self.check()

    def check(self) -> None:
        """One sample of every limited instance; kills those over their limit."""
        seen = set()
        for inst, limit_mb in self._limited():
            if not inst.ready or inst.dead or not inst.pid:
                continue
            seen.add(inst.pid)
            over = over_limit(inst, self._resident(inst.pid), limit_mb)
            if over is not None:
                inst.kill_for("memory", over)
        if len(self._fds) > len(seen):
            self._close(set(self._fds) - seen)
