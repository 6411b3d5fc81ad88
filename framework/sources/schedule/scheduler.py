"""Scheduled and keep-warm invocations (DESIGN.md sections 1-3 and 7).

One loop sleeps until the earliest fire time of a table of entries, fires what is due as tasks (the loop
never waits for a run), and sleeps again. `apply(registry)` only rebuilds the table and wakes the loop, so a
manifest reload is cheap and takes effect at once.

- User schedules fire only on the leader (`leader`): once per tick across the nodes of
  one `FAAS_KAFKA_GROUP_ID`. Keep-warm fires on every node, since each node keeps its own instances warm.
- Only productive functions fire; the others keep their entries for `status` (with `next_fire` null).
- No catch-up storm: a loop that wakes late (suspended machine, stalled loop) fires the latest due tick once
  and counts the ticks it missed (`faas_schedule_skipped{reason="missed"}`).
- No overlap: a tick that comes while the schedule's previous run is still going is skipped
  (`faas_schedule_skipped{reason="overlap"}`).
- Each run's invocation id is deterministic, `{function}:{index}:{tick epoch seconds}` (arq's habit), so a
  tick fired on two nodes during a leader change shows up as the same id in both logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson

from framework.context import Trigger
from framework.control.cron import Cron, parse
from framework.control.manifest import FunctionSpec
from framework.errors import FaasError
from framework.observe import tracing
from framework.sources.schedule.leader import AlwaysLeader, KafkaElection
from framework.tasks import cancel_and_wait, wait_or_cancel, within
from framework.types import InvokeResult

if TYPE_CHECKING:
    from framework.control.registry import Registry
    from framework.observe.metrics import Metrics
    from framework.settings import Settings

log = logging.getLogger("faas.scheduler")

MAX_SLEEP = 30.0
"""Seconds the loop sleeps at most, so a wall-clock jump (NTP, suspend) is noticed within this time."""
MAX_COUNTED = 10_000
"""Missed ticks counted one by one after a late wake-up; beyond that the count is capped (and says so)."""

CronKind = Literal["schedule", "warm"]


class Target(Protocol):
    """What the scheduler needs from the invoker (`framework.invoker.Invoker` fits)."""

    async def call(
        self,
        spec: FunctionSpec,
        payload: bytes,
        trigger: Trigger,
        event: str | None = None,
        invocation_id: str | None = None,
        *,
        span: tracing.Span | None = None,
    ) -> InvokeResult:
        """Invoke `spec`; `span` is the invocation's own span (a new trace when None)."""
        ...

    async def warmup(self, spec: FunctionSpec) -> int: ...


class Election(Protocol):
    """Who fires the user schedules: `framework.sources.schedule.leader.KafkaElection` or `AlwaysLeader`."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def joined(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


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
    last: dict[str, Any] | None = None
    _ticks: Iterator[datetime] | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return f"{self.spec.name}[{self.index}] {self.cron.expression!r} ({self.cron.timezone})"

    @property
    def same_as(self) -> tuple[Any, ...]:
        return self.kind, self.cron, orjson.dumps(self.payload)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def arm(self, now: datetime | None) -> None:
        """Start ticking after `now`, or stop (`None`)."""
        self._ticks = None if now is None else self.cron.ticks(now)
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

    def status(self) -> dict[str, Any]:
        return {
            "cron": self.cron.expression,
            "timezone": self.cron.timezone,
            "payload": self.payload,
            "next_fire": None if self.next_at is None else self.next_at.isoformat(),
            "last": self.last,
        }


class Scheduler:
    """Fires the schedules and keep-warm crons of the registry `apply` was last given.

    `bootstrap` None means Kafka is off: this node is the leader. `clock` (epoch seconds) is for tests.
    """

    def __init__(
        self,
        settings: Settings,
        invoker: Target,
        metrics: Metrics | None,
        bootstrap: str | None,
        *,
        election: Election | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.invoker = invoker
        self.metrics = metrics
        self.election: Election = election or (
            AlwaysLeader() if bootstrap is None else KafkaElection(settings, bootstrap)
        )
        self.clock = clock
        self.entries: dict[tuple[str, CronKind, int], CronEntry] = {}
        self._runs: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        return self.election.is_leader

    def not_ready(self) -> list[str]:
        """Readiness reasons (empty when ready): the election group not joined yet."""
        return [] if self.election.joined else ["scheduler has not joined its consumer group yet"]

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    # ---- the table ----

    def apply(self, registry: Registry) -> None:
        """Rebuild the table from `registry`: new and changed crons start, removed ones stop, runs go on."""
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
                        entry.last, entry.next_at, entry._ticks = old.last, old.next_at, old._ticks
                if not spec.productive:
                    entry.arm(None)
                elif entry.next_at is None:
                    entry.arm(now)
                table[(spec.name, kind, index)] = entry
        self.entries = table
        self._wake.set()

    def status(self, name: str) -> list[dict[str, Any]]:
        """The schedules of function `name`, in manifest order (keep-warm is not listed).

        Each: `cron`, `timezone`, `payload`, `next_fire` (ISO 8601 in the schedule's timezone; null unless the
        function is productive) and `last` (`at`, `ok`, `duration_ms`, `error`; null until this node ran it:
        only the leader runs user schedules).
        """
        return [e.status() for (fn, kind, _), e in self.entries.items() if fn == name and kind == "schedule"]

    # ---- firing ----

    def run_due(self, now: float) -> float:
        """Fire every entry due at `now` (epoch seconds); returns when the next one is due."""
        at = datetime.fromtimestamp(now, UTC)
        wake = now + MAX_SLEEP
        for entry in list(self.entries.values()):
            if entry.next_at is None:
                continue
            if entry.next_at <= at:
                tick, due = entry.advance(at)
                if entry.kind == "warm":
                    self._fire(entry, tick, 0)
                elif self.election.is_leader:  # followers advance too, so a new leader starts on time
                    self._fire(entry, tick, due - 1)
            if entry.next_at is not None:
                wake = min(wake, entry.next_at.timestamp())
        return wake

    def _fire(self, entry: CronEntry, tick: datetime, missed: int) -> None:
        name = entry.spec.name
        if missed:
            more = "at least " if missed >= MAX_COUNTED - 1 else ""
            log.warning("schedule %s: woke late, %s%d missed ticks skipped", entry, more, missed)
            self._skipped(name, "missed", missed)
        if entry.running:
            if entry.kind == "schedule":
                log.warning("schedule %s: previous run still going, tick %s skipped", entry, tick.isoformat())
                self._skipped(name, "overlap", 1)
            return
        run = self._schedule(entry, tick) if entry.kind == "schedule" else self._warm(entry)
        entry.task = task = asyncio.create_task(run, name=f"schedule:{name}:{entry.kind}:{entry.index}")
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    def _skipped(self, name: str, reason: str, count: int) -> None:
        if self.metrics is not None:
            self.metrics.schedule_skipped.labels(name, reason).inc(count)

    async def _schedule(self, entry: CronEntry, tick: datetime) -> None:
        # The run's span is made here rather than by the invoker and made current for this run's task (see
        # `_fire`): the log filter (`observe/logs.py`) then tags the run's own lines with it too.
        span = tracing.start()
        tracing.current.set(span)
        spec = entry.spec
        invocation_id = f"{spec.name}:{entry.index}:{int(tick.timestamp())}"
        payload = orjson.dumps(entry.payload)
        started = time.perf_counter()
        error: dict[str, str] | None = None
        try:
            await self.invoker.call(spec, payload, "schedule", invocation_id=invocation_id, span=span)
        except FaasError as exc:
            error = exc.to_dict()
        except Exception as exc:  # a bug below us must not kill the schedule
            log.exception("schedule %s: unexpected error", invocation_id)
            error = {"type": type(exc).__name__, "message": str(exc)}
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        entry.last = {"at": tick.isoformat(), "ok": error is None, "duration_ms": duration_ms, "error": error}
        outcome = "ok" if error is None else error["type"]
        if self.metrics is not None:
            self.metrics.schedule_runs.labels(spec.name, outcome).inc()
        tags = {"function": spec.name, "invocation_id": invocation_id, "trigger": "schedule"}
        if error is None:
            log.info("schedule run ok in %.1f ms", duration_ms, extra=tags)
        else:
            log.warning("schedule run failed in %.1f ms: %s", duration_ms, error, extra=tags)

    async def _warm(self, entry: CronEntry) -> None:
        try:
            warmed = await self.invoker.warmup(entry.spec)  # the invoker counts faas_warmups
            log.debug("keep-warm %s: %d instance(s) warm", entry.spec.name, warmed)
        except FaasError as exc:
            log.debug("keep-warm %s failed: %s", entry.spec.name, exc)
        except Exception:
            log.exception("keep-warm %s: unexpected error", entry.spec.name)

    # ---- lifecycle ----

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            wake = self.run_due(self.clock())
            with contextlib.suppress(TimeoutError):
                await within(self._wake.wait(), min(max(wake - self.clock(), 0.0), MAX_SLEEP))

    async def start(self) -> None:
        """Join the election (in the background) and start the firing loop."""
        await self.election.start()
        self._loop = asyncio.create_task(self._run(), name="scheduler")

    async def stop(self) -> None:
        """Stop firing, leave the election, let runs in flight finish (at most `FAAS_SHUTDOWN_GRACE` s)."""
        await cancel_and_wait([self._loop])
        self._loop = None
        await self.election.stop()
        runs = list(self._runs)
        if runs:
            await wait_or_cancel(runs, self.settings.shutdown_grace)
