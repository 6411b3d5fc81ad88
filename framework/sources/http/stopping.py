"""What a stopping node answers the HTTP requests that invoke functions and are still in flight.

On SIGTERM the node stops accepting connections and gives what is in flight FAAS_SHUTDOWN_GRACE seconds
(DESIGN.md section 6: drain in-flight work, bounded). A request still waiting for its body then is
answered 429 `Overloaded` by the body reader (`body.py`). A request whose function has not answered when
the grace is up is cut here: its task is cancelled, which cancels the invocation (the instance gets its
CANCEL, as when a caller leaves), and the route answers 502 `InstanceCrashed` in the contract's body (the
instance is about to be stopped with the node). Without this, uvicorn's own graceful-shutdown timeout
cancelled those requests and answered a plain-text 500 that no client of the contract can read.

Tracking costs a set insert and removal per request (about 0.1 us); nothing runs until the node stops.
"""

from __future__ import annotations

import asyncio

from framework.errors import InstanceCrashed


class InflightRequests:
    """The tasks of the HTTP requests in flight, and their cut once the stop's grace is up."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[object]] = set()
        self.cut = False
        """The grace is up: a request cancelled now was cancelled here (`error`)."""
        self._why = ""

    def cut_at(self, deadline: float, grace: float, why: str | None = None) -> None:
        """Cut what is still in flight at loop time `deadline` (the end of the `grace` seconds); `why`
        replaces "its grace ran out" in what the callers are told."""
        self._why = why or f"its FAAS_SHUTDOWN_GRACE ({grace:g} s) ran out"
        asyncio.get_running_loop().call_at(deadline, self._cut)

    def _cut(self) -> None:
        self.cut = True
        for task in list(self.tasks):
            task.cancel()

    def error(self) -> InstanceCrashed | None:
        """In an `except CancelledError` of a route: the error to answer when the cut cancelled this request
        (its task is then no longer cancelling), or None when something else did (re-raise)."""
        task = asyncio.current_task()
        if not self.cut or task is None or task not in self.tasks:
            return None
        task.uncancel()
        return InstanceCrashed(f"the node is stopping: {self._why} before the function answered")
