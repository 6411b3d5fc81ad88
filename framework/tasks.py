"""Stopping asyncio tasks: the one way the node cancels work and waits for it to be gone.

`cancel_and_wait` awaits with `gather(..., return_exceptions=True)` rather than `suppress(CancelledError)`
around `await task`: the latter would also swallow a cancellation of the *caller* that lands while it waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any] | None]) -> None:
    """Cancel every task not done yet and wait until each has ended; their outcomes are discarded."""
    live = [t for t in tasks if t is not None and not t.done()]
    for task in live:
        task.cancel()
    if live:
        await asyncio.gather(*live, return_exceptions=True)


async def wait_or_cancel(tasks: Iterable[asyncio.Future[Any]], timeout: float) -> bool:
    """Wait up to `timeout` seconds for `tasks`, then cancel and wait for what is left.

    Returns True when everything ended in time.
    """
    tasks = list(tasks)
    if not tasks:
        return True
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    await cancel_and_wait(pending)
    return not pending
