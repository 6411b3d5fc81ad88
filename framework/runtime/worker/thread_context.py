"""Inside an instance: a thread a handler starts logs as the handler's invocation.

An invocation's lines are told apart by a contextvar (`current_invocation`, `watchdog.py`), and on Python
3.11 a `threading.Thread` starts with an empty context and `ThreadPoolExecutor.submit` runs its call in the
worker thread's context: a line printed by a thread the invocation started reached the node's log untagged
and no record, though DESIGN.md section 13 leaves out only the lines of threads it did *not* start.
`install` makes both carry the context of the code that starts them, as Python 3.14 does for threads with
`sys.flags.thread_inherit_context` and as opentelemetry-instrumentation-threading does for a trace:

- `Thread.start` copies the caller's context and runs the thread's `run` in it: the invocation, its trace
  (`current_traceparent`) and its OpenTelemetry span; an exception `run` raises is reported
  (`threading.excepthook`) in it too, so its traceback is the invocation's log;
- `ThreadPoolExecutor.submit` (and so `loop.run_in_executor`) runs each call in a copy of the submitter's
  context, and starts the pool's threads (lazily, on a submit) in an empty one: a worker thread serves
  every invocation's calls, so its own code (a future's done-callbacks) belongs to none.

A thread started outside any invocation (at import, by the instance itself) has no invocation in its copy,
so its lines stay untagged. A thread outlives nothing of its context: one still running after its
invocation ended logs to the node's log under the invocation's id (its record, already sent, gets nothing
more). So does a long-lived thread a library starts lazily on first use during an invocation (a client's
sender thread): every later line of it carries that first invocation; create such clients at import.
Cost: a context copy and a call through it per thread start and per submitted call (about 0.3 us;
`copy_context` copies no values, only a reference).
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

_INSTALLED = "_faas_context_installed"


def _run_in(context: contextvars.Context, run: Callable[[], object], thread: threading.Thread) -> None:
    """`run()` in `context`; then the thread drops the wrapper, which refers to the thread: a finished
    thread is freed at once, not by the garbage collector with its starter's context."""
    try:
        context.run(_reported, run, thread)
    finally:
        vars(thread).pop("run", None)


def _reported(run: Callable[[], object], thread: threading.Thread) -> None:
    """`run()`; what it raises is handed to `threading.excepthook` here, in the thread's context, as
    `Thread` would hand it after `run` returned (outside that context: the traceback, the invocation's
    own log, reached the node untagged and no record)."""
    try:
        run()
    except BaseException as exc:  # SystemExit too: the hook leaves it out, as for any thread
        threading.excepthook(threading.ExceptHookArgs((type(exc), exc, exc.__traceback__, thread)))
        del exc  # no cycle through the frame


def install() -> None:
    """Make `Thread.start` and `ThreadPoolExecutor.submit` carry the caller's context (once per process)."""
    if getattr(threading.Thread, _INSTALLED, False):
        return
    start = threading.Thread.start
    submit: Callable[..., Future[Any]] = ThreadPoolExecutor.submit

    @functools.wraps(start)
    def start_in_context(self: threading.Thread) -> None:
        if self.ident is None:  # not started yet (a second `start` raises, and wraps nothing twice)
            # An attribute of this thread object, so a subclass's own `run` is what runs in the copy.
            run = functools.partial(_run_in, contextvars.copy_context(), self.run, self)
            self.run = run  # type: ignore[method-assign]
        start(self)

    def submit_in_context(
        self: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Future[Any]:
        call = contextvars.copy_context().run
        # Submitted from an empty context (a new one: one context cannot be entered by two threads at
        # once), so a pool thread this submit starts starts empty.
        return contextvars.Context().run(submit, self, call, fn, *args, **kwargs)

    threading.Thread.start = start_in_context  # type: ignore[method-assign]
    ThreadPoolExecutor.submit = submit_in_context  # type: ignore[method-assign, assignment]
    setattr(threading.Thread, _INSTALLED, True)
