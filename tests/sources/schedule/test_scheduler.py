"""The scheduler: unit tests on a fake clock and invoker, the Kafka election on the real broker, and
end-to-end runs of `faas run` nodes (DESIGN.md sections 2, 3 and 7)."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from framework.context import Trigger
from framework.control.registry import Registry
from framework.control.spec import FunctionSpec, Manifest, RetrySpec, ScheduleSpec
from framework.errors import FunctionError, Timeout
from framework.kafka.embedded import EmbeddedBroker
from framework.observe import tracing
from framework.observe.logs import TraceFilter
from framework.observe.metrics import Metrics
from framework.retry import with_retries
from framework.settings import Settings
from framework.sources.schedule.leader import KafkaElection
from framework.sources.schedule.scheduler import Scheduler
from framework.sources.schedule.ticklog import MESSAGE_CHARS
from framework.types import Invocation, InvokeResult
from tests.support import Node, wait_for, write_project

StartNode = Callable[..., Node]

T0 = 1_700_000_000.5
"""A fake "now", half a second before a whole second (the next per-second tick is T0 + 0.5)."""
WARM = "dddddddd-0000-4000-8000-00000000000f"


class FakeInvoker:
    """Records calls; `gate`, when set, holds every run until it is set (to test overlap); `fail` fails
    them; with `retried`, each call is retried under its spec's policy, as the invoker does (each attempt
    recorded)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes, str, str | None]] = []
        self.spans: list[tracing.Span | None] = []
        self.warmups: list[str] = []
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None
        self.retried = False
        self.exporter: tracing.Exporter | None = None

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
        first = Invocation(invocation_id or "", trigger, event, payload)
        if not self.retried:
            return await self._attempt(spec, first, span)

        async def attempt(current: FunctionSpec, inv: Invocation) -> InvokeResult:
            return await self._attempt(current, inv, span)

        return await with_retries(spec, first, True, attempt)

    async def _attempt(self, spec: FunctionSpec, inv: Invocation, span: tracing.Span | None) -> InvokeResult:
        invocation_id = inv.invocation_id or None
        self.calls.append((spec.name, inv.payload, inv.trigger, invocation_id))
        self.spans.append(span)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return InvokeResult(invocation_id or "", b'"ok"', 1.0, False, "i-1")

    async def warmup(self, spec: FunctionSpec) -> int:
        self.warmups.append(spec.name)
        return 1


class FakeElection:
    def __init__(self, leader: bool = True) -> None:
        self.is_leader = leader
        self.joined = True
        self.term = 1

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def spec(
    name: str = "job",
    state: str = "productive",
    cron: str = "* * * * * */1",
    payload: Any = None,
    keep_warm: str | None = None,
) -> FunctionSpec:
    # model_construct: the manifest rejects bad crons, and one test checks the scheduler survives them anyway
    schedules = (ScheduleSpec.model_construct(cron=cron, timezone="UTC", payload=payload),) if cron else ()
    return FunctionSpec.model_validate(
        {
            "name": name,
            "uuid": f"00000000-0000-4000-8000-{abs(hash(name)) % 10**12:012d}",
            "handler": "functions.x:handle",
            "state": state,
            "schedules": schedules,
            "keep_warm": keep_warm,
        }
    )


def registry(*specs: FunctionSpec) -> Registry:
    return Registry(Manifest(path=Path("functions.yaml"), functions=specs))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def make(
    *specs: FunctionSpec, leader: bool = True
) -> tuple[Scheduler, FakeInvoker, Clock, Metrics, FakeElection]:
    invoker, clock, metrics, election = FakeInvoker(), Clock(), Metrics(), FakeElection(leader)
    sched = Scheduler(Settings(shutdown_grace=1), invoker, metrics, None, election=election, clock=clock)
    sched.apply(registry(*specs))
    return sched, invoker, clock, metrics, election


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def until(condition: Callable[[], object], within: float = 5.0, message: str = "condition") -> None:
    """Yield to the loop until `condition()` holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {within} s")
        await asyncio.sleep(0.005)


async def settle(sched: Scheduler) -> None:
    """Wait for the runs the scheduler started (they are tasks; nothing runs until we yield)."""
    await asyncio.gather(*[e.task for e in sched.entries.values() if e.task is not None])


# ---- unit: firing on a fake clock ----


async def test_fires_due_tick_with_payload_trigger_and_deterministic_id() -> None:
    """1. A per-second schedule, clock half a second before a tick. 2. Run at the tick.
    Result: one call with the JSON payload, trigger `schedule`, id `name:index:epoch`; status and metrics."""
    sched, inv, clock, metrics, _ = make(spec(payload={"job": "nightly"}))
    assert sched.run_due(clock.now) == T0 + 0.5, "sleeps until the next whole second"
    assert inv.calls == []
    clock.now = T0 + 0.5
    sched.run_due(clock.now)
    await settle(sched)
    assert inv.calls == [("job", orjson.dumps({"job": "nightly"}), "schedule", f"job:0:{int(T0 + 0.5)}")]
    [status] = sched.status("job")
    assert status["cron"] == "* * * * * */1" and status["timezone"] == "UTC"
    assert status["payload"] == {"job": "nightly"}
    assert status["next_fire"] == "2023-11-14T22:13:22+00:00"
    assert status["last"]["ok"] is True and status["last"]["error"] is None
    assert status["last"]["at"] == "2023-11-14T22:13:21+00:00" and status["last"]["duration_ms"] >= 0
    assert sample(metrics, "faas_schedule_runs_total", function="job", outcome="ok") == 1


async def test_failure_is_recorded_and_counted() -> None:
    sched, inv, clock, metrics, _ = make(spec())
    inv.fail = Timeout("ran past 1 s")
    clock.now = T0 + 0.5
    sched.run_due(clock.now)
    await settle(sched)
    last = sched.status("job")[0]["last"]
    assert last["ok"] is False and last["error"] == {"type": "Timeout", "message": "ran past 1 s"}
    assert sample(metrics, "faas_schedule_runs_total", function="job", outcome="Timeout") == 1


async def test_a_long_error_is_listed_as_every_node_lists_it() -> None:
    """A run fails with a message of 10,000 characters. Result: its `last` holds the message cut to the
    4,096 characters the tick log keeps, on this node too (it listed the whole message until the result
    came back from the log, cut)."""
    sched, inv, clock, _, _ = make(spec())
    inv.fail = FunctionError("x" * 10_000)
    clock.now = T0 + 0.5
    sched.run_due(clock.now)
    await settle(sched)
    message = sched.status("job")[0]["last"]["error"]["message"]
    assert len(message) == MESSAGE_CHARS and message.endswith("...")


async def test_run_log_lines_carry_the_trace_of_their_invocation(caplog: pytest.LogCaptureFixture) -> None:
    """1. A per-second schedule; the node's trace filter on the captured log lines. 2. Run a tick that
    succeeds, then one that fails.
    Result: each run hands the invoker a span of a new trace, the child of the run's span, and its
    "schedule run ok" / "schedule run failed" line carries the run's span (trace_id and span_id); nothing
    is left current after the runs."""
    caplog.handler.addFilter(TraceFilter())
    caplog.set_level("INFO", "faas.scheduler")
    sched, inv, clock, _, _ = make(spec())
    for fail in (None, Timeout("ran past 1 s")):
        inv.fail = fail
        clock.now += 1
        sched.run_due(clock.now)
        await settle(sched)
    lines = [r for r in caplog.records if r.name == "faas.scheduler"]
    assert [r.getMessage().split(" in ")[0] for r in lines] == ["schedule run ok", "schedule run failed"]
    for line, span, (_, _, _, invocation_id) in zip(lines, inv.spans, inv.calls, strict=True):
        assert span is not None and span.parent_id is not None, "the invocation is a child of the run"
        assert getattr(line, "invocation_id", None) == invocation_id
        assert (getattr(line, "trace_id", None), getattr(line, "span_id", None)) == (
            span.trace_id,
            span.parent_id,
        )
    assert inv.spans[0] is not None and inv.spans[1] is not None
    assert inv.spans[0].trace_id != inv.spans[1].trace_id


class Spans:
    """An exporter that keeps what it is given: (name, span, error)."""

    def __init__(self) -> None:
        self.ended: list[tuple[str, tracing.Span, str | None]] = []

    def end(
        self, name: str, span: tracing.Span, kind: str, attributes: object, error: str | None = None
    ) -> None:
        self.ended.append((name, span, error))


async def test_a_run_cancelled_by_the_stop_still_ends_its_span() -> None:
    """1. With export on, a run whose invocation does not end; its task is cancelled (a stop's cut).
    Result: the run's span is exported, failed as Cancelled, and it is the parent of the span the invoker
    was given (whose own span the invoker ends): the trace has its root (it was never exported)."""
    sched, inv, clock, _, _ = make(spec())
    spans = inv.exporter = Spans()
    inv.gate = asyncio.Event()
    clock.now = T0 + 0.5
    sched.run_due(clock.now)
    await until(lambda: len(inv.calls) == 1)
    [task] = [e.task for e in sched.entries.values() if e.task is not None]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    [(name, run, error)] = spans.ended
    assert name == "schedule job" and error == "Cancelled: the node stopped", spans.ended
    assert inv.spans[0] is not None and inv.spans[0].parent_id == run.span_id


async def test_a_loop_that_woke_from_a_stall_holds_user_schedules_for_a_heartbeat_round(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. The loop wakes 25 s after it meant to (its process was stopped, as a frozen leader is).
    2. A tick falls due at once, and another after the hold.
    Result: the first is not fired (the leadership and the table it would fire from predate the stall: a
    frozen leader fired an undeployed function's tick as it woke), with a warning saying why and for how
    long; keep-warm is not held; once the hold is over, the next tick fires."""
    sched, inv, clock, _, _ = make(spec(), spec("warm", cron="", keep_warm="* * * * * */1"))
    sched._check_stall(25.0)
    assert "the scheduler woke 25.0 s late" in caplog.text and "hold for 5.3 s" in caplog.text
    clock.now = T0 + 0.5
    sched.run_due(clock.now)
    await settle(sched)
    assert [c[0] for c in inv.calls] == [], "no user schedule fires during the hold"
    assert inv.warmups == ["warm"]
    sched._hold_until = 0.0  # the hold is over
    clock.now = T0 + 1.5
    sched.run_due(clock.now)
    await settle(sched)
    assert [c[0] for c in inv.calls] == ["job"]


async def test_a_late_wake_of_a_node_without_kafka_holds_nothing() -> None:
    """Without Kafka the node is the only one (`AlwaysLeader`): nobody else fires, nothing to confirm."""
    invoker, clock = FakeInvoker(), Clock()
    sched = Scheduler(Settings(), invoker, Metrics(), None, clock=clock)
    sched.apply(registry(spec()))
    sched._check_stall(25.0)
    clock.now = T0 + 0.5
    sched.run_due(clock.now)
    await settle(sched)
    assert [c[0] for c in invoker.calls] == ["job"]


async def test_overlap_skips_the_tick() -> None:
    """1. A run that does not finish. 2. The next tick comes. Result: no second run, one `overlap` skip."""
    sched, inv, clock, metrics, _ = make(spec())
    inv.gate = asyncio.Event()
    clock.now = T0 + 0.5
    sched.run_due(clock.now)
    await until(lambda: len(inv.calls) == 1)
    clock.now = T0 + 1.5
    sched.run_due(clock.now)
    await asyncio.sleep(0)
    assert len(inv.calls) == 1
    assert sample(metrics, "faas_schedule_skipped_total", function="job", reason="overlap") == 1
    inv.gate.set()
    await settle(sched)
    clock.now = T0 + 2.5
    sched.run_due(clock.now)
    await settle(sched)
    assert len(inv.calls) == 2, "fires again once the run finished"


async def test_missed_ticks_are_not_replayed() -> None:
    """1. The loop wakes 5.5 s late (six ticks due). Result: one run, for the latest tick; five `missed`."""
    sched, inv, clock, metrics, _ = make(spec())
    clock.now = T0 + 5.75
    sched.run_due(clock.now)
    await settle(sched)
    assert [c[3] for c in inv.calls] == [f"job:0:{int(T0) + 6}"]
    assert sample(metrics, "faas_schedule_skipped_total", function="job", reason="missed") == 5
    assert sched.status("job")[0]["next_fire"] == "2023-11-14T22:13:27+00:00"


async def test_very_long_suspend_does_not_iterate_forever() -> None:
    sched, inv, clock, metrics, _ = make(spec())
    clock.now = T0 + 3 * 86_400  # three days of a per-second cron
    started = time.monotonic()
    sched.run_due(clock.now)
    await settle(sched)
    assert time.monotonic() - started < 5 and len(inv.calls) == 1
    assert sample(metrics, "faas_schedule_skipped_total", function="job", reason="missed") >= 9_999
    nxt = sched.entries[("job", "schedule", 0)].next_at
    assert nxt is not None and clock.now < nxt.timestamp() <= clock.now + 1


async def test_followers_skip_user_schedules_but_keep_warm() -> None:
    """A node that is not the leader: user schedules advance silently, keep-warm fires (every node)."""
    sched, inv, clock, metrics, election = make(spec(keep_warm="* * * * * */1"), leader=False)
    clock.now = T0 + 0.5
    sched.run_due(clock.now)
    await settle(sched)
    assert inv.calls == [] and inv.warmups == ["job"]
    assert sample(metrics, "faas_schedule_skipped_total", function="job", reason="missed") == 0
    election.is_leader = True  # leadership moves here: the very next tick fires
    clock.now = T0 + 1.5
    sched.run_due(clock.now)
    await settle(sched)
    assert [c[3] for c in inv.calls] == [f"job:0:{int(T0) + 2}"] and inv.warmups == ["job", "job"]


async def test_keep_warm_never_calls_handle_and_is_not_listed() -> None:
    sched, inv, clock, _, _ = make(spec(cron="", keep_warm="* * * * * */1"))
    for i in range(3):
        clock.now = T0 + 0.5 + i
        sched.run_due(clock.now)
        await settle(sched)
    assert inv.calls == [] and inv.warmups == ["job"] * 3
    assert sched.status("job") == []


async def test_apply_starts_stops_and_changes_schedules() -> None:
    """1. Productive. 2. Undeployed: nothing fires, next_fire null, schedule still listed. 3. Productive again
    with a new cron: it takes effect. 4. Removed from the manifest: no status, nothing fires."""
    sched, inv, clock, _, _ = make(spec())
    assert sched.status("job")[0]["next_fire"] is not None
    sched.apply(registry(spec(state="undeployed")))
    [status] = sched.status("job")
    assert status["next_fire"] is None and status["cron"] == "* * * * * */1"
    clock.now = T0 + 10
    sched.run_due(clock.now)
    await settle(sched)
    assert inv.calls == []
    sched.apply(registry(spec(cron="* * * * * */5", payload=[1])))
    assert sched.status("job")[0]["next_fire"] == "2023-11-14T22:13:35+00:00"
    clock.now = T0 + 11  # 22:13:31.5: not a multiple of 5 s
    sched.run_due(clock.now)
    clock.now = T0 + 14.5
    sched.run_due(clock.now)
    await settle(sched)
    assert [(c[1], c[3]) for c in inv.calls] == [(b"[1]", f"job:0:{int(T0) + 15}")]
    sched.apply(registry())
    assert sched.status("job") == [] and sched.entries == {}
    clock.now = T0 + 20
    sched.run_due(clock.now)
    await asyncio.sleep(0)
    assert len(inv.calls) == 1


async def test_reload_keeps_last_result_and_running_task() -> None:
    """A reload that changes nothing keeps `last`; one that changes the cron still sees the run going."""
    sched, inv, clock, metrics, _ = make(spec())
    clock.now = T0 + 0.5
    sched.run_due(clock.now)
    await settle(sched)
    sched.apply(registry(spec()))
    assert sched.status("job")[0]["last"] is not None
    inv.gate = asyncio.Event()
    clock.now = T0 + 1.5
    sched.run_due(clock.now)
    await until(lambda: len(inv.calls) == 2)
    sched.apply(registry(spec(cron="* * * * * */2")))
    clock.now = T0 + 3.5
    sched.run_due(clock.now)
    await asyncio.sleep(0)
    assert len(inv.calls) == 2
    assert sample(metrics, "faas_schedule_skipped_total", function="job", reason="overlap") == 1
    inv.gate.set()
    await settle(sched)


async def test_a_run_going_through_reloads_writes_its_result_to_the_row_listed() -> None:
    """1. A run starts and is held. 2. Two reloads with the same cron (a redeploy changing the function's
    code or env). 3. The run ends. Result: the schedule's `last` in `status` is that run's (it was written to
    the row the first reload had replaced, and stayed null until the next run, a day for a daily job)."""
    sched, inv, clock, _, _ = make(spec())
    inv.gate = asyncio.Event()
    clock.now = T0 + 0.5
    sched.run_due(clock.now)
    await until(lambda: len(inv.calls) == 1)
    sched.apply(registry(spec()))
    sched.apply(registry(spec()))
    assert sched.status("job")[0]["last"] is None
    inv.gate.set()
    await until(lambda: sched.status("job")[0]["last"] is not None)
    last = sched.status("job")[0]["last"]
    assert last["ok"] is True and last["at"].startswith("2023-11-14T22:13:21")


async def test_timezone_and_several_schedules_in_status() -> None:
    s = FunctionSpec.model_validate(
        {
            "name": "multi",
            "uuid": "00000000-0000-4000-8000-000000000009",
            "handler": "functions.x:handle",
            "state": "draft",
            "schedules": [
                {"cron": "0 9 * * *", "timezone": "Europe/Berlin", "payload": {"a": 1}},
                {"cron": "*/5 * * * *"},
            ],
        }
    )
    sched, _, _, _, _ = make(s)
    assert [(x["cron"], x["timezone"], x["next_fire"]) for x in sched.status("multi")] == [
        ("0 9 * * *", "Europe/Berlin", None),
        ("*/5 * * * *", "UTC", None),
    ]
    sched.apply(registry(s.model_copy(update={"state": "productive"})))
    first = sched.status("multi")[0]["next_fire"]
    assert first == "2023-11-15T09:00:00+01:00"


async def test_bad_cron_in_registry_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    sched, _, _, _, _ = make(spec(cron="61 * * * *"), spec(name="ok"))
    assert sched.status("job") == [] and len(sched.status("ok")) == 1
    assert "bad cron" in caplog.text


# ---- the real loop, on the real clock ----


async def test_loop_fires_every_second_and_stop_drains_runs() -> None:
    """1. Start with a per-second schedule. 2. Wait for three runs. Result: one a second, no more (timing
    from the real event loop). 3. Stop while a run is held: stop waits for it, bounded by the grace."""
    invoker = FakeInvoker()
    sched = Scheduler(Settings(shutdown_grace=0.5), invoker, Metrics(), None)
    sched.apply(registry(spec()))
    await sched.start()
    try:
        await until(lambda: len(invoker.calls) >= 1, 3, "first run")
        first = time.monotonic()
        await until(lambda: len(invoker.calls) >= 4, 5, "three more runs")
        # Three ticks a second apart, with the slack of a loaded 2-core machine on both ends (the first
        # run may be seen late); the consecutive ids below prove none was doubled or lost.
        assert 2.0 < time.monotonic() - first < 5.0
        ids = [int(str(c[3]).rsplit(":", 1)[1]) for c in invoker.calls[:4]]
        assert ids == list(range(ids[0], ids[0] + 4)), "consecutive ticks, none doubled or lost"
        invoker.gate = asyncio.Event()
        n = len(invoker.calls)
        await until(lambda: len(invoker.calls) > n, 3, "a held run")
    finally:
        started = time.monotonic()
        await sched.stop()
    assert time.monotonic() - started < 2, "stop is bounded by the grace"
    n = len(invoker.calls)
    await asyncio.sleep(1.2)  # the only sleep: proving that nothing fires after stop needs time to pass
    assert len(invoker.calls) == n


async def test_a_second_signal_cancels_runs_in_flight_at_once() -> None:
    """1. A per-second schedule whose run is held; FAAS_SHUTDOWN_GRACE=30. 2. Stop, then `hurry` (the
    node's second signal) while stop waits for the run. Result: the run is cancelled and stop returns at
    once, not after the grace."""
    invoker = FakeInvoker()
    invoker.gate = asyncio.Event()
    sched = Scheduler(Settings(shutdown_grace=30), invoker, Metrics(), None)
    sched.apply(registry(spec()))
    await sched.start()
    await until(lambda: len(invoker.calls) >= 1, 3, "a held run")
    stopping = asyncio.ensure_future(sched.stop())
    await until(lambda: sched._loop is None, 3, "stop waiting for the run")
    assert not stopping.done()
    started = time.monotonic()
    sched.hurry()
    await asyncio.wait_for(stopping, 3)
    assert time.monotonic() - started < 1


async def test_stopping_ends_a_run_waiting_between_attempts_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """1. A per-second schedule that always fails, retried after 20 s (3 attempts); FAAS_SHUTDOWN_GRACE=30.
    2. Once its run waits for attempt 2, stop. Result: stop returns at once, not after the backoff nor the
    grace; attempt 2 is never made; the run is recorded and counted as failed with FunctionError, and the
    log says the attempt was not made because the node stops (it used to retry for the whole grace, then
    drop the run without a word)."""
    invoker = FakeInvoker()
    invoker.fail, invoker.retried = FunctionError("boom"), True
    sched = Scheduler(Settings(shutdown_grace=30), invoker, metrics := Metrics(), None)
    retried = spec().model_copy(update={"retry": RetrySpec(attempts=2, backoff=20, on=("FunctionError",))})
    sched.apply(registry(retried))
    await sched.start()
    await until(lambda: any(h.waiting for h in sched.runs._retrying), 5, "a run waiting for attempt 2")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        await asyncio.wait_for(sched.stop(), 5)
    assert time.monotonic() - started < 1
    ids = [call[3] for call in invoker.calls]
    assert ids and all(i is not None and not i.endswith(":2") for i in ids), ids  # attempt 1s only
    [row] = sched.status("job")
    assert row["last"]["ok"] is False and row["last"]["error"]["type"] == "FunctionError"
    assert sample(metrics, "faas_schedule_runs_total", function="job", outcome="FunctionError") >= 1
    assert "job: attempt 2 not made: the node is stopping" in caplog.text


async def test_apply_wakes_the_loop() -> None:
    """A function deployed while the loop sleeps (up to 30 s) fires on its first tick, not after the nap."""
    invoker = FakeInvoker()
    sched = Scheduler(Settings(), invoker, Metrics(), None)
    sched.apply(registry(spec(cron="0 0 1 1 *")))
    await sched.start()
    try:
        sched.apply(registry(spec(name="fresh")))
        await until(lambda: any(c[0] == "fresh" for c in invoker.calls), 3, "the new schedule fired")
    finally:
        await sched.stop()


# ---- the election on the real broker ----


async def test_kafka_election_one_leader_then_handover(broker: EmbeddedBroker) -> None:
    """1. Two electors in one group. Result: exactly one leader. 2. Stop it (it leaves the group).
    Result: the other leads within 15 s."""
    tag = str(time.monotonic_ns())
    settings = Settings(kafka_group_id=f"t-elect-{tag}", scheduler_topic=f"t.sched.{tag}")
    a, b = KafkaElection(settings, broker.bootstrap), KafkaElection(settings, broker.bootstrap)
    await a.start()
    await b.start()
    try:
        await until(lambda: a.joined and b.joined and a.is_leader != b.is_leader, 30, "one leader of two")
        leader, other = (a, b) if a.is_leader else (b, a)
        await leader.stop()
        assert not leader.is_leader
        await until(lambda: other.is_leader, 15, "handover")
    finally:
        await a.stop()
        await b.stop()


# ---- end to end: `faas run` nodes on the real broker ----

MODULES = {
    "sch": """
import json, os, time

def _write(name, record):
    with open(os.path.join(os.environ["OUT"], name), "a") as f:
        f.write(json.dumps(record) + "\\n")

def tick(payload, ctx):
    _write("ticks", {"trigger": ctx.trigger, "payload": payload, "id": ctx.invocation_id, "t": time.time(),
                     "pid": os.getpid(), "fn": ctx.function})
    return "ok"

def handle(payload, ctx):
    _write("handled", {"trigger": ctx.trigger})
    return "handled"

def warmup(ctx):
    _write("warmed", {"trigger": ctx.trigger, "pid": os.getpid()})

def traced(payload, ctx):
    _write("traced", {"fn": ctx.function, "id": ctx.invocation_id, "trace_id": ctx.trace_id,
                      "span_id": ctx.span_id})
    if payload["fail"]:
        raise RuntimeError("failing on purpose")
    return "ok"
"""
}


def ticker(out: Path, name: str = "ticker", state: str = "productive", uuid_tail: str = "1") -> str:
    return f"""
  - name: {name}
    uuid: dddddddd-0000-4000-8000-00000000000{uuid_tail}
    handler: functions.sch:tick
    state: {state}
    env: {{OUT: "{out}"}}
    schedules:
      - cron: "* * * * * */1"
        payload: {{job: nightly}}
"""


def records(path: Path, fn: str | None = None) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = [orjson.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if fn is None or r.get("fn") == fn]


def tick_of(record: dict[str, Any]) -> int:
    return int(str(record["id"]).rsplit(":", 1)[1])


def ancestors(pid: int) -> set[int]:
    """`pid` and its ancestors (an instance is a descendant of its node)."""
    out: set[int] = set()
    while pid > 1:
        out.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def listing(node: Node, name: str) -> dict[str, Any]:
    body = httpx.get(f"{node.url}/functions", timeout=5).json()
    entry: dict[str, Any] = next(f for f in body["functions"] if f["name"] == name)
    return entry


def test_per_second_schedule_end_to_end(tmp_path: Path, broker: EmbeddedBroker, nodes: StartNode) -> None:
    """1. A node with a per-second schedule. 2. Wait for six runs. Result: consecutive ticks (6 runs span
    5 s), each on time, with the payload and trigger `schedule`; `GET /functions` shows next fire and last."""
    out = tmp_path / "out"
    out.mkdir()
    root = write_project(tmp_path / "proj", "functions:" + ticker(out), MODULES)
    node = nodes(root, broker.bootstrap).wait_ready()
    rows = wait_for(lambda: (r := records(out / "ticks")) and len(r) >= 6 and r, 30, message="six ticks")
    ticks = [tick_of(r) for r in rows]
    assert ticks[:6] == list(range(ticks[0], ticks[0] + 6)), f"ticks not consecutive: {ticks}\n{node.tail()}"
    # Never before its tick, and within the slack a loaded 2-core machine needs (a run a whole tick
    # late would be the next tick's).
    assert all(0 <= r["t"] - tick_of(r) < 1.0 for r in rows), "a run started late"
    assert rows[0]["trigger"] == "schedule" and rows[0]["payload"] == {"job": "nightly"}
    [sched] = listing(node, "ticker")["schedules"]
    assert sched["cron"] == "* * * * * */1" and sched["payload"] == {"job": "nightly"}
    assert sched["next_fire"] is not None and sched["last"]["ok"] is True
    assert (
        datetime.fromisoformat(sched["next_fire"]).timestamp()
        > datetime.fromisoformat(sched["last"]["at"]).timestamp()
    )


SLEEPER = """
import asyncio, os, pathlib

async def handle(payload, ctx):
    pathlib.Path(os.environ["MARKS"], ctx.invocation_id.replace(":", "_")).touch()
    await asyncio.sleep(20)
"""


def test_a_second_signal_stops_a_node_with_a_schedule_run_in_flight(tmp_path: Path, nodes: StartNode) -> None:
    """1. A node (FAAS_SHUTDOWN_GRACE=30) whose per-second schedule runs a function that sleeps 20 s.
    2. SIGTERM once a run is in flight; once the node drains, SIGTERM again.
    Result: the node exits 0 within seconds of the second signal (it waited for the run, up to the grace)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    manifest = """
functions:
  - name: sleeper
    uuid: aaaaaaaa-0000-4000-8000-0000000000b7
    handler: functions.s:handle
    state: productive
    schedules: [{cron: "* * * * * */1"}]
"""
    root = write_project(tmp_path / "p", manifest, {"s": SLEEPER})
    node = nodes(root, None, kafka=False, env={"FAAS_SHUTDOWN_GRACE": "30", "MARKS": str(marks)}).wait_ready()
    wait_for(lambda: any(marks.iterdir()), 30, message="a run in flight")
    node.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "received: draining" in node.log.read_text(), 10, message="draining")
    second = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(30) == 0, node.tail()
    assert time.monotonic() - second < 8, node.tail()


def test_keep_warm_keeps_instance_warm_without_handle(
    tmp_path: Path, broker: EmbeddedBroker, nodes: StartNode
) -> None:
    """1. A function with idle_timeout 2 s and a per-second keep-warm. 2. Let ten warm-ups pass (> 10 s,
    five idle timeouts). Result: one instance throughout, `warmup` ran, `handle` never did, and a direct
    invocation is not a cold start."""
    out = tmp_path / "out"
    out.mkdir()
    warm = f"""
functions:
  - name: warmy
    uuid: {WARM}
    handler: functions.sch:handle
    state: productive
    env: {{OUT: "{out}"}}
    keep_warm: "* * * * * */1"
    instances: {{max: 1, idle_timeout: 2}}
"""
    root = write_project(tmp_path / "proj", warm, MODULES)
    node = nodes(root, broker.bootstrap).wait_ready()
    rows = wait_for(lambda: (r := records(out / "warmed")) and len(r) >= 11 and r, 30, message="warm-ups")
    assert {r["trigger"] for r in rows} == {"warmup"}
    assert len({r["pid"] for r in rows}) == 1, "the instance went cold between warm-ups"
    assert records(out / "handled") == [], "keep-warm reached handle"
    r = httpx.post(f"{node.url}/functions/{WARM}/invoke", json={}, timeout=30).json()
    assert r["cold_start"] is False, f"keep-warm did not keep the instance warm: {r}\n{node.tail()}"
    assert records(out / "handled") == [{"trigger": "direct"}]


def test_two_nodes_fire_once_and_survive_the_leader(
    tmp_path: Path, broker: EmbeddedBroker, nodes: StartNode
) -> None:
    """1. Two nodes in one group with a per-second schedule. Result: each tick fires once (no duplicate
    invocation ids). 2. SIGKILL the node that fires. Result: the other fires within 25 s, once per tick,
    starting with the ticks that fell due while no node led (about 10), so none is lost but perhaps the
    one whose run the kill cut short."""
    out = tmp_path / "out"
    out.mkdir()
    root = write_project(tmp_path / "proj", "functions:" + ticker(out), MODULES)
    a = nodes(root, broker.bootstrap)
    b = nodes(root, broker.bootstrap, tag=a.tag)  # started side by side: one group of two from the start
    a.wait_ready()
    b.wait_ready()
    # Both have joined once both are ready and a few ticks went by; judge the ticks after that.
    start = len(wait_for(lambda: len(records(out / "ticks")) >= 3 and records(out / "ticks"), 30))
    rows = wait_for(lambda: (r := records(out / "ticks")[start:]) and len(r) >= 6 and r, 30, message="ticks")
    ticks = [tick_of(r) for r in rows]
    assert len(set(ticks)) == len(ticks), f"a tick fired twice: {ticks}"
    leader, other = (a, b) if a.proc.pid in ancestors(rows[-1]["pid"]) else (b, a)
    assert leader.proc.pid in ancestors(rows[-1]["pid"]), "the ticking instance belongs to neither node"
    leader.kill()
    killed = time.time()
    seen = len(records(out / "ticks"))

    def after_kill() -> list[dict[str, Any]]:
        return [r for r in records(out / "ticks")[seen:] if other.proc.pid in ancestors(r["pid"])]

    taken = wait_for(lambda: len(after_kill()) >= 4 and after_kill(), 40, message="takeover")
    assert taken[0]["t"] - killed < 25, f"takeover took {taken[0]['t'] - killed:.1f} s\n{other.tail()}"
    ticks = [tick_of(r) for r in taken]
    assert ticks == list(range(ticks[0], ticks[0] + len(ticks))), f"the new leader skips or repeats: {ticks}"
    last_old = max(tick_of(r) for r in records(out / "ticks")[:seen])
    lost = set(range(last_old + 1, ticks[0]))
    assert lost <= {last_old + 1}, f"ticks lost in the takeover: {sorted(lost)}\n{other.tail()}"


def test_deploy_and_undeploy_on_a_running_node(
    tmp_path: Path, broker: EmbeddedBroker, nodes: StartNode
) -> None:
    """1. A running node with a draft ticker (and a productive `clock` ticker as a time reference).
    Result: the draft's schedule is listed with next_fire null and does not fire. 2. Deploy it (edit the
    manifest). Result: it fires. 3. Undeploy it. Result: next_fire null and it stops firing while `clock`
    keeps going."""
    out = tmp_path / "out"
    out.mkdir()

    def manifest(state: str) -> str:
        return "functions:" + ticker(out, "clock", uuid_tail="2") + ticker(out, state=state)

    root = write_project(tmp_path / "proj", manifest("draft"), MODULES)
    node = nodes(root, broker.bootstrap).wait_ready()
    wait_for(lambda: len(records(out / "ticks", "clock")) >= 2, 30, message="clock ticks")
    [sched] = listing(node, "ticker")["schedules"]
    assert sched["next_fire"] is None and sched["last"] is None and sched["cron"] == "* * * * * */1"
    assert records(out / "ticks", "ticker") == []

    (root / "functions.yaml").write_text(manifest("productive"))
    wait_for(lambda: records(out / "ticks", "ticker"), 10, message="deployed ticker fires")
    assert listing(node, "ticker")["schedules"][0]["next_fire"] is not None

    (root / "functions.yaml").write_text(manifest("undeployed"))
    wait_for(lambda: listing(node, "ticker")["schedules"][0]["next_fire"] is None, 10, message="undeployed")
    fired = len(records(out / "ticks", "ticker"))
    clock = len(records(out / "ticks", "clock"))
    wait_for(lambda: len(records(out / "ticks", "clock")) >= clock + 3, 10, message="three more clock ticks")
    assert len(records(out / "ticks", "ticker")) <= fired + 1, "the undeployed schedule still fires"


def test_json_log_lines_of_a_run_carry_its_trace(tmp_path: Path, nodes: StartNode) -> None:
    """1. A `faas run --no-kafka` node logging JSON, with a per-second schedule that succeeds (`fine`) and one
    that fails (`broken`); each handler records its ctx.invocation_id, trace_id and span_id.
    2. Read the node's `faas.scheduler` lines of those runs.
    Result: the "schedule run ok" line of a `fine` run and the "schedule run failed" line of a `broken` run
    carry the trace_id the handler saw in that invocation, and the span of the run, not the invocation's."""
    out = tmp_path / "out"
    out.mkdir()
    manifest = "functions:" + "".join(
        f"""
  - name: {name}
    uuid: dddddddd-0000-4000-8000-00000000001{tail}
    handler: functions.sch:traced
    state: productive
    env: {{OUT: "{out}"}}
    schedules:
      - cron: "* * * * * */1"
        payload: {{fail: {fail}}}
"""
        for name, tail, fail in (("fine", 1, "false"), ("broken", 2, "true"))
    )
    root = write_project(tmp_path / "proj", manifest, MODULES)
    node = nodes(root, None, kafka=False, env={"FAAS_LOG_FORMAT": "json"}).wait_ready()

    def scheduler_lines() -> dict[str, dict[str, Any]]:
        lines = [x for x in node.log.read_text(errors="replace").splitlines() if x.startswith("{")]
        entries = [orjson.loads(x) for x in lines]
        return {
            e["invocation_id"]: e for e in entries if e["logger"] == "faas.scheduler" and "invocation_id" in e
        }

    def logged_runs() -> list[tuple[dict[str, Any], dict[str, Any]]] | None:
        logged = scheduler_lines()
        runs = [(r, logged[r["id"]]) for r in records(out / "traced") if r["id"] in logged]
        return runs if {r["fn"] for r, _ in runs} == {"fine", "broken"} else None

    runs = wait_for(logged_runs, 30, message=f"logged runs of both schedules\n{node.tail()}")
    for run, line in runs:
        expected = "schedule run ok" if run["fn"] == "fine" else "schedule run failed"
        assert line["message"].startswith(expected) and line["function"] == run["fn"], line
        # The run's span: the trace of the invocation, whose span is its child (the unit test above)
        assert line.get("trace_id") == run["trace_id"], (run, line)
        span_id = line.get("span_id", "")
        assert re.fullmatch("[0-9a-f]{16}", span_id) and span_id != run["span_id"], line
