"""The retry policy of event and scheduled invocations (DESIGN.md section 15).

A failed attempt whose error type is in the function's `retry.on` is tried again after `retry.delay(n)`
seconds (`backoff`, doubled per retry, at most 30 s), up to `retry.attempts` more times. Invariants:

- Only the `event` and `schedule` triggers are retried; direct and warm-up invocations never are.
- Each attempt is its own invocation with its own time limit and `ctx.attempt` (1, 2, ...): events get a
  fresh random invocation id per attempt; a scheduled one's given id gains `:<attempt>` from attempt 2 on,
  so every node derives the same ids.
- The error that ends the attempts carries `attempts` (the last `ctx.attempt`), which the Kafka source
  writes into the dead-letter copy.
- Each retry starts on the function's revision served at that moment (a fix deployed during a backoff
  runs), under that revision's policy; a function no longer productive, or an event's listener whose
  revision no longer lists the event's type, gets no more attempts.

Handing over: a source that must give its event back while the event waits between attempts (a
rebalance took its partition, the node stops) does not wait out the backoff. It sets a `Handover` in the
context of the task that runs the event (`HANDOVER`); `Handover.request()` cancels that task at once if
it is in a backoff, or as soon as it enters one. Its record then stays uncommitted and the partition's
next owner redoes the event from attempt 1 (at-least-once). A running attempt is never cut short by this.

Giving up: a scheduled run has no next owner (its tick is written as fired, so no leader fires it again).
Its `Handover(give_up=True)`, requested when the node stops, ends the attempts instead: a run waiting
between attempts, or entering a wait, stops at once with the last attempt's error, and says so in the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import replace

from framework.control.spec import FunctionSpec
from framework.errors import FaasError
from framework.types import Invocation, InvokeResult, new_id

log = logging.getLogger("faas.retry")

RETRIED_TRIGGERS = frozenset({"event", "schedule"})
"""Triggers the retry policy applies to."""

Attempt = Callable[[FunctionSpec, Invocation], Awaitable[InvokeResult]]
"""Runs one attempt: the result, or raises the FaasError it ended with."""


class Handover:
    """Lets a source take back the event a task runs while that event waits between attempts, or (with
    `give_up`) end the attempts of a run that has no other owner."""

    __slots__ = ("_requested", "_told", "active", "give_up", "on_wait", "owner", "requested", "waiting")

    def __init__(
        self,
        owner: asyncio.Task[object] | None = None,
        give_up: bool = False,
        on_wait: Callable[[Handover, int], None] | None = None,
    ) -> None:
        self.owner = owner if owner is not None or give_up else asyncio.current_task()
        """The task to cancel: the one that runs the event (its listeners' tasks go with it)."""
        self.give_up = give_up
        """Requested, the attempts end with the last error instead: nobody cancels anything."""
        self.requested = False
        self.waiting = 0
        """Backoffs in progress under this handover (one per retrying listener of the event)."""
        self.active = 0
        """Listener invocations of the event in progress (`enter`, `leave`), those in a backoff included."""
        self.on_wait = on_wait
        """Told `(self, 1)` when the event starts to wait between attempts (every listener invocation in
        progress is in a backoff: none holds an instance) and `(self, -1)` when it stops: the Kafka source
        does not count a waiting event as work in flight."""
        self._told = False
        self._requested: asyncio.Event | None = None
        """Set by `request`: ends the backoffs of a `give_up` handover (made by the first: the Kafka
        source makes a handover per event, which never needs one)."""

    def request(self) -> bool:
        """Hand the event over: cancel its task now if it waits between attempts (True), else as soon as
        it starts to wait (False: it is running an attempt, or has none to retry). With `give_up`, the
        waits end instead, and no new one begins."""
        self.requested = True
        if self._requested is not None:
            self._requested.set()
        if self.give_up:
            return bool(self.waiting)
        if self.waiting and self.owner is not None:
            self.owner.cancel()
            return True
        return False

    def enter(self) -> None:
        """A listener invocation of the event begins (the invoker's `call`)."""
        self.active += 1
        if self._told:
            self._tell()

    def leave(self) -> None:
        self.active -= 1
        if self.waiting:
            self._tell()

    def _tell(self) -> None:
        """Tell `on_wait` when whether the event waits changed."""
        now = 0 < self.active <= self.waiting
        if now != self._told and self.on_wait is not None:
            self._told = now
            self.on_wait(self, 1 if now else -1)

    async def wait(self, delay: float) -> bool:
        """Sleep `delay` seconds unless requested first; whether it was (a `give_up` handover)."""
        if not self.requested:
            if self._requested is None:
                self._requested = asyncio.Event()
            self.waiting += 1
            try:
                await asyncio.wait_for(self._requested.wait(), delay)
            except TimeoutError:
                pass
            finally:
                self.waiting -= 1
        return self.requested


HANDOVER: ContextVar[Handover | None] = ContextVar("faas_retry_handover", default=None)
"""The handover of the event the current task runs, if its source set one."""


def attempt_id(invocation_id: str | None, attempt: int) -> str:
    """The invocation id of `attempt`: a given id is kept for attempt 1 and suffixed after; else random."""
    if invocation_id is None:
        return new_id()
    return invocation_id if attempt == 1 else f"{invocation_id}:{attempt}"


async def with_retries(
    spec: FunctionSpec,
    first: Invocation,
    derived_ids: bool,
    attempt: Attempt,
    retried: Callable[[str, str], None] | None = None,
    current: Callable[[str], FunctionSpec | None] | None = None,
) -> InvokeResult:
    """Run `attempt` with `first`, then with copies of it (attempt n, its own id: `first`'s id plus `:n`
    when `derived_ids`, else a fresh one), until one succeeds, fails with an error type not in
    `spec.retry.on`, or the attempts run out; `retried(function, error_type)` is called before each retry.
    Raises the last attempt's FaasError with its `attempts` set.

    `current(uuid)` gives the function's productive revision now (None: not productive any more). Each
    retry runs on the revision served when it starts, under that revision's policy, as a new invocation
    would: a fix deployed during the backoff is what the next attempt runs, and an undeploy, or a revision
    that no longer lists the event's type, ends the attempts (the last error stands)."""
    given = first.invocation_id if derived_ids else None
    error: FaasError | None = None
    n = 1
    while True:
        inv = first if n == 1 else replace(first, invocation_id=attempt_id(given, n), attempt=n)
        if n > 1 and current is not None:
            now = current(spec.uuid)
            if now is None and error is not None:
                log.info("%s is no longer productive: attempt %d not made", spec.name, n)
                raise error
            if now is not None and first.trigger == "event" and first.event not in now.events and error:
                log.info("%s no longer listens to %s: attempt %d not made", spec.name, first.event, n)
                raise error
            spec = now or spec
        try:
            return await attempt(spec, inv)
        except FaasError as exc:
            exc.attempts = n
            if n > spec.retry.attempts or exc.type not in spec.retry.on:
                raise
            error = exc
        n += 1
        delay = spec.retry.delay(n)
        log.info(
            "%s failed with %s on attempt %d: attempt %d in %.3g s",
            spec.name,
            error.type,
            n - 1,
            n,
            delay,
            extra={"function": spec.name, "invocation_id": inv.invocation_id},  # the attempt that failed
        )
        if retried is not None:
            retried(spec.name, error.type)
        if await _backoff(spec.name, delay):
            log.warning(
                "%s: attempt %d not made: the node is stopping (the run ends with attempt %d's %s)",
                spec.name,
                n,
                n - 1,
                error.type,
                extra={"function": spec.name, "invocation_id": inv.invocation_id},
            )
            raise error


async def _backoff(name: str, delay: float) -> bool:
    """Wait `delay` seconds before the next attempt; True when the attempts must end instead (a
    `give_up` handover requested)."""
    handover = HANDOVER.get()
    if handover is None:
        await asyncio.sleep(delay)
        return False
    if handover.give_up:
        return await handover.wait(delay)
    handover.waiting += 1
    handover._tell()
    try:
        if handover.requested and handover.owner is not None:
            # Handed over before this backoff began; the sleep below ends at once.
            log.info("%s: event handed over instead of waiting for its next attempt", name)
            handover.owner.cancel()
        await asyncio.sleep(delay)
    finally:
        handover.waiting -= 1
        handover._tell()
    return False
