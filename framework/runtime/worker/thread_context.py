"""Inside an instance: a thread a handler starts logs as the handler's invocation.

An invocation's lines are told apart by a contextvar (`current_invocation`, `watchdog.py`), and on Python
3.11 a `threading.Thread` starts with an empty context and `ThreadPoolExecutor.submit` runs its call in the
worker thread's context: a line printed by a thread the invocation started reached the node's log untagged
and no record, though DESIGN.md section 13 leaves out only the lines of threads it did *not* start.
`install` makes both carry the context of the code that starts them, as Python 3.14 does for threads with
`sys.flags.thread_inherit_context` and as opentelemetry-instrumentation-threading does for a trace:

- `Thread.start` copies the caller's context and runs the thread's `run` in it;
- `ThreadPoolExecutor.submit` (and so `loop.run_in_executor`) runs each call in a copy of the submitter's
  context, so a pool thread started by one invocation does not log later calls as that invocation.

A thread started outside any invocation (at import, by the instance itself) has no invocation in its copy,
so its lines stay untagged, and a thread that outlives its invocation logs to the node's log with the
invocation's id while its record, already sent, keeps nothing more. Cost: a context copy per thread start
and per submitted call (about 0.3 us; `contextvars.copy_context` copies no values, only a reference).
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

_INSTALLED = "_faas_context_installed"


def install() -> None:
    """Make `Thread.start` and `ThreadPoolExecutor.submit` carry the caller's context (once per process)."""
    if getattr(threading.Thread, _INSTALLED, False):
        return
    start = threading.Thread.start
    submit = ThreadPoolExecutor.submit

    @functools.wraps(start)
    def start_in_context(self: threading.Thread) -> None:
        # An attribute of this thread object: a subclass's own `run` is what runs, in the copy.
        self.run = functools.partial(contextvars.copy_context().run, self.run)  # type: ignore[method-assign]
        start(self)

    def submit_in_context(
        self: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Future[Any]:
        return submit(self, contextvars.copy_context().run, fn, *args, **kwargs)

    threading.Thread.start = start_in_context  # type: ignore[method-assign]
    ThreadPoolExecutor.submit = submit_in_context  # type: ignore[method-assign, assignment]
    setattr(threading.Thread, _INSTALLED, True)
