"""Scheduled and keep-warm invocations (DESIGN.md sections 1-3 and 7).

One loop sleeps until the earliest fire time of a table of entries (`entry.py`), fires what is due as tasks
(the loop never waits for a run, `runs.py`), and sleeps again. `apply(registry)` only rebuilds the table and
wakes the loop, so a manifest reload is cheap and takes effect at once.

- User schedules fire only on the leader (`leader.py`): once per tick across the nodes of one
  `FAAS_KAFKA_GROUP_ID`. Keep-warm fires on every node, since each node keeps its own instances warm.
- A handover delays ticks rather than losing them: the leader writes each tick it fires to the tick log
  (`ticklog.py`), and a node that takes leadership first fires, late and in order, the ticks due since the
  newest one recorded (`catchup.py`, which also says what can still be lost or doubled).
- Only productive functions fire; the others keep their entries for `status` (with `next_fire` null).
- Each schedule's `last` (in `status`) is the same on every node: the leader writes each run's result to
  the tick log and every node follows it (`last_runs.py`).
- No catch-up storm: a loop that wakes late (suspended machine, stalled loop) fires the latest due tick once
  and counts the ticks it missed (`faas_schedule_skipped{reason="missed"}`).
- A loop that wakes more than `LATE_WAKE` seconds after it meant to (the process was stopped: SIGSTOP, a
  frozen VM) holds user schedules for a heartbeat round and a little more (`_hold_until`): its leadership
  and its table are what they were before the stall, and both may be stale (a successor took over, a
  function was undeployed meanwhile: a frozen leader fired an undeployed function's tick as it woke). By
  then the election has heard from the group and the deployment log been read.
- No overlap: a tick that comes while the schedule's previous run is still going is skipped
  (`faas_schedule_skipped{reason="overlap"}`), except behind a catch-up, where it queues.
- Each run's invocation id is deterministic, `{function}:{index}:{tick epoch seconds}` (arq's habit), so a
  tick fired on two nodes during a leader change shows up as the same id in both logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from framework.control.cron import parse
from framework.sources.schedule.catchup import CATCH_UP_MAX, CATCH_UP_WINDOW, CatchUp, Ticks, read_newest
from framework.sources.schedule.entry import EPOCH, MAX_COUNTED, CronEntry, CronKind
from framework.sources.schedule.last_runs import Follower, LastRuns
from framework.sources.schedule.leader import AlwaysLeader, KafkaElection
from framework.sources.schedule.runs import Runs, Target
from framework.sources.schedule.ticklog import TickLog
from framework.tasks import cancel_and_wait, wait_or_cancel, within

if TYPE_CHECKING:
    from framework.control.registry import Registry
    from framework.observe.metrics import Metrics
    from framework.settings import Settings

log = logging.getLogger("faas.scheduler")

MAX_SLEEP = 30.0
"""Seconds the loop sleeps at most, so a wall-clock jump (NTP, suspend) is noticed within this time."""
LATE_WAKE = 5.0
"""Seconds past its planned wake-up after which the loop takes itself for stalled (module docstring)."""


class Election(Protocol):
    """Who fires the user schedules: `framework.sources.schedule.leader.KafkaElection` or `AlwaysLeader`."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def joined(self) -> bool: ...

    @property
    def term(self) -> int:
        """How many times this node took leadership: a new value is a new term, to catch up first."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Scheduler:
    """Fires the schedules and keep-warm crons of the registry `apply` was last given.

    `bootstrap` None means Kafka is off: this node is the leader, and keeps no tick log. `election`,
    `ticks` and `clock` (epoch seconds) are for tests.
    """

    def __init__(
        self,
        settings: Settings,
        invoker: Target,
        metrics: Metrics | None,
        bootstrap: str | None,
        *,
        election: Election | None = None,
        ticks: Ticks | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._wake = asyncio.Event()
        self.election: Election = election or (
            AlwaysLeader() if bootstrap is None else KafkaElection(settings, bootstrap, wake=self._wake.set)
        )
        self.ticks = ticks or (None if bootstrap is None else TickLog(settings, bootstrap))
        self.last_runs = LastRuns()
        self.follower = None if bootstrap is None else Follower(settings, bootstrap, self.last_runs)
        self.runs = Runs(invoker, metrics, self.ticks, self.last_runs)
        self.clock = clock
        self.entries: dict[tuple[str, CronKind, int], CronEntry] = {}
        self._runs: set[asyncio.Task[None]] = set()
        self._hurry = asyncio.Event()
        """A second signal: runs in flight are cancelled at once, not at the end of the grace."""
        self._loop: asyncio.Task[None] | None = None
        self._term = 0
        """The leadership term whose catch-up is done: user schedules fire while it is the election's."""
        self._catchup: CatchUp | None = None
        self._hold_until = 0.0
        """`time.monotonic()` before which user schedules do not fire: the loop woke from a stall."""

    @property
    def is_leader(self) -> bool:
        return self.election.is_leader

    def not_ready(self) -> list[str]:
        """Readiness reasons (empty when ready): the election group not joined yet."""
        return [] if self.election.joined else ["scheduler has not joined its consumer group yet"]

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    # ---- the table ----

    def apply(
        self,
        registry: Registry,
        start: bool = False,
        since: Callable[[str], float | None] | None = None,
    ) -> None:
        """Rebuild the table from `registry`: new and changed crons start, removed ones stop, runs go on.

        `start`: this is what the node serves at its start (the deployment log's first read), not a deploy,
        so the ticks it missed while it was down are caught up (`CronEntry.armed`), back to when each
        function was last deployed after an undeploy (`since(uuid)`, epoch seconds; None: no bound). The
        node's very first table, before the log is read, serves nothing and is not its start."""
        now = self._now()
        table: dict[tuple[str, CronKind, int], CronEntry] = {}
        for spec in registry.functions:
            crons: list[tuple[CronKind, int, str, str, Any]] = [
                ("schedule", i, s.cron, s.timezone, s.payload) for i, s in enumerate(spec.schedules)
            ]
            if spec.keep_warm:
                crons.append(("warm", 0, spec.keep_warm, "UTC", None))
            for kind, index, expr, tz, payload in crons:
                try:
                    entry = CronEntry(kind, spec, index, parse(expr, tz), payload)
                except ValueError as exc:  # the manifest check should have caught it; never stop the loop
                    log.error("function %s: %s: not scheduled", spec.name, exc)
                    continue
                old = self.entries.get((spec.name, kind, index))
                if old is not None:
                    entry.task = old.task  # a changed cron must not start a second run next to the old one
                    if old.same_as == entry.same_as:
                        entry.next_at, entry._ticks = old.next_at, old._ticks
                        entry.armed = old.armed
                        if spec.productive:  # its late ticks go on
                            entry.owed, entry.drain, entry.late_until = old.owed, old.drain, old.late_until
                if not spec.productive:
                    entry.arm(None)
                elif entry.next_at is None:
                    entry.arm(now)
                    entry.armed = now
                    if start:  # its downtime is caught up, not a time the function was not served
                        served = None if since is None else since(spec.uuid)
                        bound = EPOCH if served is None else datetime.fromtimestamp(served, UTC)
                        entry.armed = min(now, bound)
                table[(spec.name, kind, index)] = entry
        kept = {id(entry.owed) for entry in table.values()}
        for old in self.entries.values():
            if id(old.owed) not in kept:  # removed, changed or undeployed: its late ticks are dropped
                old.owed.clear()
        self.entries = table
        self._wake.set()

    def status(self, name: str) -> list[dict[str, Any]]:
        """The schedules of function `name`, in manifest order (keep-warm is not listed).

        Each: `cron`, `timezone`, `payload`, `next_fire` (ISO 8601 in the schedule's timezone; null unless the
        function is productive) and `last` (`at`, `ok`, `duration_ms`, `error` of its newest run, whichever
        node ran it: `last_runs.py`; null until one did).
        """
        return [
            e.status(self.last_runs.get(e.key))
            for (fn, kind, _), e in self.entries.items()
            if fn == name and kind == "schedule"
        ]

    # ---- firing ----

    def run_due(self, now: float) -> float:
        """Fire every entry due at `now` (epoch seconds); returns when the next one is due."""
        at = datetime.fromtimestamp(now, UTC)
        leading = self._leading(at)
        wake = now + MAX_SLEEP
        for entry in list(self.entries.values()):
            if entry.next_at is None:
                continue
            if entry.next_at <= at:
                tick, due = entry.advance(at)
                if entry.kind == "warm":
                    self._fire(entry, tick, 0)
                elif leading:  # followers advance too, so a new leader starts on time
                    self._fire(entry, tick, due - 1)
            if not leading:
                entry.owed.clear()  # a former term's late ticks are the next leader's
            if entry.next_at is not None:
                wake = min(wake, entry.next_at.timestamp())
        if self._catchup is not None and self._catchup.read.done():
            self._catch_up(self._catchup)
        return wake

    def _leading(self, at: datetime) -> bool:
        """Whether user schedules fire now: on the leader, once its term's catch-up read is done (a new
        term starts that read here)."""
        if not self.election.is_leader or time.monotonic() < self._hold_until:
            self._drop_catchup()
            return False
        term = self.election.term
        if term == self._term:
            return True
        if self.ticks is None:  # nothing recorded, nothing to catch up (a node without Kafka)
            self._term = term
            return True
        if self._catchup is None or self._catchup.term != term:
            self._drop_catchup()
            read = asyncio.create_task(read_newest(self.ticks, at.timestamp() - CATCH_UP_WINDOW))
            read.add_done_callback(lambda _: self._wake.set())
            self._catchup = CatchUp(term, at, read)
        return False

    def _drop_catchup(self) -> None:
        if self._catchup is not None:
            self._catchup.read.cancel()
            self._catchup = None

    def _catch_up(self, catchup: CatchUp) -> None:
        """Queue the ticks owed since the last recorded ones (`catchup.py`); this term fires from now on."""
        self._catchup, self._term = None, catchup.term
        late = 0
        for entry, ticks, missed in catchup.plan(self.entries.values()):
            if missed:
                log.warning(
                    "schedule %s: %d ticks since the last recorded, %d skipped", entry, missed + 1, missed
                )
                self.runs.skipped(entry.spec.name, "missed", missed)
            late += len(ticks)
            entry.owed.extend(ticks)
            if ticks:
                entry.late_until = ticks[-1]
            if not entry.draining:
                entry.drain = self._start(entry, self.runs.drain(entry, entry.task))
        if late:
            log.info("catch-up: firing %d tick(s) that fell due while no node led", late)

    def _fire(self, entry: CronEntry, tick: datetime, missed: int) -> None:
        name = entry.spec.name
        if missed:
            more = "at least " if missed >= MAX_COUNTED - 1 else ""
            log.warning("schedule %s: woke late, %s%d missed ticks skipped", entry, more, missed)
            self.runs.skipped(name, "missed", missed)
        if entry.running:
            if entry.kind == "schedule" and entry.draining and self._behind_late(entry):
                entry.owed.append(tick)  # behind late ticks still waiting: in order, not an overlap
            elif entry.kind == "schedule":
                log.warning("schedule %s: previous run still going, tick %s skipped", entry, tick.isoformat())
                self.runs.skipped(name, "overlap", 1)
                self.runs.record(entry, tick)  # dealt with: the next leader must not fire it either
            return
        run = self.runs.schedule(entry, tick) if entry.kind == "schedule" else self.runs.warm(entry)
        self._start(entry, run)

    @staticmethod
    def _behind_late(entry: CronEntry) -> bool:
        """Whether a tick falling due now queues behind the catch-up: a late tick still waits (`owed` is in
        order, so its first says) and the queue has room. Compared as instants (UTC): ticks of one zone
        compare by wall clock, and in a fall-back's repeated hour that puts the second pass first."""
        late, owed = entry.late_until, entry.owed
        if not owed or late is None or len(owed) >= CATCH_UP_MAX:
            return False
        return owed[0].astimezone(UTC) <= late.astimezone(UTC)

    def _start(self, entry: CronEntry, run: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        name = f"schedule:{entry.spec.name}:{entry.kind}:{entry.index}"
        entry.task = task = asyncio.create_task(run, name=name)
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)
        return task

    # ---- lifecycle ----

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            wake = self.run_due(self.clock())
            sleep = min(max(wake - self.clock(), 0.0), MAX_SLEEP)
            planned = time.monotonic() + sleep
            with contextlib.suppress(TimeoutError):
                await within(self._wake.wait(), sleep)
            self._check_stall(time.monotonic() - planned)

    def _check_stall(self, late: float) -> None:
        """The loop woke `late` seconds after it meant to: past LATE_WAKE, hold user schedules until the
        election had a heartbeat round (a third of the session timeout) and 2 s more."""
        if late <= LATE_WAKE or isinstance(self.election, AlwaysLeader):
            return
        hold = self.settings.kafka_session_timeout_ms / 3000 + 2.0
        self._hold_until = time.monotonic() + hold
        log.warning(
            "the scheduler woke %.1f s late (the process was stopped or starved): schedules hold for %.1f s, "
            "until this node's leadership and its table of functions are known to be current",
            late,
            hold,
        )

    async def start(self) -> None:
        """Join the election (in the background) and start the tick log and the firing loop."""
        if self.ticks is not None:
            self.ticks.start()
        if self.follower is not None:
            self.follower.start()
        await self.election.start()
        self._loop = asyncio.create_task(self._run(), name="scheduler")

    async def stop(self) -> None:
        """Stop firing, write the last ticks, leave the election, let runs in flight finish (at most
        `FAAS_SHUTDOWN_GRACE` s)."""
        await cancel_and_wait([self._loop])
        self._loop = None
        self._drop_catchup()
        for entry in self.entries.values():
            entry.owed.clear()  # not fired, not recorded: the next leader fires them
        if self.ticks is not None:  # before leaving the group: the next leader reads this one's last ticks
            await self.ticks.stop()
        await self.election.stop()
        if self.follower is not None:
            await self.follower.stop()
        self.runs.stop_retrying()  # a backoff is no work in flight: the grace is not waited out for one
        runs = list(self._runs)
        if runs:
            await wait_or_cancel(runs, self.settings.shutdown_grace, self._hurry)

    def hurry(self) -> None:
        """A second signal: cancel the runs in flight now (each is recorded `Cancelled`), during `stop` or
        before it."""
        self._hurry.set()
