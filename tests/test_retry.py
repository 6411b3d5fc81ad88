"""framework.retry through the invoker, on a real runtime (instance processes): which triggers retry, the
attempts, ids and delays, the error the last attempt ends with, metrics, and handing an event over."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from framework import retry
from framework.control.registry import Registry
from framework.control.spec import FunctionSpec, Manifest, RetrySpec
from framework.errors import FunctionError, Timeout
from framework.invoker import Invoker
from framework.observe import tracing
from framework.observe.logs import TraceFilter
from framework.observe.metrics import Metrics
from framework.retry import HANDOVER, Handover, attempt_id, with_retries
from framework.runtime import Runtime
from framework.settings import Settings
from framework.types import EventIdentity, Invocation, InvokeResult
from tests.support import write_project

HANDLERS = """
import asyncio, json, os, time

def _note(ctx, payload):
    with open(os.environ["OUT"], "a") as f:
        f.write(json.dumps({"attempt": ctx.attempt, "id": ctx.invocation_id, "trigger": ctx.trigger,
                            "tag": payload.get("tag"), "t": time.time()}) + "\\n")

async def until(payload, ctx):
    _note(ctx, payload)
    if ctx.attempt < payload["ok_on"]:
        raise RuntimeError(f"attempt {ctx.attempt} fails")
    return {"attempt": ctx.attempt}

async def slow_fail(payload, ctx):
    _note(ctx, payload)
    await asyncio.sleep(payload.get("sleep", 0))
    raise RuntimeError("slow failure")

async def nap(payload, ctx):
    _note(ctx, payload)
    await asyncio.sleep(5)
    return "late"

async def fine(payload, ctx):
    return "fine"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path, "functions: []\n", {"h": HANDLERS})


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    rt = Runtime(Settings(queue_timeout=5, log_level="INFO"))
    await rt.start()
    yield rt
    await rt.stop(0)


def make(
    project: Path, attr: str, events: tuple[str, ...] = (), timeout: float = 10, **retry: Any
) -> FunctionSpec:
    return FunctionSpec(
        name=attr.replace("_", "-"),
        uuid=str(uuid.uuid4()),
        handler=f"functions.h:{attr}",
        state="productive",
        events=events,
        timeout=timeout,
        env={"OUT": str(project / f"{attr}.jsonl")},
        retry=RetrySpec(**retry),
        root=project,
    )


def notes(project: Path, attr: str, tag: str) -> list[dict[str, Any]]:
    path = project / f"{attr}.jsonl"
    rows = [orjson.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in rows if r["tag"] == tag]


def invoker(runtime: Runtime, *specs: FunctionSpec) -> Invoker:
    return Invoker(runtime, Registry(Manifest(path=Path("functions.yaml"), functions=specs)), Metrics())


def retries(inv: Invoker, name: str, error: str) -> float:
    assert inv.metrics is not None
    return float(
        inv.metrics.registry.get_sample_value("faas_retries_total", {"function": name, "error": error}) or 0
    )


def payload(**values: Any) -> bytes:
    return orjson.dumps(values)


async def test_event_retried_until_it_succeeds_with_doubling_delays(project: Path, runtime: Runtime) -> None:
    """1. `until` fails attempts 1 and 2; retry {attempts: 3, backoff: 0.2, on: [FunctionError]}.
    2. Call it with the event trigger.
    Result: attempt 3's result; attempts 1, 2, 3 with three fresh invocation ids; the gaps are at least
    0.2 s and 0.4 s; two retries counted under FunctionError."""
    spec = make(project, "until", ("t.x",), attempts=3, backoff=0.2, on=["FunctionError"])
    inv = invoker(runtime, spec)
    res = await inv.call(spec, payload(ok_on=3, tag="e"), "event", "t.x")
    assert orjson.loads(res.result) == {"attempt": 3}
    rows = notes(project, "until", "e")
    assert [r["attempt"] for r in rows] == [1, 2, 3] and len({r["id"] for r in rows}) == 3
    assert res.invocation_id == rows[2]["id"]
    assert rows[1]["t"] - rows[0]["t"] >= 0.2 and rows[2]["t"] - rows[1]["t"] >= 0.4, rows
    assert retries(inv, "until", "FunctionError") == 2


async def test_the_line_between_attempts_names_the_failed_attempt_in_the_events_trace(
    project: Path, runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """1. `until` fails attempt 1; retry {attempts: 1, backoff: 0.05}. 2. Call it with the event trigger in
    the event's span. Result: the node's "failed ... attempt 2 in" line carries the trace id and span id
    of the event's span (section 11: log lines of an invocation carry them) and the failed attempt's
    invocation id; it used to carry none of them."""
    spec = make(project, "until", ("t.x",), attempts=1, backoff=0.05, on=["FunctionError"])
    inv = invoker(runtime, spec)
    span = tracing.start(f"00-{'a' * 32}-{'b' * 16}-01")
    caplog.handler.addFilter(TraceFilter())
    with caplog.at_level(logging.INFO, logger="faas.retry"):
        res = await inv.call(spec, payload(ok_on=2, tag="l"), "event", "t.x", span=span)
    [first, _] = notes(project, "until", "l")
    [line] = [r for r in caplog.records if "attempt 2 in" in r.getMessage()]
    assert (getattr(line, "trace_id", None), getattr(line, "span_id", None)) == ("a" * 32, span.span_id)
    assert getattr(line, "invocation_id", None) == first["id"] != res.invocation_id


async def test_scheduled_attempts_have_derived_ids(project: Path, runtime: Runtime) -> None:
    """A scheduled invocation's given id stays for attempt 1 and gains `:<attempt>` after (nodes agree)."""
    spec = make(project, "until", attempts=2, backoff=0.05, on=["FunctionError"])
    res = await invoker(runtime, spec).call(
        spec, payload(ok_on=3, tag="s"), "schedule", invocation_id="u:0:99"
    )
    assert [(r["id"], r["trigger"]) for r in notes(project, "until", "s")] == [
        ("u:0:99", "schedule"),
        ("u:0:99:2", "schedule"),
        ("u:0:99:3", "schedule"),
    ]
    assert res.invocation_id == "u:0:99:3"
    assert attempt_id(None, 2) != attempt_id(None, 2)


async def test_direct_and_warmup_never_retried(project: Path, runtime: Runtime) -> None:
    spec = make(project, "until", attempts=3, backoff=0.05, on=["FunctionError"])
    inv = invoker(runtime, spec)
    with pytest.raises(FunctionError) as err:
        await inv.call(spec, payload(ok_on=2, tag="d"), "direct")
    assert err.value.attempts == 1
    assert [r["attempt"] for r in notes(project, "until", "d")] == [1]
    assert retries(inv, "until", "FunctionError") == 0


async def test_attempts_run_out_and_other_errors_are_not_retried(project: Path, runtime: Runtime) -> None:
    """1. `until` never succeeds in time (ok_on 9) with 2 extra attempts: the error carries attempts 3 and
       the event reply names it.
    2. `nap` times out (timeout 0.5 s) but its policy retries FunctionError only: one attempt."""
    spec = make(project, "until", events=("t.out",), attempts=2, backoff=0.05, on=["FunctionError"])
    nap = make(project, "nap", events=("t.nap",), timeout=0.5, attempts=3, backoff=0.05, on=["FunctionError"])
    inv = invoker(runtime, spec, nap)
    reply = await inv.event("t.out", "ev-1", payload(ok_on=9, tag="o"))
    assert reply.error is not None and reply.error["type"] == "FunctionError" and reply.attempts == 3
    assert "attempt 3 fails" in reply.error["message"], reply.error
    assert [r["attempt"] for r in notes(project, "until", "o")] == [1, 2, 3]
    with pytest.raises(Timeout) as err:
        await inv.call(nap, payload(tag="n"), "event", "t.nap")
    assert err.value.attempts == 1 and [r["attempt"] for r in notes(project, "nap", "n")] == [1]


async def test_handover_cancels_an_event_waiting_between_attempts(project: Path, runtime: Runtime) -> None:
    """1. An event whose two listeners are `slow_fail` (retried after 10 s) and `fine` runs in a task with a
       Handover, as the Kafka source runs it.
    2. Once it waits between attempts, request the handover.
    Result: request() says it cancelled; the task ends cancelled within a second, not after the backoff."""
    failing = make(project, "slow_fail", events=("t.h",), attempts=2, backoff=10, on=["FunctionError"])
    inv = invoker(runtime, failing, make(project, "fine", events=("t.h",)))
    handover: list[Handover] = []

    async def run_event() -> Any:
        handover.append(Handover())
        HANDOVER.set(handover[0])
        return await inv.event("t.h", "ev-2", payload(tag="h"))

    task = asyncio.create_task(run_event())
    deadline = time.monotonic() + 30
    while not (handover and handover[0].waiting):
        assert time.monotonic() < deadline and not task.done(), "never waited between attempts"
        await asyncio.sleep(0.02)
    asked = time.monotonic()
    assert handover[0].request() is True
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - asked < 1
    assert [r["attempt"] for r in notes(project, "slow_fail", "h")] == [1]


async def test_handover_requested_mid_attempt_lets_it_finish_then_hands_over(
    project: Path, runtime: Runtime
) -> None:
    """1. `slow_fail` takes 1 s, then fails; retried after 10 s. Request the handover while attempt 1 runs.
    Result: request() says not now; attempt 1 runs to its end (1 s), then the task is cancelled at once
    instead of waiting out the backoff."""
    spec = make(project, "slow_fail", ("t.m",), attempts=2, backoff=10, on=["FunctionError"])
    inv = invoker(runtime, spec)
    handover: list[Handover] = []
    started = time.monotonic()

    async def run() -> Any:
        handover.append(Handover())
        HANDOVER.set(handover[0])
        return await inv.call(spec, payload(sleep=1, tag="m"), "event", "t.m")

    task = asyncio.create_task(run())
    deadline = time.monotonic() + 30
    while not notes(project, "slow_fail", "m"):
        assert time.monotonic() < deadline, "attempt 1 never started"
        await asyncio.sleep(0.02)
    assert handover[0].request() is False
    with pytest.raises(asyncio.CancelledError):
        await task
    took = time.monotonic() - started
    assert 1 <= took < 8, took


@pytest.mark.parametrize("when", ["in-backoff", "mid-attempt"])
async def test_a_give_up_handover_ends_the_attempts_with_the_last_error(
    project: Path, runtime: Runtime, caplog: pytest.LogCaptureFixture, when: str
) -> None:
    """1. A scheduled run of `slow_fail` (1 s, then fails; retried after 10 s) in a task with a give-up
    Handover, as the scheduler runs it. 2. The node stops: the handover is requested while the run waits
    for attempt 2 (in-backoff) or while attempt 1 runs (mid-attempt).
    Result: the run ends at once (after attempt 1, for mid-attempt) with attempt 1's FunctionError, not
    cancelled and not after the backoff; attempt 2 is never made, and the log says why."""
    spec = make(project, "slow_fail", attempts=3, backoff=10, on=["FunctionError"])
    inv = invoker(runtime, spec)
    handover = Handover(give_up=True)

    async def run() -> Any:
        HANDOVER.set(handover)
        return await inv.call(spec, payload(sleep=1, tag=when), "schedule", None, f"slow_fail:0:{when}")

    task = asyncio.create_task(run())
    deadline = time.monotonic() + 30
    if when == "in-backoff":
        while not handover.waiting:
            assert time.monotonic() < deadline and not task.done(), "never waited between attempts"
            await asyncio.sleep(0.02)
    else:
        while not notes(project, "slow_fail", when):
            assert time.monotonic() < deadline, "attempt 1 never started"
            await asyncio.sleep(0.02)
    asked = time.monotonic()
    assert handover.request() is (when == "in-backoff")
    with caplog.at_level(logging.WARNING, "faas.retry"), pytest.raises(FunctionError) as ended:
        await task
    assert time.monotonic() - asked < (1 if when == "in-backoff" else 3)
    assert ended.value.attempts == 1
    assert [r["attempt"] for r in notes(project, "slow_fail", when)] == [1]
    assert "slow-fail: attempt 2 not made: the node is stopping" in caplog.text


async def test_every_attempt_keeps_the_event_identity_and_trace() -> None:
    """with_retries on its own: attempt n is the first invocation with its own id and `attempt` n, and
    the same trigger, event, payload, identity and traceparent (what the handler sees as ctx.event_id...)."""
    spec = FunctionSpec(
        name="f",
        uuid=str(uuid.uuid4()),
        handler="functions.h:until",
        retry=RetrySpec(attempts=2, backoff=0.01, on=["Timeout"]),
    )
    trace = f"00-{'a' * 32}-{'b' * 16}-01"
    identity = EventIdentity("ev-9", key="k")
    first = Invocation("id-1", "event", "t.x", b"{}", identity=identity, traceparent=trace)
    seen: list[Invocation] = []

    async def attempt(s: FunctionSpec, inv: Invocation) -> InvokeResult:
        seen.append(inv)
        if inv.attempt < 3:
            raise Timeout("slow")
        return InvokeResult(inv.invocation_id, b"1", 1.0, False, "i")

    res = await with_retries(spec, first, False, attempt)
    assert [i.attempt for i in seen] == [1, 2, 3] and seen[0] is first
    assert len({i.invocation_id for i in seen}) == 3 and res.invocation_id == seen[2].invocation_id
    for inv in seen[1:]:
        assert replace(inv, invocation_id="id-1", attempt=1) == first


async def _deployed_in_the_backoff(
    project: Path, runtime: Runtime, tag: str, attempts: int, **update: Any
) -> asyncio.Future[InvokeResult]:
    """An event of `until` (retry {attempts, backoff: 1}) whose attempt 1 fails; once it ran, revision 2 of
    the function (`update` applied to its spec) is what the node serves. Returns the call, still waiting."""
    spec = make(project, "until", events=("t.x",), attempts=attempts, backoff=1, on=["FunctionError"])
    inv = invoker(runtime, spec)
    call = asyncio.ensure_future(inv.call(spec, payload(ok_on=9, tag=tag), "event", "t.x"))
    deadline = time.monotonic() + 10
    while not notes(project, "until", tag):
        assert time.monotonic() < deadline, "attempt 1 never ran"
        await asyncio.sleep(0.01)
    revised = spec.model_copy(update={**update, "revision": 2})
    inv.registry = Registry(Manifest(path=Path("functions.yaml"), functions=(revised,)))
    return call


async def test_a_retry_runs_the_revision_served_when_it_starts(project: Path, runtime: Runtime) -> None:
    """1. An event of `until` fails attempt 1; retry {attempts: 2, backoff: 1}. 2. During the backoff a new
    revision of the function is deployed, whose handler succeeds.
    Result: attempt 2 runs the new revision (a fix deployed meanwhile is what the next attempt gets)."""
    call = await _deployed_in_the_backoff(project, runtime, "fix", 2, handler="functions.h:fine")
    res = await asyncio.wait_for(call, 15)
    assert orjson.loads(res.result) == "fine"
    assert [r["attempt"] for r in notes(project, "until", "fix")] == [1]


async def test_an_undeploy_during_the_backoff_ends_the_attempts(project: Path, runtime: Runtime) -> None:
    """1. An event of `until` fails attempt 1; retry {attempts: 3, backoff: 1}. 2. The function is undeployed
    during the backoff.
    Result: no attempt 2; the call ends with attempt 1's error (attempts = 1, for the dead letter)."""
    call = await _deployed_in_the_backoff(project, runtime, "gone", 3, state="undeployed")
    with pytest.raises(FunctionError) as failed:
        await asyncio.wait_for(call, 15)
    assert failed.value.attempts == 1 and "attempt 1 fails" in failed.value.message
    assert [r["attempt"] for r in notes(project, "until", "gone")] == [1]


async def test_a_revision_that_stops_listening_ends_the_attempts(project: Path, runtime: Runtime) -> None:
    """1. An event t.x of `until` fails attempt 1; retry {attempts: 3, backoff: 1}. 2. During the backoff a
    revision that listens to t.y instead is deployed.
    Result: no attempt 2 (the function no longer takes t.x events, as `faas replay` would judge it); the
    call ends with attempt 1's error."""
    call = await _deployed_in_the_backoff(project, runtime, "moved", 3, events=("t.y",))
    with pytest.raises(FunctionError) as failed:
        await asyncio.wait_for(call, 15)
    assert failed.value.attempts == 1 and "attempt 1 fails" in failed.value.message
    assert [r["attempt"] for r in notes(project, "until", "moved")] == [1]


async def test_an_event_waits_only_while_every_listener_invocation_is_in_a_backoff() -> None:
    """A handover told `on_wait` (the Kafka source's room): listener A fails and backs off while B still
    runs an attempt (it holds an instance: not waiting); once B ends, the event waits; when A's backoff
    ends, it does not. Each change is told once, in order, and the tellings balance."""
    told: list[int] = []
    handover = Handover(asyncio.current_task(), on_wait=lambda h, delta: told.append(delta))
    HANDOVER.set(handover)
    b_entered, b_done, a_waits = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def listener_a() -> None:
        handover.enter()
        try:
            await b_entered.wait()  # the fan-out starts every listener before any attempt ends
            a_waits.set()
            await retry._backoff("a", 0.3)
        finally:
            handover.leave()

    async def listener_b() -> None:
        handover.enter()
        b_entered.set()
        try:
            await a_waits.wait()
            await asyncio.sleep(0.1)  # an attempt still running beside A's backoff
            assert told == [], "B runs: the event is not waiting"
        finally:
            handover.leave()
            b_done.set()

    await asyncio.gather(listener_a(), listener_b())
    assert b_done.is_set() and told == [1, -1], told
    assert (handover.active, handover.waiting) == (0, 0)
