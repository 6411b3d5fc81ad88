"""`def` handler threads inside an instance (framework/runtime/worker/threads.py), without a node."""

from __future__ import annotations

import asyncio
import threading

import pytest

from framework.runtime.worker.threads import HandlerThreads


async def test_abandoned_calls_count_until_their_threads_return_and_all_stuck_is_said_once_full() -> None:
    """1. A pool of 2 threads; a call that waits on an event is cancelled (its caller gave up). 2. A call
    queued behind nothing else finishes normally. 3. A second waiting call is cancelled. 4. The event is
    set. Result: 1 leaves 1 stuck thread and no alarm; 2 is served; 3 makes both stuck and raises the
    alarm once, with 2; 4 frees both threads (0 stuck) and they serve again."""
    release = threading.Event()
    alarms: list[int] = []
    threads = HandlerThreads(2, "t", alarms.append)

    async def abandon() -> None:
        started = threading.Event()

        def wait() -> str:
            started.set()
            release.wait(30)
            return "late"

        task = asyncio.ensure_future(threads.run(wait))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    await abandon()
    assert threads.stuck == 1 and alarms == []
    assert await threads.run(lambda: "ok") == "ok"
    await abandon()
    await asyncio.sleep(0)  # the alarm runs after the cancelled call's own answer
    assert threads.stuck == 2 and alarms == [2]
    release.set()
    deadline = asyncio.get_running_loop().time() + 10
    while threads.stuck:
        assert asyncio.get_running_loop().time() < deadline, "the threads never counted as free"
        await asyncio.sleep(0.01)
    assert await threads.run(lambda: "again") == "again"


async def test_a_call_cancelled_before_its_thread_started_is_not_stuck() -> None:
    """1. A pool of 1 thread, busy with a call. 2. A second call, queued, is cancelled before it starts.
    Result: no thread counts as stuck for it (the queued job is dropped), and the first call finishes."""
    release = threading.Event()
    threads = HandlerThreads(1, "t", lambda n: None)
    busy = asyncio.ensure_future(threads.run(lambda: release.wait(10)))
    queued = asyncio.ensure_future(threads.run(lambda: "never"))
    await asyncio.sleep(0)  # both tasks have submitted their job: the second waits behind the first
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert threads.stuck == 0
    release.set()
    assert await busy is True
