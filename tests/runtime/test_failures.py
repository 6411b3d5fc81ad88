"""Time limits, blocked loops, exceptions, bad return values and dying instances."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from framework.errors import FunctionError, InstanceCrashed, Timeout
from framework.runtime import Runtime, handle
from framework.runtime.handle import InstanceHandle
from framework.runtime.template import Template
from framework.settings import Settings
from tests.runtime.conftest import SpecFactory, alive, call, sample, until


async def test_async_timeout_cancels_the_request(runtime: Runtime, spec: SpecFactory) -> None:
    s = spec("sleep", timeout=1, max=1)
    t = time.monotonic()
    with pytest.raises(Timeout):
        await call(runtime, s, {"sleep": 10})
    assert time.monotonic() - t < 3
    [iid] = runtime.instance_ids(s.name)
    value, _ = await call(runtime, s, {"sleep": 0})
    assert value["instance"] == iid  # the instance cut it off itself and lives on


async def test_a_handler_that_returns_after_the_cancellation_at_its_limit_is_answered_timeout(
    runtime: Runtime, spec: SpecFactory
) -> None:
    """1. A handler with a 1 s limit catches the CancelledError it gets at the limit and returns a value.
    Result: Timeout, as the contract says of a handler at its limit, not its late result; the instance
    serves on."""
    s = spec("swallow", timeout=1, max=1)
    with pytest.raises(Timeout, match="ran past its 1 s limit"):
        await call(runtime, s, {})
    [iid] = runtime.instance_ids(s.name)
    with pytest.raises(Timeout):
        await call(runtime, s, {})
    assert runtime.instance_ids(s.name) == [iid]


async def test_a_call_whose_caller_gave_up_is_still_held_to_its_time_limit(
    runtime: Runtime, spec: SpecFactory
) -> None:
    """1. A handler (limit 3 s, one instance) that swallows every cancellation gets a call whose caller
    gives up after 0.3 s (the node cancels it). 2. A quick call (0.1 s) to the same instance; then, 2 s
    after the first call, one that takes 2.5 s. Result: the quick call is served; the instance, still
    running the abandoned call past its limit, is killed GRACE after that limit (4 s), and the last call,
    within its own limit then, is answered InstanceCrashed saying why, not served. (The abandoned call ran
    on with no limit at all: the node stopped watching it at the cancellation.)"""
    s = spec("stubborn", timeout=3, max=1)
    gave_up = asyncio.ensure_future(call(runtime, s, {}))
    await until(lambda: any(i.ready for p in runtime._all_pools() for i in p.instances), 30, "instance up")
    sent = time.monotonic()
    await asyncio.sleep(0.3)  # the call is under way in the handler when its caller gives up
    gave_up.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gave_up
    pid, _ = await call(runtime, s, {"quick": 0.1})
    await asyncio.sleep(max(0.0, sent + 2 - time.monotonic()))  # the last call's limit ends after the kill
    with pytest.raises(InstanceCrashed, match="ran past its time limit without stopping"):
        await call(runtime, s, {"quick": 2.5})
    assert time.monotonic() - sent < 3 + handle.GRACE + 1.5
    await until(lambda: not alive(pid), 5, "the instance gone")


async def test_a_cancelled_call_that_stops_frees_its_instance_of_the_watch(
    runtime: Runtime, spec: SpecFactory
) -> None:
    """1. A call (limit 1 s) sleeping 10 s is given up by its caller after 0.3 s: the handler stops at the
    cancellation. 2. Once its limit and the kill grace are past, a quick call.
    Result: the quick call is served by the same instance (the instance said the call ended, so nothing
    counts it past its limit)."""
    s = spec("sleep", timeout=1, max=1)
    first, _ = await call(runtime, s, {"sleep": 0})
    started = time.monotonic()
    gave_up = asyncio.ensure_future(call(runtime, s, {"sleep": 10}))
    await asyncio.sleep(0.3)
    gave_up.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gave_up
    [inst] = [i for p in runtime._all_pools() for i in p.instances]
    await until(lambda: not inst._abandoned, 5, "the instance's word that the call ended")
    await asyncio.sleep(max(0.0, started + 1 + handle.GRACE + 0.3 - time.monotonic()))  # past the backstop
    value, _ = await call(runtime, s, {"sleep": 0})
    assert value["instance"] == first["instance"] and alive(value["pid"])


async def test_an_async_handler_that_blocks_its_loop_past_the_limit_is_answered_timeout(
    runtime: Runtime, spec: SpecFactory
) -> None:
    """1. An `async def` handler (limit 1 s) blocks its loop with `time.sleep(1.5)`: nothing can cancel it
    at the limit, and it returns within the node's 1 s kill grace. 2. A quick call after it.
    Result: the first is answered Timeout (it used to be answered with its late result); the quick call
    is served by the same instance, which was not killed."""
    s = spec("block", timeout=1, max=1)
    first, _ = await call(runtime, s, {"block": 0})
    with pytest.raises(Timeout, match="blocked its instance's event loop"):
        await call(runtime, s, {"block": 1.5})
    value, _ = await call(runtime, s, {"block": 0})
    assert value["unblocked"] == first["unblocked"]


async def test_no_request_goes_to_an_instance_about_to_be_killed(runtime: Runtime, spec: SpecFactory) -> None:
    """1. An `async def` handler (limit 1 s, at most two instances) blocks its loop for 5 s. 2. Once that call
    is past its limit (the instance is killed 1 s later, unanswered), a quick call.
    Result: the quick call is served by another instance; it was routed to the blocked one, the least
    loaded, and answered InstanceCrashed "another request ran past its time limit" at the kill."""
    s = spec("block", timeout=1, max=2)
    blocked = asyncio.ensure_future(call(runtime, s, {"block": 5}))

    def overdue() -> list[InstanceHandle]:
        return [i for p in runtime._all_pools() for i in p.instances if i.overdue]

    await until(overdue, 10, "the blocked call past its limit")
    [stuck] = overdue()
    value, _ = await call(runtime, s, {"block": 0})
    assert value["unblocked"] != stuck.pid
    with pytest.raises((Timeout, InstanceCrashed)):
        await blocked


async def test_def_handler_threads_all_stuck_past_the_limit_give_a_fresh_instance(
    runtime: Runtime, spec: SpecFactory
) -> None:
    """1. A `def` handler (limit 1 s, one instance, 2 threads) gets one call that sleeps 60 s: answered
    Timeout; a quick call is still served by the same instance (one thread left). 2. A second 60 s call:
    Timeout, and now both threads are stuck (a thread cannot be interrupted).
    Result: the instance leaves and the next quick call is served at once by a fresh instance, not
    answered Timeout for as long as the stuck calls run (before: every call timed out for 60 s)."""
    s = spec("sync_sleep", timeout=1, max=1, concurrency=2)
    with pytest.raises(Timeout):
        await call(runtime, s, {"sleep": 60})
    [first] = runtime.instance_ids(s.name)
    value, _ = await call(runtime, s, {"sleep": 0})
    assert value["instance"] == first
    with pytest.raises(Timeout):
        await call(runtime, s, {"sleep": 60})
    deadline = time.monotonic() + 20
    while True:  # calls the dying instance still took are answered Timeout or InstanceCrashed
        with contextlib.suppress(Timeout, InstanceCrashed):
            found, _ = await call(runtime, s, {"sleep": 0})
            if found["instance"] != first:
                break
        assert time.monotonic() < deadline, "no call served by a fresh instance within 20 s"


async def test_a_def_call_cancelled_before_its_limit_leaves_the_instance_serving(
    runtime: Runtime, spec: SpecFactory
) -> None:
    """1. A `def` handler (limit 5 s, one instance, one thread) runs a 1 s call whose caller gives up after
    0.2 s (a chain abort or a client gone: the node cancels it). 2. A quick call.
    Result: the quick call is served by the same instance once the thread is free: a call cancelled before
    its limit does not count as stuck (it did, once: the instance left at the first cancel)."""
    s = spec("sync_sleep", timeout=5, max=1, concurrency=1)
    value, _ = await call(runtime, s, {"sleep": 0})
    first = value["instance"]
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await call(runtime, s, {"sleep": 1})
    value, _ = await call(runtime, s, {"sleep": 0})
    assert value["instance"] == first and runtime.instance_ids(s.name) == [first]


async def test_no_request_goes_to_an_idle_instance_about_to_be_killed(
    runtime: Runtime, spec: SpecFactory
) -> None:
    """1. A handler that swallows every cancellation (limit 2 s, at most two instances) gets a call whose
    caller gives up after 0.3 s: the instance holds no request, but runs the abandoned call on. 2. Once that
    call is past its limit (the instance is killed 1 s later), a quick call.
    Result: served by another instance (it went to the idle-looking one and was answered InstanceCrashed at
    the kill)."""
    s = spec("stubborn", timeout=2, max=2)
    gave_up = asyncio.ensure_future(call(runtime, s, {}))

    def overdue() -> list[InstanceHandle]:
        return [i for p in runtime._all_pools() for i in p.instances if i.overdue]

    await until(lambda: any(i.ready for p in runtime._all_pools() for i in p.instances), 30, "instance up")
    await asyncio.sleep(0.3)  # the call is under way in the handler when its caller gives up
    gave_up.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gave_up
    await until(overdue, 10, "the abandoned call past its limit")
    [stuck] = overdue()
    assert stuck.load == 0
    pid, _ = await call(runtime, s, {"quick": 0})
    assert pid != stuck.pid


async def test_a_def_call_answered_without_its_thread_keeps_that_thread_from_new_calls(
    runtime: Runtime, spec: SpecFactory
) -> None:
    """1. A `def` handler (limit 2 s, one instance, two threads) gets a call of 12 s: answered Timeout at 2 s,
    its thread runs on. 2. Two calls of 1.5 s at once.
    Result: both are served, one after the other on the one thread left (the second waits in the node's
    queue, where its time limit does not run); before, the node sent both to the instance, whose second
    waited there for a thread with its limit running, and was answered Timeout."""
    s = spec("sync_sleep", timeout=2, max=1, concurrency=2)
    with pytest.raises(Timeout):
        await call(runtime, s, {"sleep": 12})
    [pool] = [p for p in runtime._all_pools() if p.spec.name == s.name]
    await until(lambda: pool.instances[0].held == 1, 5, "the instance telling its thread is held")
    both = await asyncio.gather(call(runtime, s, {"sleep": 1.5}), call(runtime, s, {"sleep": 1.5}))
    assert [value["instance"] for value, _ in both] == [pool.instances[0].id] * 2


async def test_a_def_call_whose_caller_left_keeps_its_thread_from_new_calls(
    runtime: Runtime, spec: SpecFactory
) -> None:
    """1. A `def` handler (limit 5 s, at most two instances, one thread each) runs a call of 8 s whose caller
    gives up after 0.5 s. 2. A quick call.
    Result: served at once by a second instance. Before, it went to the first, whose only thread still ran
    the abandoned call: it waited there until that call's limit passed and the instance, its every thread
    stuck, left, and was answered InstanceCrashed "exited with code 0"."""
    s = spec("sync_sleep", timeout=5, max=2, concurrency=1)
    value, _ = await call(runtime, s, {"sleep": 0})
    first = value["instance"]
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await call(runtime, s, {"sleep": 8})
    [pool] = [p for p in runtime._all_pools() if p.spec.name == s.name]
    await until(lambda: pool.instances[0].held == 1, 5, "the instance telling its thread is held")
    t = time.monotonic()
    value, _ = await call(runtime, s, {"sleep": 0})
    assert value["instance"] != first and time.monotonic() - t < 3


async def test_blocked_loop_kills_instance(runtime: Runtime, spec: SpecFactory) -> None:
    """1. A started instance (limit 1 s) gets a request that blocks its loop for 8 s. 2. Once that request
    is past its limit, and before the node kills the instance (1 s after that limit), a second request.
    Result: the first is answered Timeout within 3 s; the second waits in the queue rather than go to the
    instance about to be killed (it went there, and was answered InstanceCrashed at the kill), and is served
    by a fresh instance, a cold start; the crash is counted as `blocked`."""
    s = spec("block", timeout=1, max=1)
    first, _ = await call(runtime, s, {"block": 0})  # started: the request goes in as soon as it is sent
    pid = first["unblocked"]
    t = time.monotonic()
    blocked = asyncio.ensure_future(call(runtime, s, {"block": 8}))
    await until(lambda: runtime.inflight() == 1, message="the blocking request in flight")
    # Its limit runs from when the node sent it, which is no later than now.
    past_limit = time.monotonic() + s.timeout
    await until(
        lambda: time.monotonic() >= past_limit,
        timeout=s.timeout + 1,
        message="the blocking request past its time limit",
    )
    # The window is open: the instance still lives (it dies 1 s past that limit) and holds the request.
    assert not blocked.done() and runtime.instance_ids(s.name), "killed before the second request"
    other = asyncio.ensure_future(call(runtime, s, {"block": 0}))
    with pytest.raises(Timeout):
        await blocked
    assert time.monotonic() - t < 3
    value, res = await other
    assert value["unblocked"] != pid and res.cold_start
    await until(lambda: not alive(pid), message="blocked instance killed")
    assert sample(runtime, "faas_instance_crashes_total", function=s.name, reason="blocked") == 1


async def test_exception_is_function_error(runtime: Runtime, spec: SpecFactory) -> None:
    with pytest.raises(FunctionError, match=r"ValueError: bad input: \{'x': 1\}") as info:
        await call(runtime, spec("boom"), {"x": 1})
    assert "Traceback" in "".join(getattr(info.value, "__notes__", []))


async def test_a_handlers_own_cancellation_is_function_error(runtime: Runtime, spec: SpecFactory) -> None:
    """1. A handler awaits a task of its own that was cancelled (CancelledError escapes it).
    Result: FunctionError at once, not a wait for the limit and a killed instance; the instance serves on."""
    s = spec("self_cancel", timeout=5, max=1)
    t = time.monotonic()
    with pytest.raises(FunctionError, match="CancelledError") as info:
        await call(runtime, s, {})
    assert time.monotonic() - t < 2
    assert "await inner" in "".join(getattr(info.value, "__notes__", []))  # its traceback, as any error's
    [iid] = runtime.instance_ids(s.name)
    with pytest.raises(FunctionError):
        await call(runtime, s, {})
    assert runtime.instance_ids(s.name) == [iid]


async def test_non_json_return_is_function_error(runtime: Runtime, spec: SpecFactory) -> None:
    with pytest.raises(FunctionError, match="returned a value that is not JSON: set"):
        await call(runtime, spec("notjson"))


async def test_dict_keys_are_written_as_json_writes_them_or_refused_naming_their_type(
    runtime: Runtime, spec: SpecFactory
) -> None:
    """1. A handler returns a dict with an integer key beyond 64 bits. 2. One with a tuple key. 3. A nested
    dict with keys 1 and "1". Result: 1 is answered with the keys as text, exact; 2 is a FunctionError
    naming the key's type; 3 one naming both keys (JSON would hold "1" twice, a reader keeping one)."""
    s = spec("odd_keys")
    value, _ = await call(runtime, s, "big")
    assert value == {str(10**30): "big", "-1": "small"}
    with pytest.raises(FunctionError, match=r"not JSON: dict \(keys must be str, .* not tuple\)"):
        await call(runtime, s, "pair")
    with pytest.raises(FunctionError, match=r"not JSON: dict \(dict keys 1 and '1' are both written as"):
        await call(runtime, s, "clash")


async def test_a_revision_whose_code_is_not_unpacked_here_is_refused_by_name(
    runtime: Runtime, spec: SpecFactory, tmp_path: Path
) -> None:
    """A revision served while this node's disk refused its code (its folder missing). Result: its
    instance does not start, and the answer says why (it would have imported whatever it found under
    that module name, the working copy's included)."""
    missing = spec("echo").model_copy(update={"code": tmp_path / "not-unpacked", "revision": 4})
    with pytest.raises(InstanceCrashed, match=r"the code of its revision 4 is not unpacked on this node"):
        await call(runtime, missing, {})


async def test_a_result_too_large_for_a_reply_is_function_error(runtime: Runtime, spec: SpecFactory) -> None:
    """1. A handler returns 241 MiB of JSON, more than a reply between instance and node holds.
    2. It returns 1 MiB. Result: 1 is a FunctionError naming the size and the limit, not InstanceCrashed
    (the frame would have broken the channel); the same instance answers 2."""
    s = spec("big_result", timeout=20, max=1)
    too_large = r"returned 252,\d{3},\d{3} bytes of JSON, over the 251,658,240 bytes"
    with pytest.raises(FunctionError, match=too_large):
        await call(runtime, s, 241)
    [iid] = runtime.instance_ids(s.name)
    value, res = await call(runtime, s, 1)
    assert len(value) == 1 and len(value[0]) == 1 << 20 and res.instance_id == iid


@pytest.mark.parametrize("handler", ["raise_async", "raise_sync"])
@pytest.mark.parametrize(
    "kind",
    [
        "BadStr",
        "MyBase",
        "SystemExit",
        "KeyboardInterrupt",
        "StopIteration",
        "GeneratorExit",
        "StopAsyncIteration",
    ],
)
async def test_any_exception_is_function_error(
    runtime: Runtime, spec: SpecFactory, handler: str, kind: str
) -> None:
    """1. An `async def` or `def` handler raises an exception whose str() fails, or a BaseException that is
    not an Exception (its own, SystemExit, KeyboardInterrupt, GeneratorExit: not its coroutine being
    closed), or StopIteration or StopAsyncIteration. 2. Another request.
    Result: FunctionError at once naming the exception, with its traceback, not a wait for the limit and a
    killed instance; the same instance serves the second request."""
    s = spec(handler, timeout=3, max=1)
    t = time.monotonic()
    with pytest.raises(FunctionError, match=kind) as info:
        await call(runtime, s, {"raise": kind})
    assert time.monotonic() - t < 2
    assert "Traceback" in "".join(getattr(info.value, "__notes__", []))
    if kind == "BadStr":
        assert "BadStr: <exception str() failed>" in str(info.value)
    [iid] = runtime.instance_ids(s.name)
    value, _ = await call(runtime, s, {})
    assert value == iid


async def test_a_base_exception_leaves_the_other_requests_alone(runtime: Runtime, spec: SpecFactory) -> None:
    """1. A request sleeps 1 s in an instance. 2. Meanwhile a request to that instance raises SystemExit.
    Result: the second is a FunctionError at once, the first still gets its result from that instance."""
    s = spec("raise_async", timeout=5, max=1)
    iid, _ = await call(runtime, s, {})  # started: both requests below go to this instance
    sleeping = asyncio.ensure_future(call(runtime, s, {"sleep": 1}))
    await until(lambda: runtime.inflight() == 1, message="the sleeping request in flight")
    with pytest.raises(FunctionError, match="SystemExit"):
        await call(runtime, s, {"raise": "SystemExit"})
    assert not sleeping.done(), "the failure did not come at once"
    value, _ = await sleeping
    assert value == iid and runtime.instance_ids(s.name) == [iid]


@pytest.mark.parametrize("case", ["nan", "inf", "deep", "key", "tuple", "dataclass", "enum"])
async def test_non_finite_float_is_not_json(runtime: Runtime, spec: SpecFactory, case: str) -> None:
    """1. A handler returns a value holding NaN or an infinity (nested, as a key, in a dataclass or enum).
    Result: FunctionError saying the value is not JSON, not a result with `null` in its place."""
    with pytest.raises(FunctionError, match=r"returned a value that is not JSON: .*not a JSON number"):
        await call(runtime, spec("non_finite"), case)


async def test_a_result_nested_as_deep_as_json_is_read_is_a_result(
    runtime: Runtime, spec: SpecFactory
) -> None:
    """1. A handler returns lists nested 1,024 levels deep (orjson writes 254, reads 1,024); then 1,025.
    Result: the first is the result; the second a FunctionError saying how deep is too deep."""
    value, _ = await call(runtime, spec("nested"), {"depth": 1024, "leaf": "bottom"})
    depth = 0
    while isinstance(value, list):
        value, depth = value[0], depth + 1
    assert (depth, value) == (1024, "bottom")
    with pytest.raises(FunctionError, match=r"not JSON: list \(nested deeper than 1,024 levels\)"):
        await call(runtime, spec("nested"), {"depth": 1025, "leaf": 1})


async def test_values_that_encode_as_null_stay_results(runtime: Runtime, spec: SpecFactory) -> None:
    """1. A handler returns None, the string "null" and finite floats (also a float key).
    Result: the value, as JSON."""
    value, _ = await call(runtime, spec("non_finite"))
    assert value == {
        "a": None,
        "s": "null",
        "f": [1.5, -0.0, 1e308],
        "t": [None],
        "p": {"x": 0.5, "y": 2.0},
        "2.5": None,
    }


async def test_import_error_is_function_error(runtime: Runtime, spec: SpecFactory) -> None:
    s = spec("handle", module="broken")
    with pytest.raises(FunctionError, match="RuntimeError: cannot import me"):
        await call(runtime, s)
    assert runtime.instance_count(s.name) == 0


async def test_a_function_whose_instances_fail_to_start_is_not_forked_per_request(
    runtime: Runtime, spec: SpecFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. A module that fails at import; calls one after another for 1.5 s. 2. A fixed spec of the same
    function (a deploy). Result: every call is answered the import's error, later ones adding that starts
    keep failing and when the next is; the instances forked stay within the backoff's doubling (0, 0.1,
    0.2, 0.4, 0.8 s after the second failure: 6; one per call before, hundreds); the fixed spec is served
    at once."""
    forks = 0
    spawn = Template.spawn

    def counted(self: Template, config: dict[str, Any]) -> Any:
        nonlocal forks
        forks += 1
        return spawn(self, config)

    monkeypatch.setattr(Template, "spawn", counted)
    s = spec("handle", module="broken", max=2)
    calls, refused = 0, 0
    t = time.monotonic()
    while time.monotonic() - t < 1.5:
        with pytest.raises(FunctionError, match="RuntimeError: cannot import me") as caught:
            await call(runtime, s)
        calls += 1
        refused += "starts in a row failed: the next in" in caught.value.message
    assert calls > 20 and refused > calls / 2, (calls, refused)
    assert 3 <= forks <= 8, forks
    value, res = await call(runtime, spec("echo", name=s.name))
    assert res.cold_start and value["payload"] is None


async def test_a_function_whose_start_failure_passes_starts_again_after_its_pause(
    runtime: Runtime, spec: SpecFactory, tmp_path: Path
) -> None:
    """1. A module that fails at import while a flag file exists: two calls fail (the second starts the
    pause). 2. The flag removed; calls until one is served. Result: served within the pause (0.1 s) and a
    start, and the calls before it were answered the start's error, none another."""
    flag = tmp_path / "flag"
    flag.touch()
    s = spec("handle", module="flaky", env={"FLAKY_FLAG": str(flag)})
    for _ in range(2):
        with pytest.raises(FunctionError, match="cannot import me yet"):
            await call(runtime, s)
    flag.unlink()
    t = time.monotonic()
    while True:
        try:
            pid, res = await call(runtime, s)
            break
        except FunctionError as e:
            assert "cannot import me yet" in e.message
            assert time.monotonic() - t < 3
    assert alive(pid) and res.cold_start


async def test_a_burst_of_failed_starts_counts_as_one(runtime: Runtime, spec: SpecFactory) -> None:
    """1. Ten calls at once to a module that fails at import (up to 10 instances): ten starts fail together.
    2. One more call. Result: it gets a fresh instance (its error is the import's, with no pause said):
    one round of starts failed, not ten in a row (which paused starts for the longest, 10 s, at once)."""
    s = spec("handle", module="broken", max=10, concurrency=1)
    outcomes = await asyncio.gather(*(call(runtime, s) for _ in range(10)), return_exceptions=True)
    assert all(isinstance(o, FunctionError) for o in outcomes), outcomes
    with pytest.raises(FunctionError) as caught:
        await call(runtime, s)
    assert "starts in a row failed" not in caught.value.message, caught.value.message


async def test_a_request_queued_during_a_pause_is_served_when_it_ends(
    runtime: Runtime, spec: SpecFactory, tmp_path: Path
) -> None:
    """1. A function (one call per instance, two instances) whose one live instance is busy for 8 s.
    2. Its module then fails at import: four calls fail (a pause of 0.4 s then). 3. The module is fixed,
    and a call comes during the pause. Result: that call, queued behind the busy instance, is served by a
    new instance once the pause ends, in well under the queue's 5 s (nothing looked at the queue when the
    pause ended: it waited for the busy instance or its timeout, answered Overloaded)."""
    flag = tmp_path / "flag"
    s = spec("handle", module="flaky", env={"FLAKY_FLAG": str(flag)}, max=2, concurrency=1)
    busy = asyncio.ensure_future(call(runtime, s, 8))
    await until(lambda: any(i.ready for p in runtime._all_pools() for i in p.instances), 30, "busy")
    flag.touch()
    for _ in range(4):
        with pytest.raises(FunctionError, match="cannot import me yet"):
            await call(runtime, s)
    flag.unlink()
    t = time.monotonic()
    pid, res = await call(runtime, s)
    assert time.monotonic() - t < 2 and res.cold_start and alive(pid)
    busy.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await busy


async def test_exit_is_instance_crashed_and_replaced(runtime: Runtime, spec: SpecFactory) -> None:
    s = spec("exit1", max=1)
    with pytest.raises(InstanceCrashed, match=r"of function exit1 exited with code 1$"):
        await call(runtime, s)
    assert runtime.instance_count(s.name) == 0
    echo = spec("echo", name=s.name, max=1)
    value, res = await call(runtime, echo)
    assert res.cold_start and value["payload"] is None


async def test_a_crash_says_which_signal_ended_the_instance(runtime: Runtime, spec: SpecFactory) -> None:
    """1. A handler that ends its process with SIGSEGV (as a crashing native library would), while another
    request waits on the same instance. 2. A call after it.
    Result: both held requests are answered InstanceCrashed naming the signal; the next call is served by a
    fresh instance; the template reaped the dead one (no zombie left)."""
    s = spec("segfault", max=1, concurrency=2)
    waiting = asyncio.ensure_future(call(runtime, s, {"sleep": 30}))
    await until(lambda: runtime.inflight() == 1)
    with pytest.raises(InstanceCrashed, match=r"was killed by signal 11 \(SIGSEGV\)"):
        await call(runtime, s)
    with pytest.raises(InstanceCrashed, match=r"was killed by signal 11 \(SIGSEGV\)"):
        await waiting
    value, res = await call(runtime, s, {"sleep": 0})
    assert res.cold_start
    template = psutil.Process(runtime._template.pid)
    assert all(child.pid == value["pid"] for child in template.children())


async def test_a_handler_that_stops_its_loop_crashes_its_instance_not_the_other_requests(
    runtime: Runtime, spec: SpecFactory
) -> None:
    """1. A request sleeps on an instance. 2. Another request on it stops the instance's event loop.
    Result: both are answered InstanceCrashed (retried by default, section 15), not FunctionError: the
    sleeping one raised nothing (the loop's runner cancelled it on the way out). A fresh instance serves
    the next call."""
    s = spec("loop_stop", max=1, concurrency=2)
    waiting = asyncio.ensure_future(call(runtime, s, {"sleep": 30}))
    await until(lambda: runtime.inflight() == 1)
    with pytest.raises(InstanceCrashed, match=r"of function loop-stop exited with code 1$"):
        await call(runtime, s)
    with pytest.raises(InstanceCrashed, match=r"of function loop-stop exited with code 1$"):
        await waiting
    value, res = await call(runtime, s, {"sleep": 0})
    assert res.cold_start and value["pid"] > 0


async def test_an_instance_that_closes_its_channel_and_stays_is_killed_and_says_so(
    runtime: Runtime, spec: SpecFactory, tmp_path: Path
) -> None:
    """1. A handler closes its instance's descriptors (its channels to the node) and holds its loop.
    Result: InstanceCrashed within about a second, saying it closed its connection and was killed; the
    process is gone and a fresh instance serves the next call."""
    s = spec("close_channel", max=1, timeout=30)
    t = time.monotonic()
    with pytest.raises(
        InstanceCrashed, match=r"closed its connection to the node and did not exit \(killed\)$"
    ):
        await call(runtime, s, {"block": 20, "pid_file": str(tmp_path / "pid")})
    assert time.monotonic() - t < 5
    pid = int((tmp_path / "pid").read_text())
    await until(lambda: not alive(pid), timeout=5)
    echo = spec("echo", name=s.name, max=1)
    _, res = await call(runtime, echo)
    assert res.cold_start


async def test_an_instance_that_does_not_start_in_time_is_killed_and_says_why(
    runtime: Runtime, spec: SpecFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """1. A module that sleeps at import, with the start limit at 1 s; two calls at once.
    Result: both InstanceCrashed naming the limit and what was slow (the message used to end in an empty
    `TimeoutError: `), after about that limit; no instance is left; the node's log says so too (it said
    nothing, unlike every other kill)."""
    monkeypatch.setattr(handle, "START_TIMEOUT", 1.0)
    s = spec("handle", module="hangs", max=1)
    t = time.monotonic()
    outcomes = await asyncio.gather(call(runtime, s), call(runtime, s), return_exceptions=True)
    for outcome in outcomes:
        assert isinstance(outcome, InstanceCrashed), outcome
        assert outcome.message.endswith(
            "of function handle did not start within 1 s (importing its handler, running its warmup hook)"
            ": killed"
        ), outcome.message
    assert time.monotonic() - t < 5
    await until(lambda: runtime.instance_count(s.name) == 0)
    said = [r.getMessage() for r in caplog.records if r.name == "faas.runtime" and r.levelname == "WARNING"]
    assert any("did not start within 1 s" in line and "(pid " in line for line in said), said


async def test_an_instance_that_exits_while_importing_says_so(runtime: Runtime, spec: SpecFactory) -> None:
    s = spec("handle", module="exits")
    with pytest.raises(InstanceCrashed, match=r"exited with code 2 while starting$"):
        await call(runtime, s)


async def test_kill_9_is_instance_crashed(runtime: Runtime, spec: SpecFactory) -> None:
    s = spec("sleep", max=1)
    first, _ = await call(runtime, s, {"sleep": 0})
    held = [asyncio.ensure_future(call(runtime, s, {"sleep": 30})) for _ in range(3)]
    await until(lambda: runtime.inflight() == 3)
    t = time.monotonic()
    os.kill(first["pid"], signal.SIGKILL)
    for fut in held:
        with pytest.raises(InstanceCrashed, match=r"was killed by signal 9 \(SIGKILL\)"):
            await fut
    assert time.monotonic() - t < 2
    value, _ = await call(runtime, s, {"sleep": 0})
    assert value["pid"] != first["pid"]


async def test_the_processes_a_handler_starts_go_with_its_instance(
    runtime: Runtime, spec: SpecFactory, tmp_path: Path
) -> None:
    """1. A handler starts a long `sleep` child and returns. 2. The node kills the instance (as it does for
    a memory or time limit, a retirement, or its stop). 3. Another starts a child and exits the process.
    Result: each child is gone too (they lived on, reparented, past their instance and even its node)."""
    s = spec("spawn", max=1)
    value, _ = await call(runtime, s)
    child = value["child"]
    assert alive(child)
    [inst] = runtime._pool(s).instances
    inst.kill()
    deadline = time.monotonic() + 10
    while alive(child):
        assert time.monotonic() < deadline, "the handler's child outlived its instance"
        await asyncio.sleep(0.02)
    note = tmp_path / "child"
    with pytest.raises(InstanceCrashed):
        await call(runtime, s, {"exit": str(note)})
    child = int(note.read_text())
    deadline = time.monotonic() + 10
    while alive(child):
        assert time.monotonic() < deadline, "the child of an instance that exited outlived it"
        await asyncio.sleep(0.02)


async def test_an_instance_that_exits_while_a_process_it_forked_holds_its_channel_is_crashed_at_once(
    runtime: Runtime, spec: SpecFactory, tmp_path: Path
) -> None:
    """1. A handler forks a child that sleeps 60 s (it holds the instance's channel to the node open), then
    exits its instance with code 3. Result: InstanceCrashed saying "exited with code 3" within seconds, not
    after the child or the 30 s limit; the child goes with its instance; the next call gets a fresh one."""
    s = spec("fork_exit", timeout=30, max=1)
    note = tmp_path / "child"
    started = time.monotonic()
    with pytest.raises(InstanceCrashed, match="exited with code 3"):
        await call(runtime, s, {"note": str(note)})
    assert time.monotonic() - started < 5, "the crash was told only when the channel closed"
    child = int(note.read_text())
    deadline = time.monotonic() + 10
    while alive(child):
        assert time.monotonic() < deadline, "the forked child outlived its instance"
        await asyncio.sleep(0.02)


async def test_a_template_a_handler_stopped_is_continued_and_cold_starts_go_on(
    runtime: Runtime, spec: SpecFactory
) -> None:
    """1. A handler stops the template process (SIGSTOP to its parent). 2. Another function starts cold.
    Result: it is served within seconds (FORK_WAIT, then the template is continued), not failed after the
    60 s start timeout, as every cold start after it was."""
    template, _ = await call(runtime, spec("stop_template"))
    try:
        started = time.monotonic()
        value, res = await call(runtime, spec("echo"), {"n": 1})
        assert value["payload"] == {"n": 1} and res.cold_start
        assert time.monotonic() - started < 10
    finally:
        os.kill(template, signal.SIGCONT)


async def test_a_template_a_handler_killed_is_named_in_the_log_and_the_answers(
    runtime: Runtime, spec: SpecFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """1. Another function's call is in flight (a 30 s sleep). 2. A handler SIGKILLs the template process,
    its parent. Result: both calls are answered InstanceCrashed naming the template's death (they said
    only "exited"), the node's log says once that the template died and how; the next call is served by
    a new template."""
    sleeper = spec("sleep", max=1)
    victim = asyncio.ensure_future(call(runtime, sleeper, {"sleep": 30}))
    await until(lambda: runtime._pool(sleeper).instances and runtime._pool(sleeper).instances[0].inflight)
    with pytest.raises(InstanceCrashed) as killer:
        await call(runtime, spec("kill_template"))
    with pytest.raises(InstanceCrashed) as held:
        await victim
    for answered in (killer, held):
        assert "the template process it was forked from was killed by signal 9 (SIGKILL)" in str(
            answered.value
        ) or "the template process it was forked from ended" in str(answered.value), answered.value
    died = [r.getMessage() for r in caplog.records if "the template process (pid" in r.getMessage()]
    assert len(died) == 1 and "every instance of every function" in died[0], died
    value, res = await call(runtime, spec("echo"), {"n": 2})
    assert value["payload"] == {"n": 2} and res.cold_start


async def test_a_stop_closes_idle_instances_and_takes_what_they_started(
    spec: SpecFactory, settings: Settings
) -> None:
    """1. A handler starts a long `sleep` child and returns; another request holds a second instance in a
    10 s sleep. 2. The runtime stops with no grace. Result: the held request is answered InstanceCrashed at
    once (its instance killed); the idle instance exits on its own (closed, not killed: its last lines go
    out first), and its child is gone with it; the stop takes well under the 2 s a close may take."""
    runtime = Runtime(settings)
    await runtime.start()
    idle, busy = spec("spawn", max=1), spec("sleep", max=1)
    value, _ = await call(runtime, idle)
    [inst] = runtime._pool(idle).instances
    held = asyncio.ensure_future(call(runtime, busy, {"sleep": 10}))
    await until(lambda: runtime._pool(busy).instances and runtime._pool(busy).instances[0].inflight)
    t = time.monotonic()
    await runtime.stop(0)
    assert time.monotonic() - t < 1.5
    with pytest.raises(InstanceCrashed):
        await held
    assert inst.exited.is_set()
    await until(lambda: not alive(value["child"]), timeout=5, message="the child gone with its instance")
