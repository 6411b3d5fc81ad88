"""Stopping asyncio tasks: the one way the node cancels work, waits for it to be gone, and bounds a wait.

`cancel_and_wait` awaits with `gather(..., return_exceptions=True)` rather than `suppress(CancelledError)`
around `await task`: the latter would also swallow a cancellation of the *caller* that lands while it waits.

`within` is `asyncio.wait_for` without its Python 3.11 flaw: when the caller is cancelled just as the
awaited work finishes, 3.11's `wait_for` returns the result and the cancellation is lost (gh-86296, fixed
in 3.12 by building `wait_for` on `asyncio.timeout`). A loop that lost its cancellation runs on, and whoever
cancelled it waits for it for ever: a node's stop hung that way, in a loop that bounded each lag query.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def cancelled_here() -> bool:
    """Whether the running task is being cancelled: a cancellation of the caller, not a CancelledError that
    only came out of work it awaited (aiokafka, closing with the broker gone, re-raises the CancelledError
    of a task of its own it cancelled)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def within(work: Awaitable[T], seconds: float) -> T:
    """Await `work` for at most `seconds`; TimeoutError after that (the work is cancelled)."""
    async with asyncio.timeout(seconds):
        return await work


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any] | None]) -> None:
    """Cancel every task not done yet and wait until each has ended; their outcomes are discarded."""
    live = [t for t in tasks if t is not None and not t.done()]
    for task in live:
        task.cancel()
    if live:
        await asyncio.gather(*live, return_exceptions=True)


async def wait_or_cancel(
    tasks: Iterable[asyncio.Future[Any]], timeout: float, hurry: asyncio.Event | None = None
) -> bool:
    """Wait up to `timeout` seconds for `tasks` (less if `hurry` is set meanwhile), then cancel and wait for
    what is left.

    Returns True when everything ended in time.
    """
    tasks = list(tasks)
    if not tasks:
        return True
    if hurry is None:
        _, pending = await asyncio.wait(tasks, timeout=timeout)
    else:
        hurried = asyncio.ensure_future(hurry.wait())
        either: list[asyncio.Future[Any]] = [asyncio.gather(*tasks, return_exceptions=True), hurried]
        await asyncio.wait(
            either,
            timeout=timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        hurried.cancel()
        pending = {t for t in tasks if not t.done()}
    await cancel_and_wait(pending)
    return not pending
