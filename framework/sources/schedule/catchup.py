"""Catching up after a leadership change: the ticks that fell due while no node led fire late, once each.

Leadership moves with a gap (`leader.py`): about 4 s after the leader stops cleanly (the embedded broker's
rebalance), about 0.6 s when a node joins and the old leader learns its new assignment first, and the
session timeout plus about 3 s after a SIGKILL. Followers consume ticks without firing them (so a new leader
starts on time), so without this every tick of the gap would be lost.

The leader writes each tick it fires to the tick log (`ticklog.py`). When this node takes leadership (a new
`term` of the election), the scheduler fires no user schedule until it has read the log's last
`CATCH_UP_WINDOW` seconds; then, per schedule of a productive function (`CatchUp.plan`):
- `after` is the newest recorded tick, or, with no record in the window (nothing is known about the gap),
  the moment this node saw it was leader; and never before a deploy or cron change this node saw while
  running (`entry.CronEntry.armed`: ticks from before it are not the schedule's; a node's first table has
  no such bound, so a restarted single node catches up on its own downtime);
- the owed ticks are those strictly after `after` and strictly before the schedule's `next_at`: the ticks
  this node consumed as a follower or while reading. The normal loop fires from `next_at` on, so no tick
  fires twice here. More than `CATCH_UP_MAX`: only the latest fires and the rest count as missed, as after
  a late wake;
- they run one after another, oldest first, each with its own id (`name:index:tick`); a tick that falls due
  meanwhile queues behind them (`entry.py`).

What can still happen (ticks at least once, rather than lost):
- A tick fired on both nodes, the same id in both logs: the old leader keeps firing through its revoke hold
  (`leader.KafkaElection.revoke`) until its own new assignment arrives. When the new leader's arrives first,
  a tick the old one fires in between is fired again if its record lands after the new leader's read (a
  few milliseconds), or if it falls due after that read. A tick whose record was never written (the leader
  killed in the milliseconds between firing and writing, or the broker unreachable) fires again too.
- Ticks lost as before: those of a schedule with no record in the window (one sparser than the window, or a
  log that cannot be read within `READ_TIMEOUT`), and beyond `CATCH_UP_MAX`.
- Caught-up ticks run late by the gap (their id names the tick); nothing fires during the read (well under
  a second on a healthy broker), and what falls due then is owed, not lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from framework.control.cron import Cron
from framework.sources.schedule.entry import CronEntry
from framework.tasks import cancelled_here, within

log = logging.getLogger("faas.scheduler")

CATCH_UP_WINDOW = 600.0
"""Seconds of the tick log a new leader reads: a schedule whose newest record is older gets no catch-up.
Ten minutes covers schedules up to every few minutes and reads about 600 records per per-second one."""
CATCH_UP_MAX = 20
"""Late ticks fired per schedule at most: a per-second schedule's gap after a SIGKILL on the embedded broker
(session timeout 6 s + about 4 s) twice over. Beyond it only the latest fires."""
READ_TIMEOUT = 10.0
"""Seconds a new leader waits for the tick log; after that it fires only the ticks due since it took over."""


class Ticks(Protocol):
    """The tick log the scheduler writes and reads (`ticklog.TickLog` fits)."""

    def record(self, key: str, tick: int) -> None:
        """Note that schedule `key` dealt with `tick` (epoch seconds); never awaits, never fails."""
        ...

    def result(self, key: str, tick: int, last: dict[str, Any]) -> None:
        """Note how the run of `tick` of schedule `key` went; never awaits, never fails."""
        ...

    async def newest(self, since: float) -> dict[str, int]:
        """The newest recorded tick per key among records stamped `since` (epoch seconds) or later."""
        ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...


def owed(
    cron: Cron, after: datetime, before: datetime, cap: int = CATCH_UP_MAX
) -> tuple[list[datetime], int]:
    """The ticks of `cron` strictly between `after` and `before`, oldest first, and how many of them were left
    out: more than `cap`, only the latest is returned. Ticks over CATCH_UP_WINDOW before `before` are not
    looked at (a bogus record's tick 0 must not walk a per-second cron from 1970).

    Compared as instants (UTC): two times of one zone compare by their wall clocks, `fold` ignored, so in
    the hour a fall-back repeats, a tick of the second pass looked no later than one of the first, and
    arithmetic on them is wall-clock arithmetic too: a catch-up there lost its ticks."""
    end = before.astimezone(UTC)
    ticks: list[datetime] = []
    for tick in cron.ticks(max(after.astimezone(UTC), end - timedelta(seconds=CATCH_UP_WINDOW))):
        if tick.astimezone(UTC) >= end:
            break
        ticks.append(tick)
    return (ticks[-1:], len(ticks) - 1) if len(ticks) > cap else (ticks, 0)


async def read_newest(ticks: Ticks, since: float) -> dict[str, int]:
    """`ticks.newest(since)` within READ_TIMEOUT; an empty answer, with a warning, when that fails."""
    try:
        return await within(ticks.newest(since), READ_TIMEOUT)
    except asyncio.CancelledError as exc:
        if cancelled_here():  # this read was cancelled: not a failure to read
            raise
        failure: BaseException = exc  # a Kafka client's own task cancelled under it
    except Exception as exc:
        failure = exc
    log.warning("catch-up: cannot read the tick log (%r): only ticks due from now on fire", failure)
    return {}


class CatchUp:
    """One leadership term's catch-up: the tick log read started when the term was seen (`taken`)."""

    def __init__(self, term: int, taken: datetime, read: asyncio.Task[dict[str, int]]) -> None:
        self.term = term
        self.taken = taken
        self.read = read

    def plan(self, entries: Iterable[CronEntry]) -> Iterator[tuple[CronEntry, list[datetime], int]]:
        """Per user schedule with ticks owed: the entry, its owed ticks and how many more were missed.
        Call once `read` is done, after the loop consumed every tick due (`next_at` is the boundary)."""
        newest = {} if self.read.cancelled() else self.read.result()
        for entry in entries:
            if entry.kind != "schedule" or entry.next_at is None or entry.armed is None:
                continue
            # The newer of the two keys: a node of the version before writes by index (a rolling upgrade).
            found = [t for t in (newest.get(entry.key), newest.get(entry.index_key)) if t is not None]
            last = max(found) if found else None
            after = self.taken if last is None else datetime.fromtimestamp(last, UTC)
            ticks, missed = owed(entry.cron, max(after, entry.armed), entry.next_at)
            if ticks:
                yield entry, ticks, missed
