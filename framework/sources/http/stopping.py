"""What a stopping node answers the HTTP requests that invoke functions and are still in flight.

On SIGTERM the node stops accepting connections and gives what is in flight FAAS_SHUTDOWN_GRACE seconds
(DESIGN.md section 6: drain in-flight work, bounded). A request still waiting for its body then is
answered 429 `Overloaded` by the body reader (`body.py`). A request whose function has not answered when
the grace is up is cut here: its task is cancelled, which cancels the invocation (the instance gets its
CANCEL, as when a caller leaves), and the route answers 502 `InstanceCrashed` in the contract's body (the
instance is about to be stopped with the node). Without this, uvicorn's own graceful-shutdown timeout
cancelled those requests and answered a plain-text 500 that no client of the contract can read.

An event raised over HTTP (`POST /events*`) that waits between retry attempts when the node stops has no
next owner to hand it to (a Kafka event's partition has one): its attempts end at once with the last one's
error (`retries_end_on_stop`), as a scheduled run's do, and its caller gets that answer instead of waiting
while the node makes attempts after its SIGTERM (a 10 s and a 20 s backoff held a stop 31.5 s).

Tracking costs a set insert and removal per request (about 0.1 us); nothing runs until the node stops.
"""

from __future__ import annotations

import asyncio

from framework.errors import InstanceCrashed
from framework.retry import HANDOVER, Handover


class EndsOnStop:
    """The context of one HTTP event's invocation: a `give_up` handover its listeners inherit, known to
    `InflightRequests.end_retries` while it runs. A class, not a generator context manager: every HTTP
    event passes through it (about 0.9 us, against 2.1)."""

    __slots__ = ("_handover", "_retrying", "_token")

    def __init__(self, retrying: set[Handover], stopping: bool) -> None:
        self._retrying = retrying
        self._handover = Handover(give_up=True)
        if stopping:
            self._handover.request()

    def __enter__(self) -> None:
        self._token = HANDOVER.set(self._handover)  # the listeners' tasks, made within, inherit it
        self._retrying.add(self._handover)

    def __exit__(self, *exc: object) -> None:
        self._retrying.discard(self._handover)
        HANDOVER.reset(self._token)


class InflightRequests:
    """The tasks of the HTTP requests in flight, and their cut once the stop's grace is up."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[object]] = set()
        self.cut = False
        """The grace is up: a request cancelled now was cancelled here (`error`)."""
        self._why = ""
        self._retrying: set[Handover] = set()
        """The handovers of the HTTP events in progress (`retries_end_on_stop`)."""
        self._stopping = False

    def retries_end_on_stop(self) -> EndsOnStop:
        """Run an HTTP event's invocation within this: its retries end once the node stops (`end_retries`)."""
        return EndsOnStop(self._retrying, self._stopping)

    def end_retries(self) -> None:
        """The node stops: events waiting between attempts end now with their last error, and those in an
        attempt make no other."""
        self._stopping = True
        for handover in self._retrying:
            handover.request()

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
