"""Time limits, blocked loops, exceptions, bad return values and dying instances."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from framework.errors import FunctionError, InstanceCrashed, Timeout
from framework.runtime import Runtime
from tests.runtime.conftest import SpecFactory, call, sample, until


async def test_async_timeout_cancels_the_request(runtime: Runtime, spec: SpecFactory) -> None:
    s = spec("sleep", timeout=1, max=1)
    t = time.monotonic()
    with pytest.raises(Timeout):
        await call(runtime, s, {"sleep": 10})
    assert time.monotonic() - t < 3
    [iid] = runtime.instance_ids(s.name)
    value, _ = await call(runtime, s, {"sleep": 0})
    assert value["instance"] == iid  # the instance cut it off itself and lives on


async def test_blocked_loop_kills_instance(runtime: Runtime, spec: SpecFactory) -> None:
    s = spec("block", timeout=1, max=1)
    first, _ = await call(runtime, s, {"block": 0})  # started: the timeline begins when the request is sent
    pid = first["unblocked"]
    t = time.monotonic()
    blocked = asyncio.ensure_future(call(runtime, s, {"block": 8}))
    # Timeline, not a wait: the node kills at limit + 1 s grace; a request sent inside that window is not
    # past its own limit then, so it is answered InstanceCrashed rather than Timeout.
    await asyncio.sleep(max(0.0, t + 1.3 - time.monotonic()))
    other = asyncio.ensure_future(call(runtime, s, {"block": 0}))
    with pytest.raises(Timeout):
        await blocked
    assert time.monotonic() - t < 3
    with pytest.raises(InstanceCrashed):
        await other
    await until(lambda: not _alive(pid), message="blocked instance killed")
    value, res = await call(runtime, s, {"block": 0})
    assert value["unblocked"] != pid and res.cold_start
    assert sample(runtime, "faas_instance_crashes_total", function=s.name, reason="blocked") == 1


async def test_exception_is_function_error(runtime: Runtime, spec: SpecFactory) -> None:
    with pytest.raises(FunctionError, match=r"ValueError: bad input: \{'x': 1\}") as info:
        await call(runtime, spec("boom"), {"x": 1})
    assert "Traceback" in "".join(getattr(info.value, "__notes__", []))


async def test_non_json_return_is_function_error(runtime: Runtime, spec: SpecFactory) -> None:
    with pytest.raises(FunctionError, match="returned a value that is not JSON: set"):
        await call(runtime, spec("notjson"))


async def test_import_error_is_function_error(runtime: Runtime, spec: SpecFactory) -> None:
    s = spec("handle", module="broken")
    with pytest.raises(FunctionError, match="RuntimeError: cannot import me"):
        await call(runtime, s)
    assert runtime.instance_count(s.name) == 0


async def test_exit_is_instance_crashed_and_replaced(runtime: Runtime, spec: SpecFactory) -> None:
    s = spec("exit1", max=1)
    with pytest.raises(InstanceCrashed):
        await call(runtime, s)
    assert runtime.instance_count(s.name) == 0
    echo = spec("echo", name=s.name, max=1)
    value, res = await call(runtime, echo)
    assert res.cold_start and value["payload"] is None


async def test_kill_9_is_instance_crashed(runtime: Runtime, spec: SpecFactory) -> None:
    s = spec("sleep", max=1)
    first, _ = await call(runtime, s, {"sleep": 0})
    held = [asyncio.ensure_future(call(runtime, s, {"sleep": 30})) for _ in range(3)]
    await until(lambda: runtime.inflight() == 3)
    t = time.monotonic()
    os.kill(first["pid"], signal.SIGKILL)
    for fut in held:
        with pytest.raises(InstanceCrashed):
            await fut
    assert time.monotonic() - t < 2
    value, _ = await call(runtime, s, {"sleep": 0})
    assert value["pid"] != first["pid"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie is dead, only not reaped yet
    except OSError:
        return False
