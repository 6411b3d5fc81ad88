"""The threads `def` handlers run on inside an instance, and what happens when they are all stuck.

A `def` handler runs on a thread of a pool of at most `size` threads (MAX_THREADS, fewer when the function's
`concurrency` is lower). A thread cannot be cancelled: when its caller is answered without it (the call ran
past its time limit, or the node cancelled it: the caller gave up, or a chain aborted) the thread runs on
until the handler returns. A thread still running such a call once the call's time limit has passed is
*stuck*: a call cancelled early is not, until its limit passes. While some threads are stuck the others
serve; once every one is, the instance can run no invocation of its function until a handler returns, which
may be never. Then it leaves (`on_all_stuck`), so the node answers what it still held `InstanceCrashed`
and starts a fresh instance for the next request (our choice: the instance did answer the cancellations,
but an instance that can serve nothing is worth replacing). Counting costs nothing on the common path: a
done callback and a timer only on a call that was abandoned.

The node is told how many threads abandoned calls hold (`on_held`, at each change: when a call is abandoned
with its thread running, and when such a thread returns), stuck or not: it routes no more calls to the
instance than it has threads free. Without that a call sent to an instance whose only thread ran an
abandoned one waited in the instance for a thread, its own limit running (Timeout for a call that did
nothing wrong), or was answered InstanceCrashed when the instance left with every thread stuck.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from framework.run_clock import RUN_CLOCK


class HandlerThreads:
    """A pool of `size` threads that counts the ones left running by abandoned calls past their limit."""

    def __init__(
        self,
        size: int,
        name: str,
        on_all_stuck: Callable[[int], None],
        on_held: Callable[[int], None] | None = None,
    ) -> None:
        self.size = size
        self.pool = ThreadPoolExecutor(size, thread_name_prefix=name)
        self.stuck = 0
        """Threads still running a call whose caller was answered and whose time limit has passed."""
        self.held = 0
        """Threads still running a call whose caller was answered (stuck or not yet)."""
        self._on_all_stuck = on_all_stuck
        self._on_held = on_held

    async def run(self, call: Callable[[], Any], deadline: float) -> Any:
        """`call()` on a thread; `deadline` is the call's time limit in `RUN_CLOCK` time. Cancelling this
        abandons the call (the thread, if it started, runs on)."""
        job = self.pool.submit(call)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            if not job.done():  # started (a queued job is cancelled with the wrapper): it runs on
                loop = asyncio.get_running_loop()
                RUN_CLOCK.call_at(loop, deadline, self._late, job, loop)
                self._held_by(1)
                job.add_done_callback(lambda _: _soon(loop, lambda: self._held_by(-1)))
            raise

    def _held_by(self, change: int) -> None:
        self.held += change
        if self._on_held is not None:
            self._on_held(self.held)

    def _late(self, job: Future[Any], loop: asyncio.AbstractEventLoop) -> None:
        """An abandoned call's time limit passed: its thread is stuck if the call still runs."""
        if job.done():
            return
        self.stuck += 1
        job.add_done_callback(lambda _: _soon(loop, self._freed))
        if self.stuck >= self.size:
            self._on_all_stuck(self.stuck)

    def _freed(self) -> None:
        """A stuck thread's call returned: the thread serves again."""
        self.stuck -= 1


def _soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """`callback` on `loop` from a pool thread; nothing once the loop is closed (the instance leaving)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)
