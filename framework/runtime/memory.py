"""`instances.memory_mb` (DESIGN.md section 14): the node samples each limited instance's memory.

Every `PERIOD` seconds the guard reads `/proc/PID/statm` of each live instance whose function has a
limit, also while it imports its handler (a module that allocates at import is stopped there too), with
one `pread` on a descriptor kept open per instance (no open/close per sample), and kills the ones over
it: their in-flight requests are answered `InstanceCrashed` naming the limit, and the next request gets a
fresh instance. At 0.1 s, a handler allocating 100 MB/s is caught at most ~10 MB past its limit.
Functions without a limit cost nothing: the guard's task starts with the first limited pool. Cost, from
`make bench`: about 0.3 % of one core for 20 idle limited instances (200 samples a second).

What is counted: the instance's whole RSS, pages it still shares with the template it was forked from
included (a fresh instance holds ~20-30 MB of them), as `ps` and the container runtimes count it; plus the
processes its handlers started (`subprocess`, `multiprocessing`, and what those start), as a container's
memory limit counts them. They are found every `FAMILY_PERIOD` seconds by walking `/proc/PID/task/*/children`
(about 20 us an instance) and sampled with the instance. Each counts its own anonymous memory (what it
allocated; file pages, reclaimable, are not counted), less the pages it still shares with the instance:
- every sample takes a cheap upper bound, its anonymous resident memory (`statm`: resident - shared), which
  a process forked without `exec` over-states by the pages it still shares copy-on-write with the instance;
- only when the bound puts the family over the limit is the smaller of that and each process's unique set
  size taken (`smaps_rollup`: Private_Clean + Private_Dirty, about 0.6 ms for a 60 MB process), and that
  decides. It is read again every FAMILY_PERIOD at most; in between, a process's figure grows with its
  anonymous memory. A process whose `smaps_rollup` cannot be read (a non-dumpable or setuid program, a
  kernel before 4.14) is counted by its bound.
A process whose parent exited before it (a double fork) leaves the tree and is not counted; one started in
a session of its own (`start_new_session=True`) is counted, though the kill leaves it alone (`family.py`).
Platforms without `/proc` (macOS) cannot be sampled; the guard then logs that once and stops. A kernel
without `/proc/PID/task/TID/children` (built without CONFIG_PROC_CHILDREN) counts the instances alone, and
the guard says so once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from framework.observe import otel
from framework.runtime.family import descendants, read_small
from framework.runtime.handle import InstanceHandle

PERIOD = 0.1
"""Seconds between two samples of the same instance."""
FAMILY_PERIOD = 0.5
"""Seconds between two walks of an instance's process tree (a new child is counted within this long)."""
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


def anonymous_bytes(pid: int) -> int:
    """Anonymous resident memory of process `pid` (statm's resident less shared), 0 when it is gone."""
    try:
        fields = read_small(f"/proc/{pid}/statm").split()
        return max(0, int(fields[1]) - int(fields[2])) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def unique_bytes(pid: int) -> int | None:
    """Unique set size of process `pid` (memory only it maps: what its exit frees); None when it cannot be
    read (gone, not ours to read, or a kernel without `smaps_rollup`)."""
    try:
        text = read_small(f"/proc/{pid}/smaps_rollup")
    except OSError:
        return None
    total = 0
    for line in text.splitlines():
        if line.startswith((b"Private_Clean:", b"Private_Dirty:")):
            with contextlib.suppress(ValueError, IndexError):
                total += int(line.split()[1]) * 1024
    return total


def own_bytes(pid: int, anonymous: int) -> int:
    """What process `pid` counts toward its instance's limit: its anonymous resident memory (`anonymous`,
    read by the caller), or its unique set size when that is smaller (pages shared with the instance are
    the instance's)."""
    unique = unique_bytes(pid)
    return anonymous if unique is None else min(anonymous, unique)


def _megabytes(size: int) -> str:
    """`size` bytes in MB to a tenth, rounded up: a size just over a limit never reads as the limit."""
    return f"{math.ceil(size * 10 / MIB) / 10:.1f} MB"


def over_limit(
    inst: InstanceHandle, rss: int | None, limit_mb: int, started: tuple[int, int] = (0, 0)
) -> str | None:
    """What the requests of `inst` are told when its resident memory `rss` (bytes; None: unknown) plus
    `started` (bytes the processes it started hold, how many they are) is over `limit_mb`
    (InstanceCrashed); None when it is within it."""
    held, count = started
    if rss is None or rss + held <= limit_mb * MIB:
        return None
    total = _megabytes(rss + held)
    if count:
        plural = "es" if count > 1 else ""
        total += f", {_megabytes(held)} of it in {count} process{plural} it started"
    message = (
        f"instance {inst.id} of function {inst.spec.name} was killed: its resident memory "
        f"({total}) went over the function's memory limit (instances.memory_mb: {limit_mb})"
    )
    if inst.ready:
        return message
    # Over before serving anything (importing, or at its HELLO): no call can ever run under this limit.
    message += " before it served a call (the interpreter, the platform and its imports hold that much"
    if otel.enabled():
        message += "; OpenTelemetry export, on for this node, about 15 MB of it"
    return message + "): raise the limit"


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
        self._families: dict[int, tuple[float, list[int]]] = {}
        """Instance pid -> (monotonic time of the walk, the processes it had started then)."""
        self._owned: dict[int, dict[int, tuple[int, int]]] = {}
        """Instance pid -> {process: (`own_bytes`, its anonymous bytes then)}, read since the last walk."""
        self._walks = True
        """False on a kernel that cannot list a process's children: instances are counted alone."""

    def ensure_started(self) -> None:
        """Start sampling (on the running loop) unless it runs already."""
        if self._task is not None and not self._task.done():
            return
        if not Path("/proc/self/statm").exists():
            if not self._warned:
                self._warned = True
                log.warning("no /proc on this platform: instances.memory_mb is not enforced")
            return
        if not Path(f"/proc/self/task/{threading.get_native_id()}/children").exists():
            self._walks = False
            log.warning(
                "this kernel lists no process's children (/proc/PID/task/TID/children): the processes "
                "instances start are not counted toward instances.memory_mb"
            )
        # In a context of its own: started by the first limited instance's call, it would log every kill
        # on the node in that call's trace.
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="faas-memory-guard", context=contextvars.Context()
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._close(set(self._fds))

    def _close(self, pids: set[int]) -> None:
        for pid in pids:
            self._families.pop(pid, None)
            self._owned.pop(pid, None)
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

    def _family(self, pid: int, now: float) -> list[int]:
        """The processes instance `pid` started, walked again every FAMILY_PERIOD seconds."""
        if not self._walks:
            return []
        walked = self._families.get(pid)
        if walked is None or now - walked[0] >= FAMILY_PERIOD:
            walked = self._families[pid] = (now, descendants(pid))
            self._owned.pop(pid, None)  # read again, once needed
        return walked[1]

    def _held(self, pid: int, family: list[int], bounds: list[int]) -> tuple[int, int]:
        """(bytes, processes holding some) the family of instance `pid` counts: each process's `own_bytes`,
        read once per walk, grown since by its anonymous memory (`bounds`, read now)."""
        owned = self._owned.setdefault(pid, {})
        total = count = 0
        for child, anonymous in zip(family, bounds, strict=True):
            known = owned.get(child)
            if known is None:
                known = owned[child] = (own_bytes(child, anonymous), anonymous)
            held = known[0] + max(0, anonymous - known[1])
            if held:
                total, count = total + held, count + 1
        return total, count

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(PERIOD)
            self.check()

    def check(self) -> None:
        """One sample of every limited instance; kills those over their limit."""
        seen = set()
        now = time.monotonic()
        for inst, limit_mb in self._limited():
            if inst.dead or not inst.known_pid():
                continue
            seen.add(inst.pid)
            rss = self._resident(inst.pid)
            family = self._family(inst.pid, now) if rss is not None else []
            started = (0, 0)
            if family:
                bounds = [anonymous_bytes(p) for p in family]
                if over_limit(inst, rss, limit_mb, (sum(bounds), len(family))) is not None:
                    started = self._held(inst.pid, family, bounds)  # decides; exited ones hold 0
            over = over_limit(inst, rss, limit_mb, started)
            if over is not None:
                inst.kill_for("memory", over)
        if len(self._fds) > len(seen):
            self._close(set(self._fds) - seen)
