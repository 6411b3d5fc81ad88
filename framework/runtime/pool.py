"""One function's instances on this node: scale out, route, queue, reap.

Routing: the least-loaded ready instance with room (load < `concurrency`); else a starting instance with
room (the request waits for it: a cold start); else a new instance if fewer than `max`; else the queue
(FIFO, at most `queue` requests, each waiting at most `queue_timeout` seconds), served as slots free up.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import logging
import time
from collections import deque
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from framework.control.spec import FunctionSpec
from framework.errors import FaasError, InstanceCrashed, Overloaded
from framework.observe.metrics import Metrics
from framework.run_clock import RUN_CLOCK
from framework.runtime.handle import InstanceHandle
from framework.runtime.template import Template
from framework.types import Invocation, InvokeResult

if TYPE_CHECKING:
    from framework.observe.records import Recorder

log = logging.getLogger("faas.runtime")

Slot = tuple[InstanceHandle, bool]
"""An instance reserved for one request, and whether that request is a cold start."""

KILL_REASONS = {"memory": "memory", "blocked": "timeout", "exit": "crash", "start": "crash"}
"""`faas_instance_kills_total` reason of each way an instance ends against its will."""

START_BACKOFF = (0.1, 10.0)
"""Seconds a function waits before its next instance start once two starts in a row have failed, doubled
with each further failure, at most the second figure. The first failure costs nothing (the next request
gets a fresh instance, DESIGN.md section 3); without a pause, a module that cannot start forked an instance
per request, about 500 a second under load, each answered the same error."""


class FunctionPool:
    """The instances of one function built from one spec. `retired` pools take no new requests."""

    def __init__(
        self,
        spec: FunctionSpec,
        template: Template,
        metrics: Metrics,
        queue_timeout: float,
        log_level: str,
        secrets: Mapping[str, str] | None = None,
        unavailable: str | None = None,
        recorder: Recorder | None = None,
        log_caps: tuple[int, int] = (10, 5000),
    ) -> None:
        self.spec = spec
        self.secrets = dict(secrets or {})
        """Values of the secrets `spec` lists, read when this pool was built (a rotation builds a new one)."""
        self.unavailable = unavailable
        """Why no instance can start (a secret the node lacks): every request is answered InstanceCrashed."""
        self._recorder = recorder
        """Told of every invocation that ends here (DESIGN.md section 13): this is where all of them pass."""
        self._log_caps = log_caps
        self.instances: list[InstanceHandle] = []
        self.exiting: set[InstanceHandle] = set()
        """Instances that stopped serving but whose process has not exited yet."""
        self.retired = False
        self._waiters: deque[asyncio.Future[Slot]] = deque()
        self._failed_starts = 0
        """Instance starts that failed in a row (an instance that started resets it)."""
        self._start_error: FaasError | None = None
        self._starts_from = 0.0
        """`time.monotonic()` before which no instance starts (`START_BACKOFF`)."""
        self._failed_at = 0.0
        """`time.monotonic()` of the last failed start: starts begun before it failed in the same round."""
        self._resume: asyncio.TimerHandle | None = None
        """Dispatches the queue when a pause ends (its requests may wait on busy instances only)."""
        self._capacity = spec.instances.concurrency
        """Requests an instance takes: `concurrency`, or fewer for a `def` handler with fewer threads (told
        by its first instance's HELLO; the requests that reserved a starting instance before then and are
        beyond it look again once it started: `_first_start`)."""
        self._told = False
        """Whether an instance of this pool has started, so `_capacity` is known."""
        self.template = template
        """The template this pool's instances are forked from."""
        self._queue_timeout = queue_timeout
        self._log_level = log_level
        self._boots: set[asyncio.Task[None]] = set()
        self.late_records: set[asyncio.Task[None]] = set()
        """Records of invocations a dying instance held, waiting for its last lines (`_record_crash`)."""
        self._metrics = metrics
        name = spec.name
        self._m_queued = metrics.queued.labels(name)
        self._m_instances = metrics.instances.labels(name)
        self._m_blocked = metrics.blocked_loop.labels(name)
        for reason in dict.fromkeys(KILL_REASONS.values()):  # shown as 0 before the first kill
            metrics.instance_kills.labels(name, reason)

    # ---- requests ----

    def check_available(self) -> None:
        """Raise InstanceCrashed when no instance of this pool can start (see `unavailable`); raise the last
        start's error when its starts keep failing and none is live to wait for (`START_BACKOFF`)."""
        if self.unavailable is not None:
            raise InstanceCrashed(f"function {self.spec.name} cannot start an instance: {self.unavailable}")
        if self._starts_from and not self._may_start() and not self._live():
            raise self._start_refused()

    def _may_start(self) -> bool:
        return time.monotonic() >= self._starts_from

    def _live(self) -> bool:
        return any(not i.dead for i in self.instances)

    def _start_refused(self) -> FaasError:
        last = self._start_error
        assert last is not None
        wait = max(0.0, self._starts_from - time.monotonic())
        said = f"{self._failed_starts} starts in a row failed: the next in {wait:.1f} s"
        return type(last)(f"{last.message} ({said})")

    def invoke(self, inv: Invocation, moved_by: float | None = None) -> Coroutine[Any, Any, InvokeResult]:
        """Run `inv` on an instance (queueing for one when all are busy); await the result.

        `moved_by`: when its queue wait ends (`RUN_CLOCK` time), for a request queued in a retired pool and
        moved here (`Moved`): its wait goes on rather than starting again. The duration histogram is the
        invoker's to observe (once per invocation, wall time)."""
        if self._recorder is not None:
            return self._recorded(inv, None, moved_by)
        return self._invoke(inv, moved_by)

    async def _invoke(self, inv: Invocation, moved_by: float | None) -> InvokeResult:
        self.check_available()
        slot = self._acquire()
        if not self._told and slot is not None and not slot[0].ready:  # before any start: `_first_start`
            slot = await self._first_start(slot)
        if slot is None:
            successor: FunctionPool | None = None
            try:
                slot = await self._queue(moved_by)
            except Moved as moved:
                successor, moved_by = moved.to, moved.deadline
            if successor is not None:  # outside the handler: its errors are not chained to the move
                return await successor.invoke(inv, moved_by)
            assert slot is not None
        inst, cold = slot
        try:
            result, ms = await inst.call(inv, cold)
        except FaasError as exc:
            raise _held(exc, inst, cold) from exc.__cause__
        finally:
            self._release(inst)
        return InvokeResult(inv.invocation_id, result, ms, cold, inst.id)

    async def call_on(self, inst: InstanceHandle, inv: Invocation) -> InvokeResult:
        """Run `inv` on this very instance (warm-ups), whatever its load."""
        if self._recorder is not None:
            return await self._recorded(inv, inst)
        cold = not inst.ready  # a warm-up that started the instance waited for it (section 3)
        self._reserve(inst)
        try:
            result, ms = await inst.call(inv, cold)
        except FaasError as exc:
            raise _held(exc, inst, cold) from exc.__cause__
        finally:
            self._release(inst)
        return InvokeResult(inv.invocation_id, result, ms, cold, inst.id)

    async def _recorded(
        self, inv: Invocation, on: InstanceHandle | None, moved_by: float | None = None
    ) -> InvokeResult:
        """`invoke` (or `call_on` instance `on`), telling the recorder how it ended, whatever happened.

        The instance that answers renders the record itself (`record_json.py`) and sends it with its
        reply; the record is made here only when no instance answered, or when the instance sent none the
        node would keep (not that invocation's, or it failed to render one). The record of an invocation
        whose instance died holds the lines it sent first, made once they are all in (`_record_crash`):
        the caller's answer does not wait for it."""
        assert self._recorder is not None
        started, t0 = time.time(), time.perf_counter()
        answered: list[tuple[bytes, float, bool]] = []
        inst: InstanceHandle | None = None
        cold = False
        successor: FunctionPool | None = None
        try:
            if on is None:
                self.check_available()
                slot = self._acquire()
                if not self._told and slot is not None and not slot[0].ready:
                    slot = await self._first_start(slot)
                inst, cold = slot or await self._queue(moved_by)
            else:
                cold = not on.ready  # a warm-up that started the instance waited for it (section 3)
                self._reserve(on)
                inst = on
            try:
                result, ms = await inst.call(inv, cold, started, answered)
            finally:
                self._release(inst)
        except Moved as moved:  # queued in a retired pool: not an end, the successor records it
            successor, moved_by = moved.to, moved.deadline
        except BaseException as exc:
            own = _held(exc, inst, cold) if inst is not None and isinstance(exc, FaasError) else exc
            if answered:  # the instance answered with an error and rendered its record
                record, ms, ok = answered[0]
                self._recorder.keep(self.spec, inv, started, ms, ok, record)
            else:
                wall = (time.perf_counter() - t0) * 1000
                where = None if inst is None else inst.id
                if inst is not None and not inst.dead:  # cancelled (a chain's abort), or the node gave up
                    logs = inst.take_lines(inv.invocation_id)  # what it logged so far
                    self._recorder.finish(self.spec, inv, started, wall, cold, where, exc, logs)
                elif inst is None or not inst.holds_lines(inv.invocation_id):
                    self._recorder.finish(self.spec, inv, started, wall, cold, where, exc)
                elif inst.exited.is_set():  # every line is in already
                    logs = inst.take_lines(inv.invocation_id)
                    self._recorder.finish(self.spec, inv, started, wall, cold, where, exc, logs)
                else:
                    task = asyncio.get_running_loop().create_task(
                        self._record_crash(inst, inv, started, wall, cold, exc)
                    )
                    self.late_records.add(task)
                    task.add_done_callback(self.late_records.discard)
            if isinstance(own, FaasError):
                own.recorded = True
            if own is exc:
                raise
            raise own from exc.__cause__
        if successor is not None:  # outside the handlers: its errors are not chained to the move
            return await successor.invoke(inv, moved_by)
        assert inst is not None
        if answered:
            self._recorder.keep(self.spec, inv, started, ms, True, answered[0][0])
        else:  # the instance's record was refused or missing (see the docstring): the node's own
            self._recorder.finish(self.spec, inv, started, ms, cold, inst.id, None)
        return InvokeResult(inv.invocation_id, result, ms, cold, inst.id)

    async def _record_crash(
        self,
        inst: InstanceHandle,
        inv: Invocation,
        started: float,
        wall: float,
        cold: bool,
        exc: BaseException,
    ) -> None:
        """The record of an invocation `inst` held when it died, with the lines it logged."""
        assert self._recorder is not None
        logs: list[Any] | None = None
        try:
            logs = await inst.lines_of(inv.invocation_id)
        finally:  # made even when the wait is cancelled (shutdown): without the lines, then
            try:
                self._recorder.finish(self.spec, inv, started, wall, cold, inst.id, exc, logs)
            except Exception:  # no caller to hand it to: the node's log has it
                log.exception("the record of invocation %s could not be made", inv.invocation_id)

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def load(self) -> int:
        """Requests held: routed to an instance or waiting in the queue."""
        return sum(i.load for i in self.instances) + len(self._waiters)

    def _pick(self) -> InstanceHandle | None:
        best: InstanceHandle | None = None
        starting: InstanceHandle | None = None
        limit = self._capacity
        for inst in self.instances:
            # `held`: threads of a `def` handler's instance that run calls answered without them; `overdue`:
            # it holds a request past its limit, and is killed soon.
            if inst.load + inst.held >= limit or inst.dead or inst.overdue:
                continue
            if inst.ready:
                if best is None or inst.load < best.load:
                    best = inst
            elif starting is None:
                starting = inst
        return best or starting

    def _acquire(self) -> Slot | None:
        """A slot right now, or None (the caller queues). Newcomers never overtake queued requests."""
        if self._waiters:  # queued during a pause: a newcomer starts no instance ahead of them
            return None
        inst = self._pick()
        if inst is None and len(self.instances) < self.spec.instances.max and self._may_start():
            inst = self.start(warm=False)
        if inst is None:
            return None
        return inst, self._reserve(inst)

    async def _first_start(self, slot: Slot) -> Slot | None:
        """For a slot on an instance that starts before any of this pool did: once it started, whether its
        place there is within what the instance takes (a `def` handler's threads, told by its HELLO). If
        not, the slot is given back and `_acquire` asked again (another instance, or the queue), rather
        than waiting inside the instance for a thread while its time limit runs. Off the common path: only
        the requests of a pool's first start come here."""
        inst = slot[0]
        place = inst.load  # nothing it holds has ended before it starts
        try:
            await asyncio.shield(inst.started)
        except asyncio.CancelledError:
            self._release(inst)
            raise
        except Exception:
            return slot  # its call says how the start failed
        self._learn(inst)  # its requests wake before `_boot` does
        if place <= self._capacity or self.retired:  # retired meanwhile: no new instance of it
            return slot
        self._release(inst)
        return self._acquire()

    async def _queue(self, moved_by: float | None = None) -> Slot:
        """Wait for a slot, oldest first, until the queue timeout, or `moved_by` (see `invoke`). The moved
        requests wake in their order, before anything that arrives after the move, so they keep it here."""
        if len(self._waiters) >= self.spec.instances.queue:
            raise Overloaded(
                f"function {self.spec.name}: {self.spec.instances.max} instance(s) busy and "
                f"{len(self._waiters)} request(s) queued"
            )
        loop = asyncio.get_running_loop()
        queued = loop.time()
        # In `RUN_CLOCK` time: a node that stood still (stopped, a paused VM) does not fail its queue for it.
        deadline = RUN_CLOCK.now(loop) + self._queue_timeout if moved_by is None else moved_by
        fut: asyncio.Future[Slot] = loop.create_future()
        self._waiters.append(fut)
        self._m_queued.inc()
        timer = RUN_CLOCK.call_at(loop, deadline, _expire, fut)
        try:
            inst, cold = await fut
            # Its instance turned ready while it waited: it waited for that start (DESIGN.md section 3).
            return inst, cold or (inst.ready_at > queued and not inst.warm)
        except BaseException as e:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(fut.result()[0])  # a slot arrived as we gave up: hand it back
            fut.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)
            if isinstance(e, Moved):
                e.deadline = deadline
            if isinstance(e, TimeoutError):
                raise Overloaded(
                    f"function {self.spec.name}: no free instance within {self._queue_timeout:g} s"
                ) from None
            raise
        finally:
            timer.cancel()  # one it re-armed finds its waiter done
            self._m_queued.dec()

    def _reserve(self, inst: InstanceHandle) -> bool:
        inst.load += 1
        return not inst.ready and not inst.warm

    def _release(self, inst: InstanceHandle) -> None:
        inst.load -= 1
        inst.last_used = time.monotonic()
        if self._waiters:
            self._dispatch()
        elif self.retired and inst.load == 0:
            inst.close()

    def _dispatch(self) -> None:
        """Hand free slots (or new instances, up to max) to queued requests, oldest first."""
        while self._waiters:
            inst = self._pick()
            if inst is None and len(self.instances) < self.spec.instances.max:
                if not self._may_start():
                    if not self._live():  # nothing to wait for: they get what a start would give them
                        self._fail_waiters(self._start_refused())
                    return
                inst = self.start(warm=False)
            if inst is None:
                return
            fut = self._waiters.popleft()
            if not fut.done():  # a cancelled waiter may linger until its task runs
                fut.set_result((inst, self._reserve(inst)))

    def _room(self) -> None:
        """A thread an abandoned call held is free again, or a call the node gave up on ended: a queued
        request may take its place."""
        if self._waiters:
            self._dispatch()

    def _fail_waiters(self, exc: Exception) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)

    # ---- instances ----

    def start(self, warm: bool) -> InstanceHandle:
        """Start one instance in the background; requests may reserve it while it starts."""
        inst = InstanceHandle(
            self.spec,
            self._log_level,
            self._on_exit,
            self._m_blocked.inc,
            warm=warm,
            secrets=self.secrets,
            log_caps=self._log_caps,
            node=None if self._recorder is None else self._recorder.node,
        )
        inst.on_room = self._room
        self.instances.append(inst)
        self._m_instances.inc()
        # In an empty context, not the invocation's that made it start: the instance's channels run their
        # callbacks (its log lines, its exit) in the context they were opened in, and the node's log lines
        # would carry that first invocation's trace for the instance's whole life.
        task = asyncio.get_running_loop().create_task(self._boot(inst), context=contextvars.Context())
        self._boots.add(task)
        task.add_done_callback(self._boots.discard)
        return inst

    async def _boot(self, inst: InstanceHandle) -> None:
        t0 = time.perf_counter()
        begun = time.monotonic()
        try:
            await inst.start(self.template)
        except FaasError as e:
            # Requests reserved on it get the error from `inst.started`; fail the queue too rather than
            # retrying a broken handler once per queued request.
            self._start_failed(e, begun)
            self._fail_waiters(type(e)(e.message))
            return
        except Exception:  # a start timeout, a failed fork: `started` holds what its requests were told
            told = inst.started.exception() if inst.started.done() else None
            if isinstance(told, FaasError):
                self._start_failed(told, begun)
            return
        self._failed_starts, self._starts_from, self._start_error = 0, 0.0, None
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self._learn(inst)
        if not inst.warm:
            self._metrics.cold_starts.labels(self.spec.name).inc()
            self._metrics.cold_start_seconds.labels(self.spec.name).observe(time.perf_counter() - t0)
        log.debug(
            "instance %s of %s ready in %.1f ms", inst.id, self.spec.name, (time.perf_counter() - t0) * 1e3
        )
        self._dispatch()

    def _learn(self, inst: InstanceHandle) -> None:
        """What a started instance takes: a `def` handler's instance says its threads (its HELLO). Calls
        beyond them would wait inside the instance, their time limit running; they start another instance
        or wait in this queue instead."""
        self._told = True
        if inst.threads is not None and inst.threads < self._capacity:
            self._capacity = inst.threads

    def _start_failed(self, error: FaasError, begun: float) -> None:
        """A start begun at `begun` (`time.monotonic()`) failed. Starts begun before the last failure are
        of its round (a burst starts several at once): they count once, not one pause doubling each."""
        self._start_error = error
        now = time.monotonic()
        same_round = begun < self._failed_at
        self._failed_at = now
        if same_round:
            return
        self._failed_starts += 1
        if self._failed_starts < 2:
            return
        low, high = START_BACKOFF
        pause = min(high, low * 2 ** (self._failed_starts - 2))
        self._starts_from = now + pause
        if self._resume is not None:
            self._resume.cancel()
        self._resume = asyncio.get_running_loop().call_later(pause, self._dispatch)
        log.warning(
            "function %s: %d instance starts in a row failed: the next in %.1f s (the last: %s)",
            self.spec.name,
            self._failed_starts,
            pause,
            error.message,
        )

    def _on_exit(self, inst: InstanceHandle, reason: str | None) -> None:
        if not inst.exited.is_set():
            self.exiting.add(inst)
            inst.on_gone = self.exiting.discard
        if inst in self.instances:
            self.instances.remove(inst)
            self._m_instances.dec()
        if reason is not None:
            self._metrics.instance_crashes.labels(self.spec.name, reason).inc()
            self._metrics.instance_kills.labels(self.spec.name, KILL_REASONS.get(reason, "crash")).inc()
        if self._waiters:
            self._dispatch()

    def reap(self, now: float) -> None:
        """Close instances idle for `idle_timeout` seconds (all idle ones once retired)."""
        idle = self.spec.instances.idle_timeout
        for inst in list(self.instances):
            if inst.ready and inst.load == 0 and (self.retired or now - inst.last_used >= idle):
                log.info(
                    "instance %s of %s %s: stopping it",
                    inst.id,
                    self.spec.name,
                    "retired" if self.retired else f"idle for {idle:g} s",
                )
                inst.close()

    def retire(self) -> None:
        """No new requests come here; instances stop once they hold nothing."""
        self.retired = True
        if not self._waiters:
            self.reap(time.monotonic())

    def hand_queue_to(self, successor: FunctionPool) -> None:
        """Send the requests queued here (this pool is retired) to `successor`, oldest first: they have not
        started, so they run on the new revision, while the ones in flight finish here."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(Moved(successor))
        self.reap(time.monotonic())

    def stop(self) -> None:
        """The node stops: queued requests are answered Overloaded; an instance holding requests is killed
        (they get InstanceCrashed), one holding none is closed, so it exits on its own and its last lines
        (an unfinished one, what its descriptors 1 and 2 still hold) reach the node first."""
        self._fail_waiters(Overloaded("the node is stopping"))
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        for inst in list(self.instances):
            if inst.load or inst.inflight or not inst.ready:
                inst.kill()
            else:
                inst.close()


class Moved(Exception):
    """A queued request's pool was retired for another (`hand_queue_to`): it goes there."""

    def __init__(self, to: FunctionPool) -> None:
        super().__init__(to.spec.name)
        self.to = to
        self.deadline: float | None = None
        """When the request's queue wait ends (`RUN_CLOCK` time), set by the waiter it reached."""


def _held(exc: FaasError, inst: InstanceHandle, cold: bool) -> FaasError:
    """The error, noting where the invocation ran: a failed invocation's span reports its cold start and
    instance as a successful one's does (its `InvokeResult` carries them). A copy: an instance's failed
    start is one exception, which every request that waited for it gets."""
    own = copy.copy(exc)
    if hasattr(exc, "__notes__"):
        own.__notes__ = list(exc.__notes__)  # its own list: a note added to one is not added to all
    own.cold_start, own.instance_id = cold, inst.id
    return own


def _expire(fut: asyncio.Future[Slot]) -> None:
    """A queued request's wait has reached its deadline: it ends with TimeoutError, unless it was served."""
    if not fut.done():
        fut.set_exception(TimeoutError())
