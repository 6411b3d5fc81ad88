"""One run of a schedule tick or a keep-warm cron, as the scheduler's tasks (`scheduler.py`) start them.

A schedule run makes its own span, the root of a trace of its own, and makes it current for its task, so
the log filter (`observe/logs.py`) tags the run's lines with it. Its invocation is that span's child, and so
is each retry attempt (siblings, as an event's attempts are under the event's span); with OpenTelemetry
export on, the run's span is exported as `schedule <function>` (`faas.trigger: timer`, `faas.cron`,
`faas.time`), whether or not it failed. Its invocation id is `{function}:{index}:{tick epoch seconds}`,
the same on every node. The tick is written to the tick log (`ticklog.py`) as the run starts, not when it
ends: a run that outlives its leader must not be fired again by the next one; its result is written there
too when it ends, for every node's listing (`last_runs.py`). A failing run is recorded so and counted
(`faas_schedule_runs{outcome}`), never raised: the loop must go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import orjson

from framework.context import Trigger
from framework.control.spec import FunctionSpec
from framework.errors import FaasError
from framework.observe import tracing
from framework.retry import HANDOVER, Handover
from framework.sources.schedule.catchup import Ticks
from framework.sources.schedule.entry import CronEntry
from framework.sources.schedule.last_runs import LastRuns
from framework.sources.schedule.ticklog import cut
from framework.types import InvokeResult

if TYPE_CHECKING:
    from framework.observe.metrics import Metrics

log = logging.getLogger("faas.scheduler")


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

    exporter: tracing.Exporter | None
    """Where finished spans go (None: export is off)."""


class Runs:
    """The runs of one scheduler: invoking through `invoker`, counting in `metrics`, writing to `ticks`."""

    def __init__(
        self, invoker: Target, metrics: Metrics | None, ticks: Ticks | None, last_runs: LastRuns
    ) -> None:
        self.invoker = invoker
        self.metrics = metrics
        self.ticks = ticks
        self.last_runs = last_runs
        self._retrying: set[Handover] = set()
        """The handovers of the schedule runs in progress (`stop_retrying`)."""

    def stop_retrying(self) -> None:
        """The node stops: runs waiting between attempts end now with their last error, and runs in an
        attempt make no other (their ticks are written: no leader fires them again)."""
        for handover in self._retrying:
            handover.request()

    def record(self, entry: CronEntry, tick: datetime) -> None:
        """Write `tick` of `entry` to the tick log (none without Kafka): this leader dealt with it."""
        if self.ticks is not None:
            self.ticks.record(entry.key, int(tick.timestamp()))

    def skipped(self, name: str, reason: str, count: int) -> None:
        if self.metrics is not None:
            self.metrics.schedule_skipped.labels(name, reason).inc(count)

    async def schedule(self, entry: CronEntry, tick: datetime) -> None:
        # The spans are made here rather than by the invoker; the run's is current for this run's task.
        self.record(entry, tick)
        run = tracing.start()
        tracing.current.set(run)
        span = run.child()
        spec = entry.spec
        invocation_id = f"{spec.name}:{entry.index}:{int(tick.timestamp())}"
        payload = orjson.dumps(entry.payload)
        started = time.perf_counter()
        error: dict[str, str] | None = None
        handover = Handover(give_up=True)
        HANDOVER.set(handover)  # this task's own context
        self._retrying.add(handover)
        try:
            await self.invoker.call(spec, payload, "schedule", invocation_id=invocation_id, span=span)
        except FaasError as exc:
            error = exc.to_dict()
        except Exception as exc:  # a bug below us must not kill the schedule
            log.exception("schedule %s: unexpected error", invocation_id)
            error = {"type": type(exc).__name__, "message": str(exc)}
        except asyncio.CancelledError:  # the node's stop: the run's span still ends (its children did)
            self._end_span(entry, tick, run, {"type": "Cancelled", "message": "the node stopped"})
            raise
        finally:
            self._retrying.discard(handover)
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        # By key, not on `entry`: a redeploy during the run may have replaced the row (the same schedule).
        kept = error if error is None else {**error, "message": cut(error["message"])}  # as the log keeps it
        last = {"at": tick.isoformat(), "ok": error is None, "duration_ms": duration_ms, "error": kept}
        self.last_runs.note(entry.key, int(tick.timestamp()), last)
        if self.ticks is not None:
            self.ticks.result(entry.key, int(tick.timestamp()), last)
        self._end_span(entry, tick, run, error)
        outcome = "ok" if error is None else error["type"]
        if self.metrics is not None:
            self.metrics.schedule_runs.labels(spec.name, outcome).inc()
        tags = {"function": spec.name, "invocation_id": invocation_id, "trigger": "schedule"}
        if error is None:
            log.info("schedule run ok in %.1f ms", duration_ms, extra=tags)
        else:
            log.warning("schedule run failed in %.1f ms: %s", duration_ms, error, extra=tags)

    def _end_span(
        self, entry: CronEntry, tick: datetime, run: tracing.Span, error: dict[str, str] | None
    ) -> None:
        """Export the run's span `run` (with OpenTelemetry export on), failed with `error` when given."""
        exporter = self.invoker.exporter
        if exporter is None:
            return
        attributes: dict[str, str | bool | int | float] = {
            "faas.trigger": "timer",
            "faas.name": entry.spec.name,
            "faas.cron": entry.cron.expression,
            "faas.time": tick.isoformat(),
        }
        failed = None if error is None else f"{error['type']}: {error['message']}"
        exporter.end(f"schedule {entry.spec.name}", run, "internal", attributes, failed)

    async def drain(self, entry: CronEntry, previous: asyncio.Task[None] | None) -> None:
        """Run `entry.owed` one tick after another, once the run going before is done."""
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        while entry.owed:
            await self.schedule(entry, entry.owed.popleft())

    async def warm(self, entry: CronEntry) -> None:
        try:
            warmed = await self.invoker.warmup(entry.spec)  # the invoker counts faas_warmups
            log.debug("keep-warm %s: %d instance(s) warm", entry.spec.name, warmed)
        except FaasError as exc:
            log.debug("keep-warm %s failed: %s", entry.spec.name, exc)
        except Exception:
            log.exception("keep-warm %s: unexpected error", entry.spec.name)
