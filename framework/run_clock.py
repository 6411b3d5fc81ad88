"""The time a process could run: its loop's clock less the time the process stood still.

A process that is stopped (SIGSTOP, a frozen cgroup such as `docker pause`, a paused VM) finds every timer
due at once when it runs again. Time limits counted on the loop's clock alone then fail work that had most
of its time left: an instance answered `Timeout` for a call that had run 0.4 s of its 1 s when the freeze
came, and a node killed as stuck an instance whose answer lay unread in its socket, so a node of a consumer
group frozen past its session timeout sent such events to the dead-letter topic though the node that took
its partitions answered them.

`RUN_CLOCK` counts the time this process stood still: a gap of over `GAP` seconds between two of its samples
in which the process used under `BUSY` of the gap in CPU time (all its threads). While the process runs,
something samples it every `EVERY` seconds or so (in an instance, its watchdog thread while it holds an
invocation or a thread runs an abandoned call; in a node, a loop timer, `keep`), so a long gap means nothing
of the process ran:

- a loop blocked in a computation uses a core through the gap, so it is not counted (a blocked loop's
  `Timeout` stands), nor is an instance's loop blocked in a sleep, since its watchdog thread samples beside
  it; a node's loop blocked in a call that uses no CPU for over `GAP` is counted (the node blocked there has
  bigger trouble; its limits are only more lenient by that much);
- a call that holds the GIL while it waits without CPU (a C extension that blocks without releasing it) is
  counted in an instance: its watchdog thread cannot run either, and nothing tells that gap from a stop.
  Such a call that returns within the node's grace after the limit is answered, not `Timeout`; one that
  blocks longer is still killed by the node (its own clock ran);
- a process runnable but not scheduled for over `GAP` (an overloaded machine) is counted too: it could not
  run either;
- a counted stop is its gap less `EVERY` (the run time a gap may hold before or after the stop), so a
  process that only runs in short bursts between stops (a freezer or CPU quota with a long period, a host
  taking the VM's CPUs away) still sees its limits come: each gap moves its clock at least `EVERY`. A gap
  counted whole let a stuck instance of such a node live for good.

Limits are kept in this clock's time (`now`: the loop's time less what was counted), timers that enforce one
are armed at `at(limit)` in the loop's time, and each of them samples first and re-arms if its limit moved
(`RunClock.call_at` for a timer with nothing else to decide):
a stop is counted by whichever runs first after it, the sampler or the timer. What was counted while no limit
was held moves nothing: a limit set later is `now() + seconds` and its timer fires that many seconds later.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # `framework.Context` reads this module: importing the package stays light (no asyncio)
    import asyncio
    from collections.abc import Callable

GAP = 0.5
"""Seconds between two samples past which the gap may be a stop (samples come every `EVERY` while the
process runs)."""
BUSY = 0.25
"""Share of a gap the process's CPU time must stay under for the gap to count as stood still (a loop
blocked in a computation uses about 1.0 of it)."""
EVERY = 0.1
"""Seconds between the node's samples (`keep`; an instance's watchdog samples every 0.05 s), and the part of
a counted gap that is not counted."""


class RunClock:
    """Seconds this process stood still, summed (`stood`), from samples of the monotonic clock and the
    process's CPU time. Thread-safe: an instance samples from its watchdog thread and its loop."""

    def __init__(self) -> None:
        self.stood = 0.0
        """Seconds counted as stood still since the process started."""
        self._lock = threading.Lock()
        self._wall = time.monotonic()
        self._cpu = time.process_time()

    def sample(self) -> float:
        """Count the gap since the last sample if the process stood still through it; returns the seconds
        counted now (0.0 for none)."""
        with self._lock:
            wall, cpu = time.monotonic(), time.process_time()
            gap = wall - self._wall
            counted = gap - EVERY if gap > GAP and cpu - self._cpu < gap * BUSY else 0.0
            self._wall, self._cpu = wall, cpu
            self.stood += counted
            return counted

    def restart(self) -> None:
        """Start a new gap now, counting nothing: for a sampler that slept (an idle instance's watchdog),
        whose gap says nothing."""
        with self._lock:
            self._wall, self._cpu = time.monotonic(), time.process_time()

    def now(self, loop: asyncio.AbstractEventLoop) -> float:
        """The loop's time less the seconds counted: the clock limits are kept in."""
        return loop.time() - self.stood

    def at(self, limit: float) -> float:
        """The loop time at which `limit` (this clock's time) comes, unless the process stands still again."""
        return limit + self.stood

    def passed(self, loop: asyncio.AbstractEventLoop, limit: float) -> bool:
        """Whether `limit` has passed, sampling first (for a timer that enforces it: a stop just ended is
        counted before it acts). Timers may fire a hair early: 1 ms is allowed."""
        self.sample()
        return self.now(loop) + 0.001 >= limit

    def call_at(
        self, loop: asyncio.AbstractEventLoop, limit: float, callback: Callable[..., object], *args: object
    ) -> asyncio.TimerHandle:
        """`callback(*args)` on `loop` once `limit` (this clock's time) has passed: a timer armed at
        `at(limit)`, armed again as often as the process stood still meanwhile (the limit moved). The handle
        is the first timer's: cancelling it after a re-arm cancels nothing, so a callback that may be
        re-armed checks that it still has work."""

        def due() -> None:
            if self.passed(loop, limit):
                callback(*args)
            else:
                loop.call_at(self.at(limit), due)

        return loop.call_at(self.at(limit), due)


RUN_CLOCK = RunClock()
"""This process's clock (a forked instance restarts its own: `RunClock.restart`)."""


class Keeper:
    """Samples a clock every `EVERY` seconds on one loop at a time (the node's: nothing else samples there).
    `keep(loop)` is called by whatever keeps a limit on a loop (each instance handle as it starts, each HTTP
    connection, the body reader), so the clock runs wherever limits are held: a clock nobody sampled would
    count every idle stretch as stood still, and a timer that re-arms for a stop would re-arm for good."""

    def __init__(self, clock: RunClock) -> None:
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None

    def keep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sample on `loop` from now on (nothing if already; an earlier loop's timer ends with it)."""
        if self._loop is loop and not loop.is_closed():
            return
        self._loop = loop
        self._clock.restart()
        loop.call_later(EVERY, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:  # another loop took over (tests run a loop each)
            return
        self._clock.sample()
        loop.call_later(EVERY, self._tick, loop)


keep = Keeper(RUN_CLOCK).keep
"""Sample `RUN_CLOCK` every `EVERY` seconds on this loop (see `Keeper`)."""
