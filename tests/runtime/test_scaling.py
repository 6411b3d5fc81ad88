"""Batching, scale-out, queueing and idle reaping, against real instance processes."""

from __future__ import annotations

import asyncio
import time

import pytest

from framework.errors import Overloaded
from framework.runtime import Runtime
from framework.settings import Settings
from tests.runtime.conftest import SpecFactory, call, sample, until


async def test_batching_on_one_instance(runtime: Runtime, spec: SpecFactory) -> None:
    s = spec("sleep", max=1, concurrency=1000)
    t = time.monotonic()
    results = await asyncio.gather(*(call(runtime, s, {"sleep": 0.5}) for _ in range(500)))
    took = time.monotonic() - t
    assert took < 10, f"500 concurrent 0.5 s sleeps took {took:.1f} s"
    assert len({value["instance"] for value, _ in results}) == 1
    assert runtime.instance_count(s.name) == 1


async def test_spreads_over_max_instances(runtime: Runtime, spec: SpecFactory) -> None:
    s = spec("sleep", max=4, concurrency=50)
    results = await asyncio.gather(*(call(runtime, s, {"sleep": 0.5}) for _ in range(300)))
    instances = {value["instance"] for value, _ in results}
    assert len(instances) == 4 and len({value["pid"] for value, _ in results}) == 4
    assert runtime.instance_count(s.name) == 4


async def test_least_loaded_routing_and_cold_flags(runtime: Runtime, spec: SpecFactory) -> None:
    s = spec("sleep", max=2, concurrency=2)
    results = await asyncio.gather(*(call(runtime, s, {"sleep": 0.3}) for _ in range(4)))
    assert all(res.cold_start for _, res in results)  # all four waited for their instance to start
    by_instance: dict[str, int] = {}
    for value, _ in results:
        by_instance[value["instance"]] = by_instance.get(value["instance"], 0) + 1
    assert sorted(by_instance.values()) == [2, 2]
    _, res = await call(runtime, s, {"sleep": 0})
    assert not res.cold_start


async def test_requests_queued_behind_a_starting_instance_are_cold_starts(
    runtime: Runtime, spec: SpecFactory
) -> None:
    """1. Three calls at once to a cold function with one instance taking one request at a time.
    Result: all three say `cold_start` (the two queued behind the first waited for the instance's start
    too: they said false, as they got the instance after it was ready), and so did their handlers; a
    fourth call after them does not."""
    s = spec("echo", max=1, concurrency=1, queue=5)
    results = await asyncio.gather(*(call(runtime, s, {}) for _ in range(3)))
    assert [res.cold_start for _, res in results] == [True, True, True]
    assert [value["cold"] for value, _ in results] == [True, True, True]
    value, res = await call(runtime, s, {})
    assert not res.cold_start and not value["cold"]


async def test_def_handler_calls_beyond_an_instances_threads_go_to_another_instance(
    runtime: Runtime, spec: SpecFactory
) -> None:
    """1. A `def` handler (limit 3 s, up to 2 instances, `concurrency` 100 by default) is warm on one
    instance, whose HELLO said it runs 64 calls at once. 2. 80 calls of 2 s at once.
    Result: all 80 answered, on two instances: 64 on the first, the rest on a second one. (All 80 went to
    the first, where 16 waited for a thread for 2 s of their 3 s limit and were answered Timeout.)"""
    s = spec("sync_sleep", timeout=3, max=2)
    await call(runtime, s, {"sleep": 0})
    results = await asyncio.gather(*(call(runtime, s, {"sleep": 2}) for _ in range(80)))
    per_instance: dict[str, int] = {}
    for value, _ in results:
        per_instance[value["instance"]] = per_instance.get(value["instance"], 0) + 1
    assert sorted(per_instance.values()) == [16, 64], per_instance


async def test_def_handler_calls_beyond_its_first_instances_threads_go_to_another_once_it_started(
    runtime: Runtime, spec: SpecFactory
) -> None:
    """1. A `def` handler (limit 3 s, up to 2 instances, `concurrency` 100) with no instance yet. 2. 80 calls
    of 2 s at once: all reserve its first instance while it starts, before its HELLO says it runs 64 calls
    at once. Result: all 80 answered, 64 on the first instance and 16 on a second, all cold starts. (The 16
    beyond its threads waited inside it for 2 s of their 3 s limit and were answered Timeout.)"""
    s = spec("sync_sleep", timeout=3, max=2)
    results = await asyncio.gather(*(call(runtime, s, {"sleep": 2}) for _ in range(80)))
    per_instance: dict[str, int] = {}
    for value, _ in results:
        per_instance[value["instance"]] = per_instance.get(value["instance"], 0) + 1
    assert sorted(per_instance.values()) == [16, 64], per_instance
    assert all(res.cold_start for _, res in results)


async def test_idle_instance_goes_cold(runtime: Runtime, spec: SpecFactory) -> None:
    s = spec("echo", max=1, idle_timeout=1)
    first, r1 = await call(runtime, s)
    second, r2 = await call(runtime, s)
    assert r1.cold_start and first["cold"] and not r2.cold_start and not second["cold"]
    await until(lambda: runtime.instance_count(s.name) == 0, timeout=5, message="idle instance stopped")
    third, r3 = await call(runtime, s)
    assert r3.cold_start and third["pid"] != first["pid"]
    assert sample(runtime, "faas_cold_starts_total", function=s.name) == 2


async def test_queue_full_is_overloaded_at_once(runtime: Runtime, spec: SpecFactory) -> None:
    s = spec("sleep", max=1, concurrency=1, queue=1)
    busy = asyncio.ensure_future(call(runtime, s, {"sleep": 1}))
    queued = asyncio.ensure_future(call(runtime, s, {"sleep": 0}))
    await until(lambda: runtime.inflight() == 2)
    t = time.monotonic()
    with pytest.raises(Overloaded):
        await call(runtime, s, {"sleep": 0})
    assert time.monotonic() - t < 0.5
    await busy
    await queued  # the queued one is served once the slot frees


@pytest.mark.parametrize("settings", [Settings(queue_timeout=0.5)])
async def test_queue_timeout_is_overloaded(runtime: Runtime, spec: SpecFactory, settings: Settings) -> None:
    s = spec("sleep", max=1, concurrency=1)
    busy = asyncio.ensure_future(call(runtime, s, {"sleep": 3}))
    await until(lambda: runtime.inflight() == 1)
    t = time.monotonic()
    with pytest.raises(Overloaded, match=r"0\.5 s"):
        await call(runtime, s, {"sleep": 0})
    assert 0.4 < time.monotonic() - t < 2
    assert runtime.inflight() == 1  # the timed-out waiter left the queue
    busy.cancel()


@pytest.mark.parametrize("successor", ["another function of the name", "not served"])
async def test_a_queued_request_goes_only_to_the_same_functions_served_pool(
    runtime: Runtime, spec: SpecFactory, successor: str
) -> None:
    """1. `x` (one instance of concurrency 1) runs a 1 s call; a second call queues behind it. 2. The table
    changes: `x` is now another function's name (another uuid), or `x` is no longer served (undeployed).
    Result: the queued call stays on the pool it queued in and runs there once the first ends (it is not
    handed to another function's handler, nor to a function that is not served)."""
    first = spec("sleep", name="x", max=1, concurrency=1)
    running = asyncio.create_task(call(runtime, first, {"sleep": 1}))
    await until(lambda: runtime.inflight() == 1, message="the first call runs")
    queued = asyncio.create_task(call(runtime, first, {"sleep": 0}))
    await until(lambda: runtime._pools["x"].queued == 1, message="the second call queued")
    if successor == "not served":
        runtime.apply([first.model_copy(update={"state": "undeployed"})])
    else:
        runtime.apply([spec("echo", name="x")])
    value, result = await queued
    assert "payload" not in value and result.instance_id is not None, value  # `sleep`'s answer, not `echo`'s
    _, first_result = await running
    assert result.instance_id == first_result.instance_id  # the same instance, of the first pool


@pytest.mark.parametrize("settings", [Settings(queue_timeout=4.0)])
async def test_a_queued_request_moved_to_a_new_revision_keeps_its_queue_wait(
    runtime: Runtime, spec: SpecFactory, settings: Settings
) -> None:
    """1. `x` (one instance of concurrency 1, queue timeout 4 s) runs a 10 s call; two more queue behind it.
    2. 1.5 s later a new revision of `x` is applied (its code changed; same uuid, one instance).
    Result: both queued calls move to the new revision's pool: the first starts its instance and runs
    (10 s), the second queues there and is answered Overloaded 4 s after it first queued, not 4 s after the
    move (5.5 s)."""
    first = spec("sleep", name="x", max=1, concurrency=1).model_copy(update={"state": "productive"})
    running = asyncio.create_task(call(runtime, first, {"sleep": 10}))
    await until(lambda: runtime.inflight() == 1, message="the first call runs")
    moved = asyncio.create_task(call(runtime, first, {"sleep": 10}))
    queued_at = time.monotonic()
    last = asyncio.create_task(call(runtime, first, {"sleep": 0}))
    await until(lambda: runtime._pools["x"].queued == 2, message="two calls queued")
    await asyncio.sleep(1.5)  # part of the queued calls' wait goes by on the old revision
    assert not last.done(), "still queued in the old pool"
    runtime.apply([first.model_copy(update={"env": {"REVISION": "2"}})])
    with pytest.raises(Overloaded, match=r"no free instance within 4 s"):
        await last
    waited = time.monotonic() - queued_at
    assert 3.9 < waited < 5.2, f"answered {waited:.2f} s after it queued"
    assert not moved.done()  # it runs on the new revision's instance
    await until(lambda: runtime.instance_count("x") == 2, message="the new revision's instance")
    running.cancel()
    moved.cancel()
    await asyncio.gather(running, moved, return_exceptions=True)


async def test_the_series_of_a_function_that_left_go_once_its_instances_are_gone(
    runtime: Runtime, spec: SpecFactory
) -> None:
    """1. Serve `gone` and `kept`; invoke each once (one call of `gone` still running, 1 s).
    2. Apply a table without `gone`.
    Result: `gone`'s series (invocations, instances, kill reasons, ...) stay while its retired instance
    finishes the call, then leave /metrics; `kept`'s stay as they were."""
    gone = spec("sleep", name="gone", max=1).model_copy(update={"state": "productive"})
    kept = spec("echo", name="kept").model_copy(update={"state": "productive"})
    runtime.apply([gone, kept])
    await call(runtime, kept)
    await call(runtime, gone, {"sleep": 0})
    running = asyncio.create_task(call(runtime, gone, {"sleep": 1}))
    await until(lambda: runtime.inflight() == 1, message="gone's call runs")
    runtime.metrics.invocations.labels("gone", "direct", "ok").inc()  # as the invoker counts one

    def series(function: str) -> list[str]:
        text = runtime.metrics.render().decode()
        return [line for line in text.splitlines() if f'function="{function}"' in line]

    before = series("kept")
    assert any(line.startswith("faas_invocations_total") for line in series("gone"))
    runtime.apply([kept])
    assert series("gone"), "the retired instance still runs a call"
    await running
    await until(lambda: not series("gone"), timeout=10, message="gone's series removed")
    assert series("kept") == before
