"""`def` handler threads inside an instance (framework/runtime/worker/threads.py), without a node. Limits are
in `RUN_CLOCK` time, kept by `keep` on the test's loop (as an instance's watchdog keeps it)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from framework.run_clock import RUN_CLOCK, keep
from framework.runtime.worker.threads import HandlerThreads


def _now() -> float:
    """`RUN_CLOCK` time on the running loop, which samples it from now on."""
    loop = asyncio.get_running_loop()
    keep(loop)
    return RUN_CLOCK.now(loop)


async def _until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def _abandon(threads: HandlerThreads, release: threading.Event, deadline: float) -> None:
    """Start a call that waits on `release`, then cancel it (as a time limit or the node would)."""
    started = threading.Event()

    def wait() -> str:
        started.set()
        release.wait(30)
        return "late"

    task = asyncio.ensure_future(threads.run(wait, deadline))
    await asyncio.to_thread(started.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_abandoned_calls_past_their_limit_count_until_their_threads_return() -> None:
    """1. A pool of 2 threads; a call past its limit is abandoned (its caller was answered Timeout). 2. A
    quick call. 3. A second call past its limit is abandoned. 4. The handlers return.
    Result: 1 leaves 1 stuck thread and no alarm; 2 is served; 3 makes both stuck and raises the alarm
    once, with 2; 4 frees both threads (0 stuck) and they serve again."""
    release = threading.Event()
    alarms: list[int] = []
    threads = HandlerThreads(2, "t", alarms.append)
    now = _now()
    await _abandon(threads, release, now)
    await _until(lambda: threads.stuck == 1)
    assert alarms == []
    assert await threads.run(lambda: "ok", now + 10) == "ok"
    await _abandon(threads, release, now)
    await _until(lambda: alarms == [2])
    assert threads.stuck == 2
    release.set()
    await _until(lambda: threads.stuck == 0)
    assert await threads.run(lambda: "again", now + 10) == "again"


async def test_a_call_cancelled_before_its_limit_is_stuck_only_once_the_limit_passes() -> None:
    """1. A pool of 1 thread; the node cancels a running call 0.3 s before its limit (a chain abort, a
    caller that gave up). Result: not stuck, no alarm, at first; once the limit has passed with the call
    still running, stuck and the alarm; a call that returns before its limit is never counted."""
    release = threading.Event()
    alarms: list[int] = []
    threads = HandlerThreads(1, "t", alarms.append)
    limit = _now() + 0.3
    await _abandon(threads, release, limit)
    assert threads.stuck == 0 and alarms == []
    await _until(lambda: alarms == [1])
    assert RUN_CLOCK.now(asyncio.get_running_loop()) >= limit and threads.stuck == 1
    release.set()
    await _until(lambda: threads.stuck == 0)

    quick = threading.Event()
    early = HandlerThreads(1, "t", alarms.append)
    checks: list[bool] = []
    late = early._late

    def checked(job: Any, at: asyncio.AbstractEventLoop) -> None:
        checks.append(job.done())
        late(job, at)

    early._late = checked  # type: ignore[method-assign,assignment]
    await _abandon(early, quick, _now() + 0.3)
    quick.set()  # returns before its limit
    await _until(lambda: checks == [True])  # the limit's check ran and found the call done
    assert early.stuck == 0 and alarms == [1]


async def test_a_call_cancelled_before_its_thread_started_is_not_stuck() -> None:
    """1. A pool of 1 thread, busy with a call. 2. A second call, queued, is cancelled past its limit
    before it starts. Result: no thread counts as stuck for it (the queued job is dropped)."""
    release = threading.Event()
    threads = HandlerThreads(1, "t", lambda n: None)
    now = _now()
    busy = asyncio.ensure_future(threads.run(lambda: release.wait(10), now + 10))
    queued = asyncio.ensure_future(threads.run(lambda: "never", now))
    await asyncio.sleep(0)  # both tasks have submitted their job: the second waits behind the first
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    release.set()
    assert await busy is True
    assert threads.stuck == 0
