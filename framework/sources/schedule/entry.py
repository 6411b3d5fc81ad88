"""One cron of one function and its firing state: the row of the scheduler's table (`scheduler.py`).

An entry walks its cron's ticks in order (`arm`, `advance`); `next_at` is the next tick not consumed yet, on
the leader and on followers alike (followers consume ticks without firing them, so a new leader starts on
time). `owed` holds ticks a new leader fires late, oldest first, one run after another (`catchup.py`);
while a task works through them (`draining`) a tick that falls due queues behind them instead of being
skipped as an overlap. A reload hands `task` to the entry's successor, and `drain` and `owed` too unless
the cron, payload or state changed (then the late ticks are dropped). How its runs went is kept by the
schedule's key, not here (`last_runs.py`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from framework.control.cron import Cron
from framework.control.spec import FunctionSpec

MAX_COUNTED = 10_000
"""Missed ticks counted one by one after a late wake-up; beyond that the count is capped (and says so)."""

EPOCH = datetime.fromtimestamp(0, UTC)
"""`armed` of the entries of a node's first table: no bound (see `CronEntry.armed`)."""

CronKind = Literal["schedule", "warm"]


@dataclass(eq=False)
class CronEntry:
    """One schedule (or the keep-warm cron) of one function, and its firing state."""

    kind: CronKind
    spec: FunctionSpec
    index: int
    cron: Cron
    payload: Any = None
    next_at: datetime | None = None
    """The next tick while the function is productive, else None."""
    task: asyncio.Task[None] | None = None
    owed: deque[datetime] = field(default_factory=deque)
    """Ticks waiting to run late, oldest first (a new leader's catch-up)."""
    drain: asyncio.Task[None] | None = None
    """The task that runs the `owed` ticks one after another (`runs.Runs.drain`), once started."""
    late_until: datetime | None = None
    """The newest tick a catch-up owed. A tick that falls due during the drain joins `owed` only while one
    of those still waits: after them it is an overlap like any other, so a handler slower than its period
    does not fall further behind with every run."""
    armed: datetime | None = None
    """When this node started walking the ticks (None while stopped): a new leader owes no tick before it, so
    a deploy or a cron change does not bring back ticks of the time before. `EPOCH` for the table a node
    starts with, which may be older than the node: a restarted leader catches up on its own downtime."""
    _ticks: Iterator[datetime] | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return f"{self.spec.name}[{self.index}] {self.cron.expression!r} ({self.cron.timezone})"

    @functools.cached_property
    def key(self) -> str:
        """`<function uuid>:s<12 hex digits>`: the schedule's key in the tick log, the same on every node.
        Named by what the schedule is (its cron, time zone and payload), not by its place in the manifest:
        a deploy that removed the schedule before it would otherwise give it the ticks of the one that held
        its index, and a node starting after that deploy fired again the ticks it had already run."""
        what = orjson.dumps([self.cron.expression, self.cron.timezone, self.payload])
        return f"{self.spec.uuid}:s{hashlib.sha256(what).hexdigest()[:12]}"

    @property
    def index_key(self) -> str:
        """`<function uuid>:<schedule index>`: the key ticks were written under before `key` (read as a
        fallback, so a leader change right after an upgrade still catches up)."""
        return f"{self.spec.uuid}:{self.index}"

    @property
    def same_as(self) -> tuple[Any, ...]:
        return self.kind, self.cron, orjson.dumps(self.payload)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    @property
    def draining(self) -> bool:
        """True while the run going is the one working through `owed`."""
        return self.running and self.task is self.drain

    def arm(self, now: datetime | None) -> None:
        """Start ticking after `now`, or stop (`None`)."""
        self._ticks = None if now is None else self.cron.ticks(now)
        self.armed = now
        self.next_at = None if self._ticks is None else next(self._ticks)

    def advance(self, now: datetime) -> tuple[datetime, int]:
        """Consume every tick up to `now`: returns the latest of them and how many there were."""
        assert self.next_at is not None and self._ticks is not None
        latest, count = self.next_at, 0
        while self.next_at <= now:
            latest, count = self.next_at, count + 1
            if count >= MAX_COUNTED:  # a very long suspend of a per-second cron: jump instead of iterating
                self.arm(now)
                break
            self.next_at = next(self._ticks)
        return latest, count

    def status(self, last: dict[str, Any] | None) -> dict[str, Any]:
        """The schedule's row in a listing; `last`: its newest run's result (`last_runs.LastRuns`)."""
        return {
            "cron": self.cron.expression,
            "timezone": self.cron.timezone,
            "payload": self.payload,
            "next_fire": None if self.next_at is None else self.next_at.isoformat(),
            "last": last,
        }
