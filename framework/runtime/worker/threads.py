"""The threads `def` handlers run on inside an instance, and what happens when they are all stuck.

A `def` handler runs on a thread of a pool of at most `size` threads (MAX_THREADS, fewer when the function's
`concurrency` is lower). A thread cannot be cancelled: when its invocation runs past its time limit (or its
caller gives up) the caller is answered, but the thread runs on until the handler returns. Such a thread is
*stuck*. While some threads are stuck the others serve; once every one is, the instance can run no
invocation of its function until a handler returns, which may be never. Then the instance leaves
(`on_all_stuck`), so the node answers what it still held `InstanceCrashed` and starts a fresh instance for
the next request: the replacement DESIGN.md section 3 asks for when an instance cannot carry out a
cancellation. Counting costs nothing on the common path: a done callback only on a call that was abandoned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class HandlerThreads:
    """A pool of `size` threads that counts the ones left running by abandoned calls."""

    def __init__(self, size: int, name: str, on_all_stuck: Callable[[int], None]) -> None:
        self.size = size
        self.pool = ThreadPoolExecutor(size, thread_name_prefix=name)
        self.stuck = 0
        """Threads still running a call whose caller was answered already."""
        self._on_all_stuck = on_all_stuck

    async def run(self, call: Callable[[], Any]) -> Any:
        """`call()` on a thread; cancelling this abandons the call (the thread, if it started, runs on)."""
        job = self.pool.submit(call)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            if not job.done():  # started (a queued job is cancelled with the wrapper): the thread is stuck
                loop = asyncio.get_running_loop()
                self.stuck += 1
                job.add_done_callback(lambda _: loop.call_soon_threadsafe(self._freed))
                if self.stuck >= self.size:
                    loop.call_soon(self._on_all_stuck, self.stuck)  # after this call's own answer is sent
            raise

    def _freed(self) -> None:
        self.stuck -= 1
