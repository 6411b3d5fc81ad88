"""Invoke one function, or fan an event out to its productive listeners and combine their replies.

The invoker knows nothing of Kafka or HTTP: sources hand it raw JSON payloads and get results back.
Sources also hand it the event's identity and the span of the trace their work belongs to
(`observe/tracing.py`): each invocation is a child span of it (a direct invocation's span is the one the
source started), carried to the instance as `traceparent`. Event and scheduled invocations go through their
function's retry policy (`framework.retry`): each attempt is an invocation of its own (section 15), so each
is a span of its own, attempt 2 on a sibling of the first (same parent), exported when it ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from framework.context import Trigger
from framework.control.registry import Registry
from framework.control.spec import FunctionSpec
from framework.errors import FaasError, FunctionError, NotFound, Overloaded
from framework.observe import tracing
from framework.retry import HANDOVER, RETRIED_TRIGGERS, with_retries
from framework.tasks import cancel_and_wait
from framework.types import EventIdentity, Invocation, InvokeResult, new_id

if TYPE_CHECKING:
    from framework.observe.metrics import Metrics
    from framework.runtime.pools import Runtime

__all__ = ["EventReply", "Invoker", "new_id"]


@dataclass(slots=True)
class EventReply:
    """The combined reply of section 4: `results` holds each finished listener, in manifest order."""

    id: str | None
    event: str | None
    results: list[tuple[FunctionSpec, InvokeResult]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    traceparent: str | None = None
    """The event's span (section 11): replies carry it as `ce_traceparent`, HTTP answers as `traceparent`."""
    tracestate: str | None = None
    """The caller's `tracestate`, passed on with the trace: replies carry it as `ce_tracestate`."""
    attempts: int = 1
    """Attempts the failing listener made (its last `ctx.attempt`): the dead-letter copy's `faas_attempts`."""
    listeners: int = 0
    """The productive listeners the event was handed to (finished or not: a chain abort cancels some)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def error_type(self) -> str | None:
        return None if self.error is None else str(self.error["type"])

    @classmethod
    def failed(
        cls, event_id: str | None, event: str | None, exc: BaseException, spec: FunctionSpec | None = None
    ) -> EventReply:
        """A reply whose chain failed with `exc`, in `spec` (None: before any listener ran)."""
        return cls(event_id, event, error=chain_error(exc, spec))

    def in_trace(self, span: tracing.Span) -> EventReply:
        """This reply, answering in `span`'s trace (its traceparent and the caller's tracestate)."""
        self.traceparent, self.tracestate = span.traceparent, span.tracestate
        return self

    def fail(self, spec: FunctionSpec, exc: BaseException) -> None:
        """Listener `spec` ended the chain with `exc` (after its retries)."""
        self.error = chain_error(exc, spec)
        self.attempts = exc.attempts if isinstance(exc, FaasError) else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event": self.event,
            "ok": self.ok,
            "results": [
                {
                    "function": spec.name,
                    "uuid": spec.uuid,
                    "ok": True,
                    # The handler's JSON goes into the reply as it came from the instance: never re-encoded.
                    "result": orjson.Fragment(res.result),
                    "duration_ms": round(res.duration_ms, 3),
                }
                for spec, res in self.results
            ],
            "error": self.error,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


class Invoker:
    """Runs invocations through the runtime and counts them. `registry` is swapped by the node on reload."""

    def __init__(
        self, runtime: Runtime, registry: Registry, metrics: Metrics | None = None, serving: bool = True
    ) -> None:
        self.runtime = runtime
        self.registry = registry
        self.metrics = metrics
        self._starting: asyncio.Event | None = None if serving else asyncio.Event()
        """Set (and dropped) by `serving`: until then `registry` is not what the node serves (its deployment
        log is not read yet), so an event waits and a direct call is refused. None: serving."""
        # prometheus-client's labels() costs microseconds per call: keep the children of the hot path.
        self._counters: dict[tuple[str, str, str], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}
        # Invocations that ended, for the node's shutdown summary.
        self.succeeded = 0
        self.failed = 0
        self.exporter: tracing.Exporter | None = None
        """Set by the node when OpenTelemetry export is on: every invocation then ends a span there."""
        self._retries: dict[tuple[str, str], Any] = {}

    def _observe(self, name: str, trigger: str, outcome: str, seconds: float) -> None:
        if outcome == "ok":
            self.succeeded += 1
        else:
            self.failed += 1
        if self.metrics is None:
            return
        counter = self._counters.get((name, trigger, outcome))
        if counter is None:
            counter = self._counters[name, trigger, outcome] = self.metrics.invocations.labels(
                name, trigger, outcome
            )
        histogram = self._histograms.get((name, trigger))
        if histogram is None:
            histogram = self._histograms[name, trigger] = self.metrics.duration.labels(name, trigger)
        counter.inc()
        histogram.observe(seconds)

    async def call(
        self,
        spec: FunctionSpec,
        payload: bytes,
        trigger: Trigger,
        event: str | None = None,
        invocation_id: str | None = None,
        identity: EventIdentity | None = None,
        span: tracing.Span | None = None,
    ) -> InvokeResult:
        """Invoke `spec` (event and scheduled invocations under its retry policy); raises the FaasError the
        last attempt ended with.

        `span` is the invocation's own span (a new trace when None); the instance sees it as `ctx.span_id`.
        """
        if span is None:
            span = tracing.start()
        inv = Invocation(
            invocation_id or new_id(),
            trigger,
            event,
            payload,
            identity,
            span.traceparent,
            tracestate=span.tracestate,
        )
        # The event's handover counts its listener invocations in progress: one waiting between attempts
        # while another runs holds an instance still (`Handover.on_wait`).
        handover = HANDOVER.get() if trigger == "event" else None
        if handover is not None:
            handover.enter()
        try:
            if trigger in RETRIED_TRIGGERS and spec.retry.attempts:
                # Attempts 2, 3, ... are copies of `inv` with their own id, attempt number and span.
                derived = invocation_id is not None
                attempt = functools.partial(self._traced, span)
                token = tracing.current.set(span)  # the lines between attempts (a retry's wait): its trace
                try:
                    return await with_retries(spec, inv, derived, attempt, self._retried, self._served)
                finally:
                    tracing.current.reset(token)
            return await self._traced(span, spec, inv)
        finally:
            if handover is not None:
                handover.leave()

    async def _traced(self, first: tracing.Span, spec: FunctionSpec, inv: Invocation) -> InvokeResult:
        """One attempt in its span: `first` for attempt 1, a sibling of it for the others."""
        span = first
        if inv.attempt > 1:
            span = first.sibling()
            inv = dataclasses.replace(inv, traceparent=span.traceparent)
        token = tracing.current.set(span)
        try:
            if self.exporter is None:
                return await self._attempt(spec, inv)
            return await self._exported(spec, inv, span, self._attempt(spec, inv))
        finally:
            tracing.current.reset(token)

    async def _exported(
        self, spec: FunctionSpec, inv: Invocation, span: tracing.Span, work: Awaitable[InvokeResult]
    ) -> InvokeResult:
        """Await `work`, the invocation `inv`, then end its span on the exporter, however it ended."""
        assert self.exporter is not None
        failure: BaseException | None = None
        result: InvokeResult | None = None
        try:
            result = await work
            return result
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self._export(spec, inv, span, failure, result)

    def _served(self, uuid: str) -> FunctionSpec | None:
        """The function's productive revision now (the registry is replaced at each deploy)."""
        return self.registry.productive(uuid)

    def _retried(self, name: str, error_type: str) -> None:
        if self.metrics is None:
            return
        counter = self._retries.get((name, error_type))
        if counter is None:
            counter = self._retries[name, error_type] = self.metrics.retries.labels(name, error_type)
        counter.inc()

    async def _attempt(self, spec: FunctionSpec, inv: Invocation) -> InvokeResult:
        """One invocation; raises the FaasError it ended with."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await self.runtime.invoke(spec, inv)
        except BaseException as exc:
            outcome = outcome_of(exc)
            raise
        finally:
            self._observe(spec.name, inv.trigger, outcome, time.perf_counter() - started)

    def _export(
        self,
        spec: FunctionSpec,
        inv: Invocation,
        span: tracing.Span,
        failure: BaseException | None,
        res: InvokeResult | None,
    ) -> None:
        """The `invoke <function>` span, with the OpenTelemetry FaaS attributes (section 11). A failed
        invocation reports where it ran as a successful one does (`FaasError.cold_start`, `instance_id`)."""
        assert self.exporter is not None
        cold, instance = (res.cold_start, res.instance_id) if res is not None else (False, None)
        if isinstance(failure, FaasError):
            cold, instance = failure.cold_start, failure.instance_id
        attributes: dict[str, str | bool | int | float] = {
            "faas.name": spec.name,
            "faas.id": spec.uuid,
            "faas.trigger": _OTEL_TRIGGER.get(inv.trigger, "other"),
            "faas.invocation_id": inv.invocation_id if res is None else res.invocation_id,
            "faas.coldstart": cold,
        }
        if instance is not None:
            attributes["faas.instance"] = instance
        if inv.identity is not None:
            attributes["cloudevents.event_id"] = inv.identity.event_id or ""
            attributes["cloudevents.event_type"] = inv.event or ""
            if inv.identity.source is not None:
                attributes["cloudevents.event_source"] = inv.identity.source
            if inv.identity.subject is not None:
                attributes["cloudevents.event_subject"] = inv.identity.subject
        error = None if failure is None else outcome_of(failure)
        self.exporter.end(f"invoke {spec.name}", span, "internal", attributes, error)

    async def direct(
        self, uuid: str, payload: bytes, span: tracing.Span | None = None, invocation_id: str | None = None
    ) -> InvokeResult:
        """HTTP direct invocation: only productive functions; anything else is NotFound. `invocation_id`:
        the caller's (a new one when None), so it can name the invocation even when it fails."""
        spec = self.lookup(uuid)
        return await self.call(spec, payload, "direct", invocation_id=invocation_id, span=span)

    def serving(self) -> None:
        """`registry` is what the node serves from now on (its deployment log was read)."""
        if self._starting is not None:
            self._starting.set()
            self._starting = None

    def lookup(self, uuid: str) -> FunctionSpec:
        if self._starting is not None:  # 404 would say no such function: it is not known yet
            raise Overloaded("the node is starting: it has not read its deployment log yet; try again")
        spec = self.registry.productive(uuid)
        if spec is None:
            raise NotFound(f"no productive function with uuid {uuid}")
        return spec

    async def event(
        self,
        event_type: str,
        event_id: str,
        payload: bytes,
        identity: EventIdentity | None = None,
        span: tracing.Span | None = None,
    ) -> EventReply:
        """Run every productive listener of `event_type` concurrently; the first failure aborts the chain.

        `span` is the event's span (a new trace when None); each listener's invocation is a child of it.
        """
        if self._starting is not None:  # who listens is not known before the deployment log is read:
            await self._starting.wait()  # answered then, not as an event nothing listens to
        if span is None:
            span = tracing.start()
        if identity is None:
            identity = EventIdentity(event_id)
        reply = EventReply(event_id, event_type).in_trace(span)
        listeners = self.registry.listeners(event_type)
        reply.listeners = len(listeners)
        if len(listeners) == 1:  # the common case: no task, no waiting set
            spec = listeners[0]
            try:
                res = await self.call(spec, payload, "event", event_type, None, identity, span.child())
                reply.results = [(spec, res)]
            except Exception as exc:
                reply.fail(spec, exc)
        elif listeners:
            await self._fan_out(reply, listeners, payload, identity, span)
        return reply

    async def _fan_out(
        self,
        reply: EventReply,
        listeners: tuple[FunctionSpec, ...],
        payload: bytes,
        identity: EventIdentity,
        span: tracing.Span,
    ) -> None:
        """One task per listener; done-callbacks count them down and wake this coroutine once, when all
        finished or at the first failure (cheaper than looping over `asyncio.wait`)."""
        loop = asyncio.get_running_loop()
        settled: asyncio.Future[None] = loop.create_future()
        results: list[InvokeResult | None] = [None] * len(listeners)
        left = len(listeners)

        def finished(i: int, task: asyncio.Task[InvokeResult]) -> None:
            nonlocal left
            left -= 1
            if settled.done() or task.cancelled():
                return  # aborted meanwhile: what ends now is not part of the reply
            exc = task.exception()
            if exc is None:
                results[i] = task.result()
            else:
                reply.fail(listeners[i], exc)
            if left == 0 or exc is not None:
                settled.set_result(None)

        tasks = []
        for i, spec in enumerate(listeners):
            call = self.call(spec, payload, "event", reply.event, None, identity, span.child())
            task = loop.create_task(call)
            task.add_done_callback(functools.partial(finished, i))
            tasks.append(task)
        try:
            await settled
        finally:
            await cancel_and_wait(tasks)
        reply.results = [(spec, res) for spec, res in zip(listeners, results, strict=True) if res is not None]

    async def warmup(self, spec: FunctionSpec) -> int:
        """Keep-warm: ensure a live instance and run the `warmup` hook in each; never reaches `handle`."""
        outcome = "ok"
        try:  # each warm-up ends a span of its own, as any invocation does
            return await self.runtime.warmup(spec, None if self.exporter is None else self._exported)
        except BaseException as exc:
            outcome = outcome_of(exc)
            raise
        finally:
            if self.metrics is not None:
                self.metrics.warmups.labels(spec.name, outcome).inc()

    def instance_count(self, name: str) -> int:
        """Live instances of a function on this node (for listings; sources never reach instances)."""
        return self.runtime.instance_count(name)


_OTEL_TRIGGER = {"event": "pubsub", "direct": "http", "schedule": "timer", "warmup": "timer"}
"""`faas.trigger` values of the OpenTelemetry FaaS conventions for our triggers."""


def outcome_of(exc: BaseException) -> str:
    """The `outcome` label of an invocation that raised `exc`: its contract error type, `Cancelled` (as its
    record's error type), or
    `FunctionError` for anything else (a bug, reported as the function's failure, as `chain_error` does)."""
    if isinstance(exc, FaasError):
        return exc.type
    if isinstance(exc, asyncio.CancelledError):
        return "Cancelled"
    return FunctionError.__name__


def chain_error(exc: BaseException, spec: FunctionSpec | None = None) -> dict[str, Any]:
    """The `error` of a combined reply (section 4): the failing listener, or None for the event itself, and
    the contract error (anything else is reported as a `FunctionError`)."""
    err = exc if isinstance(exc, FaasError) else FunctionError(repr(exc))
    return {"function": spec and spec.name, "uuid": spec and spec.uuid, **err.to_dict()}
