"""Stopping tasks (framework/tasks.py): bounded waits, cut short by a second signal."""

from __future__ import annotations

import asyncio
import time

from framework.tasks import wait_or_cancel


async def test_wait_or_cancel_waits_for_tasks_that_end_in_time() -> None:
    quick = asyncio.ensure_future(asyncio.sleep(0.01))
    assert await wait_or_cancel([quick], 5, asyncio.Event()) is True
    assert quick.done() and not quick.cancelled()


async def test_wait_or_cancel_cancels_what_is_left_at_the_timeout() -> None:
    slow = asyncio.ensure_future(asyncio.sleep(30))
    assert await wait_or_cancel([slow], 0.05) is False
    assert slow.cancelled()


async def test_hurry_ends_the_wait_at_once_and_cancels_what_is_left() -> None:
    """1. Wait up to 30 s for a task that sleeps 30 s. 2. Set `hurry`. Result: the wait ends at once,
    the task cancelled; a task already done is left as it was."""
    hurry = asyncio.Event()
    done = asyncio.ensure_future(asyncio.sleep(0))
    await done
    slow = asyncio.ensure_future(asyncio.sleep(30))
    waiting = asyncio.ensure_future(wait_or_cancel([done, slow], 30, hurry))
    await asyncio.sleep(0)
    assert not waiting.done()
    started = time.monotonic()
    hurry.set()
    assert await asyncio.wait_for(waiting, 3) is False
    assert time.monotonic() - started < 1
    assert slow.cancelled() and not done.cancelled()
